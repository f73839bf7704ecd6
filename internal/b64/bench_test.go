package b64

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"testing"
)

// BenchmarkBase64 compares the table loops with encoding/base64: padded on
// the lengths of short Fernet tokens and of a 4 KiB value's token, raw on
// those of bound values of 0, 32, 100 and 4096 bytes.
func BenchmarkBase64(b *testing.B) {
	for _, c := range []struct {
		form   string
		std    *base64.Encoding
		encLen func(int) int
		encode func(dst, src []byte)
		decode func(dst, src []byte) (int, bool)
		sizes  []int // raw bytes
	}{
		{"padded", base64.URLEncoding, EncodedLen, Encode, Decode, []int{73, 89, 105, 153, 201, 234, 297, 393, 4153}},
		{"raw", base64.RawURLEncoding, RawEncodedLen, RawEncode, RawDecode, []int{29, 61, 129, 4125}},
	} {
		for _, n := range c.sizes {
			raw := make([]byte, n)
			rand.Read(raw)
			text := make([]byte, c.encLen(n))
			c.encode(text, raw)
			dst := make([]byte, DecodeBuf(len(text)))
			size := fmt.Sprintf("%s/%dchars", c.form, len(text))
			b.Run("decode/table/"+size, func(b *testing.B) {
				for b.Loop() {
					c.decode(dst, text)
				}
			})
			b.Run("decode/encoding-base64/"+size, func(b *testing.B) {
				for b.Loop() {
					c.std.Decode(dst, text)
				}
			})
			b.Run("encode/table/"+size, func(b *testing.B) {
				for b.Loop() {
					c.encode(text, raw)
				}
			})
			b.Run("encode/encoding-base64/"+size, func(b *testing.B) {
				for b.Loop() {
					c.std.Encode(text, raw)
				}
			})
		}
	}
}
