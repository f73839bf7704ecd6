package bound

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"testing"

	"github.com/gorm-envelope/envelope/internal/testpy"
)

// pySpec implements the format from docs/format.md alone, with Python's
// cryptography HKDF and AESGCM. It reads {"dek", "items": [{ctx, hex,
// text}], "wrong": [{ctx, text}], "fresh": [{ctx, hex}], "vectors": [...]}
// (context fields as hex, row null for none), checks that each item's text
// opens to its plaintext in its context and that each "wrong" one does
// not, and prints {"fresh": [text], "vectors": [[aad, raw, text]],
// "rejected": n}: values it sealed, and the vectors recomputed from their
// inputs.
const pySpec = `
import base64, json, os, re, sys
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 0x81

def uvarint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)

def field(b):
    return uvarint(len(b)) + b

def aad(ctx):
    f = lambda k: bytes.fromhex(ctx[k])
    out = bytes([VERSION]) + field(f("table")) + field(f("column")) + field(f("owner"))
    if ctx["row"] is None:
        return out + b"\x00"
    return out + b"\x01" + field(f("row"))

def key(dek_text):
    dek = base64.urlsafe_b64decode(dek_text)
    assert len(dek) == 32
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"gorm-envelope bound value v1").derive(dek)

def parse_text(text):
    # URL-safe alphabet only, no padding, and canonical: the one text of its bytes.
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError("not bound text")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text:
        raise ValueError("not canonical")
    return raw

def open_value(k, raw, ctx):
    if len(raw) < 29 or raw[0] != VERSION:
        raise ValueError("not a bound value")
    return AESGCM(k).decrypt(raw[1:13], raw[13:], aad(ctx))

def seal(k, pt, ctx, nonce):
    return bytes([VERSION]) + nonce + AESGCM(k).encrypt(nonce, pt, aad(ctx))

def text(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

d = json.load(open(sys.argv[1]))
k = key(d["dek"])
for i, it in enumerate(d["items"]):
    got = open_value(k, parse_text(it["text"]), it["ctx"])
    if got != bytes.fromhex(it["hex"]):
        sys.exit("item %d: opened to %r" % (i, got[:40]))
rejected = 0
for i, it in enumerate(d["wrong"]):
    try:
        open_value(k, parse_text(it["text"]), it["ctx"])
    except InvalidTag:
        rejected += 1
fresh = [text(seal(k, bytes.fromhex(it["hex"]), it["ctx"], os.urandom(12))) for it in d["fresh"]]
vectors = []
for v in d["vectors"]:
    vk = key(v["dek"])
    raw = seal(vk, bytes.fromhex(v["plaintext_hex"]), v["ctx"], bytes.fromhex(v["nonce_hex"]))
    vectors.append([aad(v["ctx"]).hex(), raw.hex(), text(raw)])
print(json.dumps({"fresh": fresh, "vectors": vectors, "rejected": rejected}))
`

// pyCtx is a Context for the script: fields as hex, so any bytes pass
// through JSON; Row nil for no row.
type pyCtx struct {
	Table  string  `json:"table"`
	Column string  `json:"column"`
	Owner  string  `json:"owner"`
	Row    *string `json:"row"`
}

func toPy(ctx *Context) pyCtx {
	h := func(s string) string { return hex.EncodeToString([]byte(s)) }
	p := pyCtx{Table: h(ctx.Table), Column: h(ctx.Column), Owner: h(ctx.Owner)}
	if ctx.Row != "" {
		r := h(ctx.Row)
		p.Row = &r
	}
	return p
}

// TestPython: Python, from the spec alone, opens the values Go seals and
// refuses them in other contexts; Go opens the values Python seals and
// refuses them in other contexts; and Python recomputes every fixed vector.
func TestPython(t *testing.T) {
	py := testpy.Python(t, "cryptography.hazmat.primitives.ciphers.aead")

	dek := randDEK(t)
	c := New(dek)
	type item struct {
		Ctx  pyCtx  `json:"ctx"`
		Hex  string `json:"hex"`
		Text string `json:"text,omitempty"`
	}
	type pyVector struct {
		vector
		Ctx pyCtx `json:"ctx"`
	}
	var in struct {
		DEK     string     `json:"dek"`
		Items   []item     `json:"items"`
		Wrong   []item     `json:"wrong"`
		Fresh   []item     `json:"fresh"`
		Vectors []pyVector `json:"vectors"`
	}
	in.DEK = base64.URLEncoding.EncodeToString(dek[:])
	contexts := []Context{
		testCtx,
		{Table: "users", Column: "email", Owner: "42"},
		{Table: "ab", Column: "c", Owner: "1"},
		{Table: "a", Column: "bc", Owner: "1"},
		{Table: "t\x00", Column: "\xff\x80", Owner: "ユーザー", Row: string(bytes.Repeat([]byte("r"), 300))},
	}
	var fresh [][]byte
	for i, n := range []int{0, 1, 15, 16, 17, 32, 100, 255, 4096} {
		ctx := contexts[i%len(contexts)]
		pt := randBytes(t, n)
		text := mustSealText(t, c, pt, &ctx)
		in.Items = append(in.Items, item{toPy(&ctx), hex.EncodeToString(pt), string(text)})
		other := contexts[(i+1)%len(contexts)]
		in.Wrong = append(in.Wrong, item{Ctx: toPy(&other), Text: string(text)})
		fresh = append(fresh, randBytes(t, n))
		in.Fresh = append(in.Fresh, item{Ctx: toPy(&ctx), Hex: hex.EncodeToString(fresh[i])})
	}
	vectors := loadVectors(t)
	for _, v := range vectors {
		in.Vectors = append(in.Vectors, pyVector{v, toPy(v.context())})
	}
	var res struct {
		Fresh    []string    `json:"fresh"`
		Vectors  [][3]string `json:"vectors"`
		Rejected int         `json:"rejected"`
	}
	testpy.Run(t, py, pySpec, in, &res)
	if res.Rejected != len(in.Wrong) {
		t.Errorf("Python refused %d of %d values in another context", res.Rejected, len(in.Wrong))
	}
	if len(res.Fresh) != len(fresh) {
		t.Fatalf("python3 sealed %d values, want %d", len(res.Fresh), len(fresh))
	}
	for i, text := range res.Fresh {
		ctx := contexts[i%len(contexts)]
		got, err := c.OpenText(nil, []byte(text), &ctx)
		if err != nil || !bytes.Equal(got, fresh[i]) {
			t.Fatalf("Python value %d: OpenText = %x, %v; want %x", i, got, err, fresh[i])
		}
		other := contexts[(i+1)%len(contexts)]
		wantInvalidText(t, c, []byte(text), &other, "Python value in another context")
	}
	if len(res.Vectors) != len(vectors) {
		t.Fatalf("python3 recomputed %d vectors, want %d", len(res.Vectors), len(vectors))
	}
	for i, v := range vectors {
		if got := res.Vectors[i]; got != [3]string{v.AADHex, v.RawHex, v.Text} {
			t.Errorf("vector #%d: Python computes\n%q\nwant\n%q", i, got, [3]string{v.AADHex, v.RawHex, v.Text})
		}
	}
}
