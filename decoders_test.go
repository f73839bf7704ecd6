package envelope_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testpy"
)

// pyTOM encrypts each of d["values"] as TOM Toolkit 3 does
// (tom_common/encryption.py: _derive_fernet_key, encrypt), under the key
// derived from d["secret"], and prints the tokens and the derived key.
const pyTOM = `
import json, sys
from base64 import urlsafe_b64encode
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
d = json.load(open(sys.argv[1]))
hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b'tom-toolkit-encryption-v1')
key = urlsafe_b64encode(hkdf.derive(d["secret"].encode()))
f = Fernet(key)
print(json.dumps({"key": key.decode(), "tokens": [f.encrypt(v.encode()).decode() for v in d["values"]]}))
`

// tomTokens has Python encrypt values as TOM Toolkit 3 does under secret,
// and returns the tokens and the Fernet key TOM derives.
func tomTokens(t *testing.T, secret string, values ...string) (tokens []string, key string) {
	t.Helper()
	py := testpy.Python(t, "cryptography.hazmat.primitives.kdf.hkdf")
	var out struct {
		Key    string   `json:"key"`
		Tokens []string `json:"tokens"`
	}
	testpy.Run(t, py, pyTOM, map[string]any{"secret": secret, "values": values}, &out)
	if len(out.Tokens) != len(values) {
		t.Fatalf("python made %d tokens for %d values", len(out.Tokens), len(values))
	}
	return out.Tokens, out.Key
}

// TOMToolkitDecoder opens what TOM Toolkit 3 encrypts under the same
// SECRET_KEY, and knows, but does not open, its values under another.
func TestTOMToolkitDecoder(t *testing.T) {
	const secret = "django-insecure-7$k!x(^q#vz0tom-secret-ünïcode"
	values := []string{"facility password", "", "日本語 api key", strings.Repeat("x", 1000)}
	tokens, key := tomTokens(t, secret, values...)
	d, err := envelope.TOMToolkitDecoder(secret)
	if err != nil {
		t.Fatal(err)
	}
	for i, tok := range tokens {
		plain, ok, err := d.Decode([]byte(tok))
		if !ok || err != nil || string(plain) != values[i] {
			t.Errorf("#%d: got %q, %v, %v; want %q", i, plain, ok, err, values[i])
		}
	}
	// The key TOM derives is the Fernet key FernetDecoder takes.
	fd, err := envelope.FernetDecoder(key)
	if err != nil {
		t.Fatal(err)
	}
	if plain, ok, err := fd.Decode([]byte(tokens[0])); !ok || err != nil || string(plain) != values[0] {
		t.Errorf("FernetDecoder(TOM's key): %q, %v, %v", plain, ok, err)
	}
	other, err := envelope.TOMToolkitDecoder(secret + "x")
	if err != nil {
		t.Fatal(err)
	}
	if plain, ok, err := other.Decode([]byte(tokens[0])); !ok || !errors.Is(err, envelope.ErrDecrypt) || plain != nil {
		t.Errorf("another secret: %q, %v, %v; want ok and ErrDecrypt", plain, ok, err)
	} else if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), values[0]) {
		t.Errorf("error %q holds the secret or the plaintext", err)
	}
	if _, err := envelope.TOMToolkitDecoder(""); err == nil {
		t.Error("an empty SECRET_KEY was accepted")
	}
}

// FernetDecoder opens tokens under its key, knows tokens under another as
// its own that do not open, leaves other values to other decoders, and
// refuses a key that is not a Fernet key without printing it.
func TestFernetDecoder(t *testing.T) {
	key, _ := dek.GenerateKey()
	k, err := dek.ParseKey(key)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := k.Encrypt(t.Context(), []byte("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := envelope.FernetDecoder(key)
	if err != nil {
		t.Fatal(err)
	}
	if plain, ok, err := d.Decode(tok); !ok || err != nil || string(plain) != "s3cret" {
		t.Errorf("own token: %q, %v, %v", plain, ok, err)
	}
	tampered := bytes.Clone(tok)
	tampered[len(tampered)/2] ^= 1
	other, _ := dek.GenerateKey()
	od, err := envelope.FernetDecoder(other)
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		d     envelope.Decoder
		value []byte
		ok    bool
	}{
		{od, tok, true},
		{d, tampered, true},
		{d, []byte("plain text"), false},
		{d, []byte("abcd"), false},
		{d, nil, false},
	} {
		plain, ok, err := tc.d.Decode(tc.value)
		if ok != tc.ok || plain != nil || (ok && !errors.Is(err, envelope.ErrDecrypt)) || (!ok && err != nil) {
			t.Errorf("#%d: %q, %v, %v; want ok %v", i, plain, ok, err, tc.ok)
		}
	}
	for i, bad := range []string{"", "short", key[:43] + "!", strings.Repeat("A", 43) + "*"} {
		_, err := envelope.FernetDecoder(bad)
		var ke *dek.KeyError
		if !errors.As(err, &ke) || !errors.Is(err, dek.ErrInvalidKey) || strings.Count(err.Error(), "\n") > 0 {
			t.Errorf("#%d: %v; want a one-line *dek.KeyError", i, err)
		}
		if bad != "" && strings.Contains(err.Error(), bad) {
			t.Errorf("#%d: error %q holds the key", i, err)
		}
	}
}
