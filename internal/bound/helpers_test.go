package bound

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/fips140"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"testing"
)

func randDEK(t testing.TB) [DEKSize]byte {
	t.Helper()
	var k [DEKSize]byte
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return k
}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// testCtx is a context with every field set.
var testCtx = Context{Table: "credentials", Column: "password", Owner: "42", Row: "7"}

func mustSeal(t testing.TB, c *Cipher, pt []byte, ctx *Context) []byte {
	t.Helper()
	raw, err := c.Seal(nil, pt, ctx)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return raw
}

func mustSealText(t testing.TB, c *Cipher, pt []byte, ctx *Context) []byte {
	t.Helper()
	text, err := c.SealText(nil, pt, ctx)
	if err != nil {
		t.Fatalf("SealText: %v", err)
	}
	return text
}

func mustOpen(t testing.TB, c *Cipher, raw []byte, ctx *Context) []byte {
	t.Helper()
	pt, err := c.Open(nil, raw, ctx)
	if err != nil {
		t.Fatalf("Open(%.40x...): %v", raw, err)
	}
	return pt
}

// wantInvalid checks that raw is rejected by Open with exactly ErrInvalid,
// returning dst as it was.
func wantInvalid(t testing.TB, c *Cipher, raw []byte, ctx *Context, what string) {
	t.Helper()
	dst := []byte("prefix")
	out, err := c.Open(dst, raw, ctx)
	if err != ErrInvalid || string(out) != "prefix" {
		t.Fatalf("%s: Open = %q, %v; want %q, ErrInvalid", what, out, err, "prefix")
	}
}

// wantInvalidText checks that text is rejected by OpenText with exactly
// ErrInvalid, returning dst as it was.
func wantInvalidText(t testing.TB, c *Cipher, text []byte, ctx *Context, what string) {
	t.Helper()
	dst := []byte("prefix")
	out, err := c.OpenText(dst, text, ctx)
	if err != ErrInvalid || string(out) != "prefix" {
		t.Fatalf("%s: OpenText = %q, %v; want %q, ErrInvalid", what, out, err, "prefix")
	}
}

// fixedNonce seals with a nonce the caller gives, as the fixed vectors
// need: the format assembled from the spec's pieces with a GCM that takes
// a nonce. Cipher has no such method (see the package doc, Nonces).
// It reuses one buffer for the associated data: one goroutine at a time.
type fixedNonce struct {
	aead cipher.AEAD
	aad  []byte
}

func newFixedNonce(t testing.TB, dek [DEKSize]byte) *fixedNonce {
	t.Helper()
	key, err := hkdf.Key(sha256.New, dek[:], nil, "gorm-envelope bound value v1", 32)
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	// A caller's nonce is not an approved service: fips140=only refuses
	// it unless told this is deliberate.
	var aead cipher.AEAD
	fips140.WithoutEnforcement(func() { aead, err = cipher.NewGCM(block) })
	if err != nil {
		t.Fatal(err)
	}
	return &fixedNonce{aead: aead}
}

// seal appends the raw value of pt under ctx with the given nonce.
func (f *fixedNonce) seal(dst, pt []byte, ctx *Context, nonce []byte) []byte {
	f.aad = appendAAD(f.aad[:0], ctx)
	dst = append(append(dst, Version), nonce...)
	var out []byte
	fips140.WithoutEnforcement(func() { out = f.aead.Seal(dst, nonce, pt, f.aad) })
	return out
}
