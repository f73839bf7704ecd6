package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"testing"
)

// noIV hides SetIV, as a crypto/cipher without it would.
type noIV struct{ cipher.BlockMode }

// TestCBCMatchesCryptoCipher compares Cipher.cbc, whose pooled modes are
// re-aimed at each call's IV, with fresh crypto/cipher CBC modes, on every
// length up to 70 blocks and on 4 KiB, under random keys and IVs, calls of
// different lengths and IVs following each other on the same Cipher; and
// the same for modes that cannot be re-aimed (made per call).
func TestCBCMatchesCryptoCipher(t *testing.T) {
	for _, reaim := range []bool{true, false} {
		key := randKey(t)
		c := New(key)
		if !reaim {
			old := c.states.New
			c.states.New = func() any {
				k := old().(*keyState)
				k.enc, k.dec = noIV{k.enc}, noIV{k.dec}
				return k
			}
		}
		block, err := aes.NewCipher(key[16:])
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range append(rangeN(71), 256, 257, 1) {
			iv := randBytes(t, blockSize)
			msg := randBytes(t, n*blockSize)

			want := make([]byte, len(msg))
			cipher.NewCBCEncrypter(block, iv).CryptBlocks(want, msg)
			got := bytes.Clone(msg)
			k := c.states.Get().(*keyState)
			c.cbc(k, false, got, got, iv)
			if !bytes.Equal(got, want) {
				t.Fatalf("reaim %v: encrypt %d blocks: differs from crypto/cipher", reaim, n)
			}
			// A guard block after dst catches writes past the end.
			dst := make([]byte, len(msg)+blockSize)
			c.cbc(k, true, dst[:len(msg)], want, iv)
			c.states.Put(k)
			if !bytes.Equal(dst[:len(msg)], msg) {
				t.Fatalf("reaim %v: decrypt %d blocks: wrong plaintext", reaim, n)
			}
			if !bytes.Equal(dst[len(msg):], make([]byte, blockSize)) {
				t.Fatalf("reaim %v: decrypt %d blocks: wrote past the end", reaim, n)
			}
		}
	}
}

// TestCBCModesTakeIV: crypto/cipher's CBC modes over crypto/aes can be
// re-aimed at a new IV. Without that the codec stays correct but makes a
// mode (an allocation and a copy of the key schedule) per call.
func TestCBCModesTakeIV(t *testing.T) {
	m := New(randKey(t)).states.Get().(*keyState)
	if _, ok := m.enc.(ivSetter); !ok {
		t.Errorf("%T has no SetIV", m.enc)
	}
	if _, ok := m.dec.(ivSetter); !ok {
		t.Errorf("%T has no SetIV", m.dec)
	}
}

func rangeN(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// BenchmarkCBCDecrypt: a pooled mode re-aimed at the IV against a mode made
// per call, on one block and on 4 KiB.
func BenchmarkCBCDecrypt(b *testing.B) {
	key := benchKey(b)
	c := New(key)
	block, _ := aes.NewCipher(key[16:])
	for _, n := range []int{16, 4096} {
		src := make([]byte, blockSize+n)
		dst := make([]byte, n)
		b.Run(fmt.Sprintf("new-mode/%dB", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				cipher.NewCBCDecrypter(block, src[:blockSize]).CryptBlocks(dst, src[blockSize:])
			}
		})
		b.Run(fmt.Sprintf("pooled/%dB", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				k := c.states.Get().(*keyState)
				c.cbc(k, true, dst, src[blockSize:], src[:blockSize])
				c.states.Put(k)
			}
		})
	}
}
