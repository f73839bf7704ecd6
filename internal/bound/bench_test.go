package bound

import (
	"crypto/rand"
	"testing"

	"github.com/gorm-envelope/envelope/internal/token"
)

// The benchmarks put this format beside the project's Fernet codec
// (internal/token) on the same plaintexts; their names are key=value so
// that `benchstat -col /format` sets them side by side.

var benchSizes = []struct {
	name string
	n    int
}{
	{"32B", 32},
	{"1KiB", 1024},
}

// BenchmarkOpen: a stored value to its plaintext. format=fernet is
// token's Decrypt (buf=new) or AppendDecrypt (buf=caller) of the token
// text; bound-text is OpenText of the text a string column holds,
// bound-raw Open of the bytes a []byte column holds.
func BenchmarkOpen(b *testing.B) {
	dek := randDEK(b)
	c, f := New(dek), token.New(dek)
	for _, sz := range benchSizes {
		pt := randBytes(b, sz.n)
		tok, err := f.Encrypt(pt)
		if err != nil {
			b.Fatal(err)
		}
		raw := mustSeal(b, c, pt, &testCtx)
		text := AppendText(nil, raw)
		for _, caller := range []bool{false, true} {
			var buf []byte
			name := "size=" + sz.name + "/buf=new"
			if caller {
				buf = make([]byte, 0, sz.n+64)
				name = "size=" + sz.name + "/buf=caller"
			}
			b.Run(name+"/format=fernet", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					var err error
					if caller {
						_, err = f.AppendDecrypt(buf, tok)
					} else {
						_, err = f.Decrypt(tok)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/format=bound-text", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := c.OpenText(buf, text, &testCtx); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/format=bound-raw", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := c.Open(buf, raw, &testCtx); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkSeal: a plaintext to the value stored, each with a fresh random
// IV or nonce and a new result slice.
func BenchmarkSeal(b *testing.B) {
	dek := randDEK(b)
	c, f := New(dek), token.New(dek)
	for _, sz := range benchSizes {
		pt := randBytes(b, sz.n)
		name := "size=" + sz.name
		b.Run(name+"/format=fernet", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := f.Encrypt(pt); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/format=bound-text", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.SealText(nil, pt, &testCtx); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/format=bound-raw", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Seal(nil, pt, &testCtx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNonces asks whether a caller sealing many values would gain by
// supplying nonces it read from crypto/rand many at once: nonce=module is
// Seal, whose nonce Go's FIPS module draws; nonce=each a GCM given a nonce
// read on its own; nonce=batch64 one given nonces read 64 at a time. All
// seal 32 bytes into a caller's buffer.
func BenchmarkNonces(b *testing.B) {
	dek := randDEK(b)
	c, fixed := New(dek), newFixedNonce(b, dek)
	pt := randBytes(b, 32)
	buf := make([]byte, 0, 128)
	b.Run("nonce=module", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Seal(buf, pt, &testCtx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("nonce=each", func(b *testing.B) {
		b.ReportAllocs()
		var nonce [NonceSize]byte
		for b.Loop() {
			rand.Read(nonce[:])
			fixed.seal(buf, pt, &testCtx, nonce[:])
		}
	})
	b.Run("nonce=batch64", func(b *testing.B) {
		b.ReportAllocs()
		nonces := make([]byte, 64*NonceSize)
		i := len(nonces)
		for b.Loop() {
			if i == len(nonces) {
				rand.Read(nonces)
				i = 0
			}
			fixed.seal(buf, pt, &testCtx, nonces[i:i+NonceSize])
			i += NonceSize
		}
	})
}

// BenchmarkNew: a Cipher for a DEK not seen before (an owner missing from
// the DEK cache), with its first open of a 32-byte value.
func BenchmarkNew(b *testing.B) {
	dek := randDEK(b)
	pt := randBytes(b, 32)
	tok, err := token.New(dek).Encrypt(pt)
	if err != nil {
		b.Fatal(err)
	}
	text := mustSealText(b, New(dek), pt, &testCtx)
	b.Run("format=fernet", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := token.New(dek).Decrypt(tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("format=bound-text", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := New(dek).OpenText(nil, text, &testCtx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
