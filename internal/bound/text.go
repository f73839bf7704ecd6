package bound

import (
	"bytes"
	"encoding/base64"
)

// The text form of a raw value is its URL-safe base64 (RFC 4648 §5)
// without padding. Like every bound value's, its first byte is Version.
var b64 = base64.RawURLEncoding.Strict()

// minText is the length of the shortest text form: that of an empty
// plaintext's value.
var minText = TextLen(Overhead)

// AppendText appends the text form of the raw value raw to dst and returns
// the extended slice. It allocates only when dst has less than
// TextLen(len(raw)) bytes of spare capacity.
func AppendText(dst, raw []byte) []byte { return b64.AppendEncode(dst, raw) }

// TextLen is the length of the text form of a raw value of n bytes; a
// plaintext of m bytes has a raw value of m+[Overhead] bytes.
func TextLen(n int) int { return b64.EncodedLen(n) }

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
	return raw, nil
}

// appendParse appends the raw value of text to dst, reporting whether text
// is the text form of a raw value. On failure the bytes it appended stay
// in dst's spare capacity.
func appendParse(dst, text []byte) ([]byte, bool) {
	// encoding/base64 skips '\r' and '\n' even in strict mode.
	if len(text) < minText || bytes.IndexByte(text, '\n') >= 0 || bytes.IndexByte(text, '\r') >= 0 {
		return dst, false
	}
	base := len(dst)
	out, err := b64.AppendDecode(dst, text)
	if err != nil || out[base] != Version {
		return dst, false
	}
	return out, true
}

// IsBound reports whether stored, a column's bytes, has the shape of a bound
// value in either form: a raw value (a []byte column), whose first byte is
// Version, or its text (a string column), whose first base64 quantum
// decodes to a first byte of Version. It reads two bytes and the length,
// and says nothing about validity. A Fernet token's text fails it: its
// first byte is 0x80, which also encodes to 'g', but then to one of 'A'
// to 'P' where a bound value's text has one of 'Q' to 'Z' or 'a' to 'f'.
func IsBound(stored []byte) bool {
	if len(stored) >= Overhead && stored[0] == Version {
		return true // raw: text never holds a byte above 0x7f
	}
	if len(stored) < minText || len(stored)%4 == 1 {
		return false
	}
	c0, c1 := b64Value(stored[0]), b64Value(stored[1])
	return c0 >= 0 && c1 >= 0 && byte(c0<<2|c1>>4) == Version
}

// b64Value is the 6-bit value of a URL-safe base64 character, or -1.
func b64Value(c byte) int {
	switch {
	case 'A' <= c && c <= 'Z':
		return int(c - 'A')
	case 'a' <= c && c <= 'z':
		return int(c-'a') + 26
	case '0' <= c && c <= '9':
		return int(c-'0') + 52
	case c == '-':
		return 62
	case c == '_':
		return 63
	}
	return -1
}
