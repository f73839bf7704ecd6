package bound

import (
	"slices"

	"github.com/gorm-envelope/envelope/internal/b64"
)

// The text form of a raw value is its URL-safe base64 (RFC 4648 §5)
// without padding, which internal/b64's tables encode and decode strictly.
// Like every bound value's, its first byte is Version.

// minText is the length of the shortest text form: that of an empty
// plaintext's value.
var minText = TextLen(Overhead)

// AppendText appends the text form of the raw value raw to dst and returns
// the extended slice. It allocates only when dst has less than
// TextLen(len(raw)) bytes of spare capacity.
func AppendText(dst, raw []byte) []byte {
	n := b64.RawEncodedLen(len(raw))
	dst = slices.Grow(dst, n)
	b64.RawEncode(dst[len(dst):len(dst)+n], raw)
	return dst[:len(dst)+n]
}

// TextLen is the length of the text form of a raw value of n bytes; a
// plaintext of m bytes has a raw value of m+[Overhead] bytes.
func TextLen(n int) int { return b64.RawEncodedLen(n) }

// ParseText returns the raw value whose text form is text, or ErrInvalid.
// It accepts exactly the texts AppendText writes for values of at least
// Overhead bytes starting with Version: no padding, no '+' or '/', no
// whitespace or line breaks, and the unused low bits of the last
// character zero, so each raw value has exactly one text.
func ParseText(text []byte) ([]byte, error) {
	raw, ok := appendParse(nil, text)
	if !ok {
		return nil, ErrInvalid
	}
	return raw[:len(raw):len(raw)], nil
}

// appendParse appends the raw value of text to dst, reporting whether text
// is the text form of a raw value. It may overwrite dst's spare capacity.
func appendParse(dst, text []byte) ([]byte, bool) {
	if len(text) < minText {
		return dst, false
	}
	base, room := len(dst), b64.DecodeBuf(len(text))
	dst = slices.Grow(dst, room)
	buf := dst[base : base+room]
	n, ok := b64.RawDecode(buf, text)
	if !ok || buf[0] != Version {
		return dst[:base], false
	}
	return dst[:base+n], true
}

// IsBound reports whether stored, a column's bytes, has the shape of a bound
// value in either form: a raw value (a []byte column), whose first byte is
// Version, or its text (a string column), whose first base64 quantum
// decodes to a first byte of Version. It reads the length and the first
// four bytes, and says nothing about validity. A Fernet token's text fails
// it: its first byte is 0x80, which also encodes to 'g', but then to one of
// 'A' to 'P' where a bound value's text has one of 'Q' to 'Z' or 'a' to
// 'f'.
func IsBound(stored []byte) bool {
	if len(stored) >= Overhead && stored[0] == Version {
		return true // raw: text never holds a byte above 0x7f
	}
	if len(stored) < minText || len(stored)%4 == 1 {
		return false
	}
	var q [11]byte // b64.DecodeBuf(4)
	_, ok := b64.RawDecode(q[:], stored[:4])
	return ok && q[0] == Version
}

// OpenedLen is the most plaintext bytes the text form of n characters can
// open to: what a caller reserves before [Cipher.OpenText].
func OpenedLen(n int) int { return max(n*3/4-Overhead, 0) }
