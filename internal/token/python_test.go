package token

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope/internal/testpy"
)

// pyInterop reads {"key", "items": [{"token", "hex"}], "fresh": [hex]} and
// checks that Fernet decrypts each token to its message; it prints the
// tokens it made for the "fresh" messages as a JSON list.
const pyInterop = `
import json, sys
from cryptography.fernet import Fernet
d = json.load(open(sys.argv[1]))
f = Fernet(d["key"].encode())
for i, it in enumerate(d["items"]):
    got = f.decrypt(it["token"].encode())
    if got != bytes.fromhex(it["hex"]):
        sys.exit("item %d: decrypted to %r" % (i, got[:40]))
print(json.dumps([f.encrypt(bytes.fromhex(h)).decode() for h in d["fresh"]]))
`

// TestPythonInterop: Python's cryptography Fernet decrypts Encrypt's tokens,
// and Decrypt opens tokens Python makes.
func TestPythonInterop(t *testing.T) {
	py := testpy.Python(t, "cryptography.fernet")

	key := randKey(t)
	c := New(key)
	type item struct {
		Token string `json:"token"`
		Hex   string `json:"hex"`
	}
	var in struct {
		Key   string   `json:"key"`
		Items []item   `json:"items"`
		Fresh []string `json:"fresh"`
	}
	in.Key = base64.URLEncoding.EncodeToString(key[:])
	var fresh [][]byte
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 100, 255, 4096} {
		msg := randBytes(t, n)
		tok, err := c.Encrypt(msg)
		if err != nil {
			t.Fatal(err)
		}
		in.Items = append(in.Items, item{string(tok), hex.EncodeToString(msg)})
		tok, err = c.EncryptAt(msg, time.Unix(1234567890, 0))
		if err != nil {
			t.Fatal(err)
		}
		in.Items = append(in.Items, item{string(tok), hex.EncodeToString(msg)})
		fresh = append(fresh, randBytes(t, n))
		in.Fresh = append(in.Fresh, hex.EncodeToString(fresh[len(fresh)-1]))
	}
	var pyTokens []string
	testpy.Run(t, py, pyInterop, in, &pyTokens)
	if len(pyTokens) != len(fresh) {
		t.Fatalf("python3 made %d tokens, want %d", len(pyTokens), len(fresh))
	}
	for i, tok := range pyTokens {
		if got := mustDecrypt(t, c, []byte(tok)); !bytes.Equal(got, fresh[i]) {
			t.Fatalf("Python token %d: got %x, want %x", i, got, fresh[i])
		}
	}
}
