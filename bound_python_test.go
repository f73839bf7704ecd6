package envelope_test

import (
	"fmt"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/internal/testpy"
)

// pyBoundRows implements, from docs/format.md alone, reading a stored row:
// the owner's DEK from its encrypted_dek under the master key (either DEK
// layout), the value key by HKDF, the associated data from table, column,
// owner and row, and AES-GCM. It reads {"master", "deks": {owner: dek},
// "values": [{table, column, owner, row, text}], "seal": [{..., plain}]},
// and prints {"plain": [...], "sealed": [...]}.
const pyBoundRows = `
import base64, json, os, sys
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

def uvarint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)

def field(s):
    b = s.encode()
    return uvarint(len(b)) + b

def aad(v):
    out = b"\x81" + field(v["table"]) + field(v["column"]) + field(v["owner"])
    return out + (b"\x00" if v["row"] == "" else b"\x01" + field(v["row"]))

def dek_of(enc, table, owner):
    pt = Fernet(d["master"].encode()).decrypt(enc.encode())
    if pt[:5] != b"\x00DEK\x01":
        return base64.urlsafe_b64decode(pt)  # TOM Toolkit's layout: the DEK's text
    n = int.from_bytes(pt[5:7], "big"); t = pt[7:7+n]; pt = pt[7+n:]
    m = int.from_bytes(pt[:2], "big"); o = pt[2:2+m]; raw = pt[2+m:]
    assert t == table.encode() and o == owner.encode() and len(raw) == 32
    return raw

def key(v):
    raw = dek_of(d["deks"][v["owner"]], "profiles", v["owner"])
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"gorm-envelope bound value v1").derive(raw)

d = json.load(open(sys.argv[1]))
plain = []
for v in d["values"]:
    t = v["text"]
    raw = base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))
    assert raw[0] == 0x81
    plain.append(AESGCM(key(v)).decrypt(raw[1:13], raw[13:], aad(v)).decode())
sealed = []
for v in d["seal"]:
    nonce = os.urandom(12)
    raw = b"\x81" + nonce + AESGCM(key(v)).encrypt(nonce, v["plain"].encode(), aad(v))
    sealed.append(base64.urlsafe_b64encode(raw).rstrip(b"=").decode())
print(json.dumps({"plain": plain, "sealed": sealed}))
`

// Python's cryptography opens the bound values the plugin stored, from
// the specification alone, and seals values the plugin then reads.
func TestPythonBoundValues(t *testing.T) {
	py := testpy.Python(t, "cryptography.hazmat.primitives.ciphers.aead")
	master, err := dek.GenerateKey()
	must(t, err)
	keys, err := dek.ParseKeyring(master)
	must(t, err)
	db := testdb.Open(t, testdb.SQLite)
	setup(t, db, keys, envelope.Config{Format: envelope.FormatBound})
	must(t, db.AutoMigrate(&BoundNote{}))
	c := &Credential{UserID: 11, Password: "pässwörd ☃", APIKey: ptr("")}
	n := &BoundNote{ID: "n-1", UserID: 12, Slug: "n-1", Title: "a title"}
	must(t, db.Create(c).Error)
	must(t, db.Create(n).Error)

	type val struct {
		Table  string `json:"table"`
		Column string `json:"column"`
		Owner  string `json:"owner"`
		Row    string `json:"row"`
		Text   string `json:"text,omitempty"`
		Plain  string `json:"plain,omitempty"`
	}
	var in struct {
		Master string            `json:"master"`
		DEKs   map[string]string `json:"deks"`
		Values []val             `json:"values"`
		Seal   []val             `json:"seal"`
	}
	in.Master = master
	in.DEKs = map[string]string{"11": string(rawDEK(t, db, 11)), "12": string(rawDEK(t, db, 12))}
	id := fmt.Sprint(c.ID)
	in.Values = []val{
		{Table: "credentials", Column: "password", Owner: "11", Text: getRaw(t, db, "credentials", "password", id)},
		{Table: "credentials", Column: "api_key", Owner: "11", Text: getRaw(t, db, "credentials", "api_key", id)},
		{Table: "bound_notes", Column: "title", Owner: "12", Row: "n-1", Text: getRaw(t, db, "bound_notes", "title", "n-1")},
	}
	in.Seal = []val{
		{Table: "credentials", Column: "password", Owner: "11", Plain: "sealed by python"},
		{Table: "bound_notes", Column: "title", Owner: "12", Row: "n-1", Plain: "python title"},
	}
	var out struct {
		Plain  []string `json:"plain"`
		Sealed []string `json:"sealed"`
	}
	testpy.Run(t, py, pyBoundRows, in, &out)
	if want := []string{"pässwörd ☃", "", "a title"}; fmt.Sprint(out.Plain) != fmt.Sprint(want) {
		t.Fatalf("Python read %q, want %q", out.Plain, want)
	}
	setRaw(t, db, "credentials", "password", c.ID, out.Sealed[0])
	setRaw(t, db, "bound_notes", "title", "n-1", out.Sealed[1])
	var gc Credential
	var gn BoundNote
	must(t, db.First(&gc, c.ID).Error)
	must(t, db.First(&gn, "id = ?", "n-1").Error)
	if gc.Password != "sealed by python" || gn.Title != "python title" {
		t.Fatalf("read Python's values as %q and %q", gc.Password, gn.Title)
	}
	// Python's value for one row does not open in another.
	setRaw(t, db, "credentials", "api_key", c.ID, out.Sealed[0])
	if err := db.First(&gc, c.ID).Error; err == nil {
		t.Fatal("a value Python sealed for password opened as api_key")
	}
}
