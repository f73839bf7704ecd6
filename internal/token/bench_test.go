package token

import (
	"crypto/rand"
	"testing"

	"github.com/fernet/fernet-go"
)

var benchSizes = []struct {
	name string
	n    int
}{
	{"32B", 32},
	{"256B", 256},
	{"1KiB", 1024},
	{"4KiB", 4096},
}

func benchKey(b *testing.B) [KeySize]byte {
	var k [KeySize]byte
	if _, err := rand.Read(k[:]); err != nil {
		b.Fatal(err)
	}
	return k
}

func BenchmarkDecrypt(b *testing.B) {
	key := benchKey(b)
	c := New(key)
	fk := fernet.Key(key)
	keys := []*fernet.Key{&fk}
	for _, sz := range benchSizes {
		msg := make([]byte, sz.n)
		rand.Read(msg)
		tok, err := c.Encrypt(msg)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("ours/"+sz.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Decrypt(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("fernet-go/"+sz.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if fernet.VerifyAndDecrypt(tok, 0, keys) == nil {
					b.Fatal("fernet-go rejected the token")
				}
			}
		})
	}
}

func BenchmarkEncrypt(b *testing.B) {
	key := benchKey(b)
	c := New(key)
	fk := fernet.Key(key)
	for _, sz := range benchSizes {
		msg := make([]byte, sz.n)
		rand.Read(msg)
		b.Run("ours/"+sz.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Encrypt(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("fernet-go/"+sz.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := fernet.EncryptAndSign(msg, &fk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNew: a Cipher for a key not seen before (an owner missing from
// the DEK cache), with its first Decrypt and Encrypt, which make the
// per-call state the Cipher then reuses.
func BenchmarkNew(b *testing.B) {
	key := benchKey(b)
	msg := make([]byte, 32)
	tok, err := New(key).Encrypt(msg)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		c := New(key)
		if _, err := c.Decrypt(tok); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Encrypt(msg); err != nil {
			b.Fatal(err)
		}
	}
}
