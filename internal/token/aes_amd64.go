//go:build amd64 && !purego

package token

import "golang.org/x/sys/cpu"

// On amd64 with AES-NI, CBC runs in assembly: decryption works on eight
// independent blocks at once (CBC decryption is parallel across blocks, and
// crypto/cipher on amd64 decrypts one block per call), and encryption keeps
// the round keys in registers. The results are checked against crypto/aes
// and crypto/cipher in aes_test.go.
var hasAESNI = cpu.X86.HasAES && cpu.X86.HasSSE2

// With AVX-512 and VAES, long tokens are decrypted sixteen blocks per step.
var hasVAES = hasAESNI && cpu.X86.HasAVX512F && cpu.X86.HasAVX512VAES

// vaesMinBlocks is the shortest ciphertext (in blocks) worth the 512-bit
// loop's setup.
const vaesMinBlocks = 16

//go:noescape
func expandKey128(key *byte, enc *byte, dec *byte)

//go:noescape
func cbcDecrypt(dec *byte, dst *byte, src *byte, n int)

//go:noescape
func cbcEncrypt(enc *byte, dst *byte, iv *byte, n int)

//go:noescape
func cbcDecryptVAES(dec *byte, dst *byte, src *byte, n int)

// cbcDecryptAll decrypts n blocks: dst[i] = D(src[i+1]) XOR src[i], where
// src holds the IV followed by the ciphertext.
func cbcDecryptAll(dec *[11 * blockSize]byte, dst, src []byte, n int) {
	if hasVAES && n >= vaesMinBlocks {
		m := n &^ 15
		cbcDecryptVAES(&dec[0], &dst[0], &src[0], m)
		if m == n {
			return
		}
		dst, src, n = dst[m*blockSize:], src[m*blockSize:], n-m
	}
	cbcDecrypt(&dec[0], &dst[0], &src[0], n)
}
