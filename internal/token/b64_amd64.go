//go:build amd64 && !purego

package token

import (
	"bytes"

	sb "github.com/segmentio/asm/base64"
	"github.com/segmentio/asm/cpu"
	"github.com/segmentio/asm/cpu/x86"
)

// With AVX2, github.com/segmentio/asm/base64 decodes 32 characters per
// step: 3.5 times faster than the table loops in b64.go on a 4 KiB value's
// token, 1.5 times on the 204-character token of an 80-byte value. It is used for the middle of a
// token only: the table loops handle the end (padding, the strictness
// rules) and the shortest tokens, where the vector loop would hand most of
// the text to encoding/base64 anyway.
// Its encoder is not used: in a sweep of lengths and buffer placements it
// ran, for a few placements, six times slower than for others, for reasons
// not found; token encryption is bound by serial AES-CBC anyway.
var simdB64 = cpu.X86.Has(x86.AVX2)

var simdURL = sb.URLEncoding

// Below this length (the 100-character token of a value shorter than 16
// bytes) the table loops are as fast (BenchmarkBase64).
const simdMinDecode = 120

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
