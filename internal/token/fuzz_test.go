package token

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

// fuzzKey is fixed so that corpus entries mean the same on every run.
var fuzzKey = [KeySize]byte{
	0x5a, 0x17, 0x8c, 0x21, 0x9e, 0x4f, 0xd0, 0x33, 0x6b, 0x02, 0xe7, 0x58, 0xa4, 0x1d, 0x90, 0xc6,
	0x3e, 0x71, 0x0b, 0xf9, 0x26, 0x8d, 0x44, 0xb2, 0x6f, 0x13, 0xca, 0x85, 0x37, 0xe0, 0x59, 0x9b,
}

// FuzzDecrypt: Decrypt never panics; whatever it accepts, fernet-go accepts
// with the same message, and the message survives a fresh round trip.
func FuzzDecrypt(f *testing.F) {
	c := New(fuzzKey)
	for _, n := range []int{0, 1, 15, 16, 17, 42, 100} {
		tok, err := c.EncryptAt(bytes.Repeat([]byte{byte(n)}, n), time.Unix(int64(n), 0))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tok)
	}
	// Python-made tokens (under other keys) for their shape.
	if _, err := os.Stat(vectorsPath); err == nil {
		v := loadVectors(f)
		for _, o := range v.Owners {
			f.Add([]byte(o.EncryptedDEK))
			for _, fl := range o.Fields {
				f.Add([]byte(fl.Token))
			}
		}
		f.Add([]byte(v.TamperedOwner1))
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 3, 99, 100, 101, 140, 300} {
		junk := make([]byte, n)
		for i := range junk {
			junk[i] = byte(r.Uint32())
		}
		f.Add(junk)
		f.Add([]byte(base64.URLEncoding.EncodeToString(junk)))
	}

	f.Fuzz(func(t *testing.T, tok []byte) {
		msg, err := c.Decrypt(tok)
		if err != nil {
			if err != ErrInvalid || msg != nil {
				t.Fatalf("Decrypt = %q, %v; want nil, ErrInvalid", msg, err)
			}
			return
		}
		if msg == nil {
			t.Fatal("nil message without error")
		}
		if ref := fernetDecrypt(fuzzKey, tok); ref == nil || !bytes.Equal(ref, msg) {
			t.Fatalf("Decrypt = %q; fernet-go gives %q", msg, ref)
		}
		again, err := c.Encrypt(msg)
		if err != nil {
			t.Fatal(err)
		}
		if got := mustDecrypt(t, c, again); !bytes.Equal(got, msg) {
			t.Fatalf("re-encrypted message decrypts to %q, want %q", got, msg)
		}
	})
}

// FuzzRoundTrip: every message and timestamp survives EncryptAt and Decrypt,
// and fernet-go reads the token too.
func FuzzRoundTrip(f *testing.F) {
	c := New(fuzzKey)
	f.Add([]byte(""), int64(0))
	f.Add([]byte("hunter2"), int64(1767225600))
	f.Add(bytes.Repeat([]byte{16}, 16), int64(-1))
	f.Add([]byte("pässwörd ☃ 🔭"), int64(1<<62))
	f.Fuzz(func(t *testing.T, msg []byte, ts int64) {
		tok, err := c.EncryptAt(msg, time.Unix(ts, 0))
		if err != nil {
			t.Fatal(err)
		}
		// LooksLike expects "gA": version 0x80 and a timestamp below 2^60.
		if ts >= 0 && ts < 1<<60 && !LooksLike(tok) {
			t.Fatalf("LooksLike(%q) = false", tok)
		}
		got := mustDecrypt(t, c, tok)
		if !bytes.Equal(got, msg) || got == nil {
			t.Fatalf("round trip: got %q, want %q", got, msg)
		}
		if ref := fernetDecrypt(fuzzKey, tok); !bytes.Equal(ref, msg) {
			t.Fatalf("fernet-go reads %q, want %q", ref, msg)
		}
	})
}
