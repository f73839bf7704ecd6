//go:build !amd64 || purego

package token

const hasAESNI = false

func expandKey128(key *byte, enc *byte, dec *byte)      { panic("token: no AES-NI") }
func cbcDecrypt(dec *byte, dst *byte, src *byte, n int) { panic("token: no AES-NI") }
func cbcEncrypt(enc *byte, dst *byte, iv *byte, n int)  { panic("token: no AES-NI") }

func cbcDecryptAll(dec *[11 * blockSize]byte, dst, src []byte, n int) { panic("token: no AES-NI") }

const hasVAES = false

func cbcDecryptVAES(dec *byte, dst *byte, src *byte, n int) { panic("token: no VAES") }
