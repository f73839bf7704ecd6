package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"testing"
)

func skipNoAESNI(t testing.TB) {
	if !hasAESNI {
		t.Skip("no AES-NI: the assembly CBC loops are not used on this machine")
	}
}

// TestExpandKey128 checks the round keys against FIPS-197 Appendix A.1.
func TestExpandKey128(t *testing.T) {
	skipNoAESNI(t)
	key, _ := hex.DecodeString("2b7e151628aed2a6abf7158809cf4f3c")
	var enc, dec [11 * blockSize]byte
	expandKey128(&key[0], &enc[0], &dec[0])
	for i, want := range map[int]string{
		0:  "2b7e151628aed2a6abf7158809cf4f3c",
		1:  "a0fafe1788542cb123a339392a6c7605",
		10: "d014f9a8c9ee2589e13f0cc8b6630ca6",
	} {
		if got := hex.EncodeToString(enc[i*blockSize : (i+1)*blockSize]); got != want {
			t.Errorf("round key %d = %s, want %s", i, got, want)
		}
	}
	if !bytes.Equal(dec[:blockSize], enc[10*blockSize:]) || !bytes.Equal(dec[10*blockSize:], enc[:blockSize]) {
		t.Error("decryption schedule does not start with the last round key and end with the first")
	}
}

// TestCBCMatchesCryptoCipher compares the assembly loops with crypto/cipher's
// CBC on every length up to 70 blocks (all paths: 16-block, 8-block and
// single-block steps) and on 4 KiB, under random keys and IVs.
func TestCBCMatchesCryptoCipher(t *testing.T) {
	skipNoAESNI(t)
	for _, n := range append(rangeN(71), 256, 257) {
		var key [KeySize]byte
		copy(key[:], randBytes(t, KeySize))
		c := New(key)
		block, err := aes.NewCipher(key[16:])
		if err != nil {
			t.Fatal(err)
		}
		iv := randBytes(t, blockSize)
		msg := randBytes(t, n*blockSize)

		want := make([]byte, len(msg))
		cipher.NewCBCEncrypter(block, iv).CryptBlocks(want, msg)
		got := bytes.Clone(msg)
		if n > 0 {
			cbcEncrypt(&c.enc[0], &got[0], &iv[0], n)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("cbcEncrypt, %d blocks: differs from crypto/cipher", n)
		}
		if n == 0 {
			continue
		}

		src := append(bytes.Clone(iv), want...) // IV || ciphertext
		decrypters := map[string]func(dst []byte){
			"cbcDecrypt":    func(dst []byte) { cbcDecrypt(&c.dec[0], &dst[0], &src[0], n) },
			"cbcDecryptAll": func(dst []byte) { cbcDecryptAll(&c.dec, dst, src, n) },
		}
		if hasVAES && n%16 == 0 {
			decrypters["cbcDecryptVAES"] = func(dst []byte) { cbcDecryptVAES(&c.dec[0], &dst[0], &src[0], n) }
		}
		for name, decrypt := range decrypters {
			// A guard block after dst catches writes past the end.
			dst := make([]byte, len(msg)+blockSize)
			decrypt(dst)
			if !bytes.Equal(dst[:len(msg)], msg) {
				t.Fatalf("%s, %d blocks: wrong plaintext", name, n)
			}
			if !bytes.Equal(dst[len(msg):], make([]byte, blockSize)) {
				t.Fatalf("%s, %d blocks: wrote past the end", name, n)
			}
		}
	}
}

func rangeN(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// BenchmarkCBCDecrypt: the assembly loops against crypto/cipher on 4 KiB.
func BenchmarkCBCDecrypt(b *testing.B) {
	skipNoAESNI(b)
	key := benchKey(b)
	c := New(key)
	block, _ := aes.NewCipher(key[16:])
	src := make([]byte, blockSize+4096)
	dst := make([]byte, 4096)
	b.Run("crypto-cipher", func(b *testing.B) {
		b.SetBytes(4096)
		for b.Loop() {
			cipher.NewCBCDecrypter(block, src[:blockSize]).CryptBlocks(dst, src[blockSize:])
		}
	})
	b.Run("xmm-8", func(b *testing.B) {
		b.SetBytes(4096)
		for b.Loop() {
			cbcDecrypt(&c.dec[0], &dst[0], &src[0], 256)
		}
	})
	if hasVAES {
		b.Run("zmm-16", func(b *testing.B) {
			b.SetBytes(4096)
			for b.Loop() {
				cbcDecryptVAES(&c.dec[0], &dst[0], &src[0], 256)
			}
		})
	}
}
