//go:build amd64 && !purego

package token

import (
	"bytes"

	sb "github.com/segmentio/asm/base64"
	"github.com/segmentio/asm/cpu"
	"github.com/segmentio/asm/cpu/x86"
)

// With AVX2, github.com/segmentio/asm/base64 decodes 32 characters and
// encodes 24 bytes per step, several times faster than the table loops in
// b64.go on long tokens. It is used for the middle of a token only: the
// table loops handle the end (padding, the strictness rules) and short
// tokens, where the vector loop would hand most of the text to
// encoding/base64 anyway.
var simdB64 = cpu.X86.Has(x86.AVX2)

var simdURL = sb.URLEncoding

// Below these lengths the table loops are as fast (measured with
// BenchmarkBase64 on an AVX2 machine).
const (
	simdMinDecode = 256
	simdMinEncode = 192
)

// b64DecodeFast is b64Decode, with the leading characters decoded by the
// vector loop when the text is long enough.
func b64DecodeFast(dst, src []byte) (int, bool) {
	if !simdB64 || len(src) < simdMinDecode || len(src)%4 != 0 || len(dst) < b64DecodeBuf(len(src)) {
		return b64Decode(dst, src)
	}
	// The vector loop takes 32 characters while at least 45 remain, and
	// hands the rest of what it is given to encoding/base64: give it
	// 32m+16 characters, so that encoding/base64 sees 16, and keep at
	// least the last group for b64Decode.
	k := (len(src)-4-16)/32*32 + 16
	// The vector loop for the URL alphabet also takes '/' as 63.
	if bytes.IndexByte(src[:k], '/') >= 0 {
		return 0, false
	}
	n, err := simdURL.Decode(dst, src[:k])
	// encoding/base64 skips '\r' and '\n'; a skipped byte shows as a
	// shorter result, and the strict decoder rejects them.
	if err != nil || n != k/4*3 {
		return 0, false
	}
	m, ok := b64Decode(dst[n:], src[k:])
	if !ok {
		return 0, false
	}
	return n + m, true
}

// b64EncodeFast is b64Encode, with the leading bytes encoded by the vector
// loop when the input is long enough.
func b64EncodeFast(dst, src []byte) {
	if !simdB64 || len(src) < simdMinEncode {
		b64Encode(dst, src)
		return
	}
	// Whole 3-byte groups only, so the text splits where the bytes do.
	k := (len(src) - 8) / 24 * 24
	simdURL.Encode(dst[:k/3*4], src[:k])
	b64Encode(dst[k/3*4:], src[k:])
}
