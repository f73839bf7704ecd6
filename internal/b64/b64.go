// Package b64 is a table-driven, strict URL-safe base64 codec (RFC 4648 §5)
// for the texts of stored values: with '=' padding for Fernet tokens
// (internal/token), without for bound values (internal/bound). The decoder
// handles four 4-character groups per step, the encoder two;
// encoding/base64 takes about 1.6 times as long for every token length
// (BenchmarkBase64).
//
// Decoding is strict: only the 64 characters of the alphabet (and, padded,
// one or two trailing '='), no line breaks (which encoding/base64 skips
// even in strict mode), and the unused bits of the last character zero, so
// that each byte string has exactly one accepted text.
package b64

import "encoding/binary"

// Alphabet is the URL-safe base64 alphabet, in the order of the values.
const Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

const alphabet = Alphabet

// badPair marks a pairTab entry with a character outside the alphabet
// (including '=', '\r' and '\n'); valid entries use only bits 0..11.
const badPair = 0x8000

var (
	// encodeTab maps a 12-bit value to its two characters, little-endian.
	encodeTab = func() (t [1 << 12]uint16) {
		for v := range t {
			t[v] = uint16(alphabet[v>>6]) | uint16(alphabet[v&63])<<8
		}
		return t
	}()
	// pairTab maps two characters c0, c1 (both below 0x80) at index
	// c0 | c1<<8 to their 12-bit value, or to badPair. A 4-character group
	// is two lookups. Bytes with the high bit set are caught separately.
	pairTab = func() (t [1 << 15]uint16) {
		for i := range t {
			t[i] = badPair
		}
		for i := range len(alphabet) {
			for k := range len(alphabet) {
				t[uint16(alphabet[i])|uint16(alphabet[k])<<8] = uint16(i<<6 | k)
			}
		}
		return t
	}()
)

// EncodedLen is the length of the padded text for n bytes.
func EncodedLen(n int) int { return (n + 2) / 3 * 4 }

// RawEncodedLen is the length of the unpadded text for n bytes.
func RawEncodedLen(n int) int { return (n*8 + 5) / 6 }

// Encode writes the padded text of src to dst, which must be
// EncodedLen(len(src)) bytes long.
func Encode(dst, src []byte) {
	i, j := encodeGroups(dst, src)
	switch len(src) - i {
	case 1:
		g := uint32(src[i]) << 16
		d := dst[j : j+4]
		d[0], d[1], d[2], d[3] = alphabet[g>>18], alphabet[g>>12&63], '=', '='
	case 2:
		g := uint32(src[i])<<16 | uint32(src[i+1])<<8
		d := dst[j : j+4]
		d[0], d[1], d[2], d[3] = alphabet[g>>18], alphabet[g>>12&63], alphabet[g>>6&63], '='
	}
}

// RawEncode writes the unpadded text of src to dst, which must be
// RawEncodedLen(len(src)) bytes long.
func RawEncode(dst, src []byte) {
	i, j := encodeGroups(dst, src)
	switch len(src) - i {
	case 1:
		g := uint32(src[i]) << 16
		d := dst[j : j+2]
		d[0], d[1] = alphabet[g>>18], alphabet[g>>12&63]
	case 2:
		g := uint32(src[i])<<16 | uint32(src[i+1])<<8
		d := dst[j : j+3]
		d[0], d[1], d[2] = alphabet[g>>18], alphabet[g>>12&63], alphabet[g>>6&63]
	}
}

// encodeGroups writes the text of src's whole 3-byte groups to dst and
// returns how many bytes it read and characters it wrote.
func encodeGroups(dst, src []byte) (i, j int) {
	// Two groups (6 bytes in, 8 characters out) per step; the 8-byte load
	// reads two bytes past the groups, so stop while 8 remain.
	for ; i+8 <= len(src); i, j = i+6, j+8 {
		x := binary.BigEndian.Uint64(src[i:])
		g0, g1 := x>>40&0xffffff, x>>16&0xffffff
		out := uint64(encodeTab[g0>>12]) | uint64(encodeTab[g0&0xfff])<<16 |
			uint64(encodeTab[g1>>12])<<32 | uint64(encodeTab[g1&0xfff])<<48
		binary.LittleEndian.PutUint64(dst[j:], out)
	}
	for ; i+3 <= len(src); i, j = i+3, j+4 {
		g := uint32(src[i])<<16 | uint32(src[i+1])<<8 | uint32(src[i+2])
		binary.LittleEndian.PutUint32(dst[j:], uint32(encodeTab[g>>12])|uint32(encodeTab[g&0xfff])<<16)
	}
	return i, j
}

// DecodeBuf is the dst length Decode and RawDecode need for src of length
// n: the decoded length plus slack for their 8-byte stores.
func DecodeBuf(n int) int { return n/4*3 + 8 }

// Decode decodes padded text strictly: the length must be a multiple of 4,
// only alphabet characters may appear except one or two trailing '=', and
// the unused bits before padding must be zero. dst must be at least
// DecodeBuf(len(src)) long; bytes of dst past the result may be
// overwritten. It reports the decoded length and whether src was valid.
func Decode(dst, src []byte) (int, bool) {
	if len(src) == 0 || len(src)%4 != 0 || len(dst) < DecodeBuf(len(src)) {
		return 0, false
	}
	// All groups but the last, which may be padded.
	n, bad, high := decodeGroups(dst, src[:len(src)-4])
	out := dst[n:]
	last := src[len(src)-4:]
	x := binary.LittleEndian.Uint32(last)
	p0 := pairTab[uint16(x)&0x7f7f]
	var p1 uint16
	switch {
	case last[3] != '=': // no padding
		p1 = pairTab[uint16(x>>16)&0x7f7f]
		n += 3
	case last[2] != '=': // "xyz=": the third character's low 2 bits are unused
		v, ok := charVal(last[2])
		if !ok || v&3 != 0 {
			return 0, false
		}
		p1 = uint16(v) << 6
		n += 2
	default: // "xy==": the second character's low 4 bits are unused
		if p0&0xf != 0 {
			return 0, false
		}
		n++
	}
	high |= uint64(x) & 0x80808080
	bad |= p0 | p1
	if bad&badPair != 0 || high&0x8080808080808080 != 0 {
		return 0, false
	}
	binary.BigEndian.PutUint32(out, uint32(p0)<<20|uint32(p1)<<8)
	return n, true
}

// RawDecode decodes unpadded text strictly: only alphabet characters, a
// length that is not 4k+1, and the unused bits of the last character zero.
// dst must be at least DecodeBuf(len(src)) long; bytes of dst past the
// result may be overwritten. It reports the decoded length and whether src
// was valid.
func RawDecode(dst, src []byte) (int, bool) {
	r := len(src) % 4 // characters in the last, partial group
	if len(src) == 0 || r == 1 || len(dst) < DecodeBuf(len(src)) {
		return 0, false
	}
	n, bad, high := decodeGroups(dst, src[:len(src)-r])
	out := dst[n:]
	last := src[len(src)-r:]
	var p0, p1 uint16
	switch r {
	case 2: // "xy": the second character's low 4 bits are unused
		p0 = pairTab[uint16(last[0]&0x7f)|uint16(last[1]&0x7f)<<8]
		if p0&0xf != 0 {
			return 0, false
		}
		n++
	case 3: // "xyz": the third character's low 2 bits are unused
		p0 = pairTab[uint16(last[0]&0x7f)|uint16(last[1]&0x7f)<<8]
		v, ok := charVal(last[2])
		if !ok || v&3 != 0 {
			return 0, false
		}
		p1 = uint16(v) << 6
		n += 2
	}
	for _, c := range last {
		high |= uint64(c)
	}
	bad |= p0 | p1
	if bad&badPair != 0 || high&0x8080808080808080 != 0 {
		return 0, false
	}
	if r > 0 {
		binary.BigEndian.PutUint32(out, uint32(p0)<<20|uint32(p1)<<8)
	}
	return n, true
}

// decodeGroups decodes body, whole 4-character groups, into dst. It returns
// the decoded length, the OR of the pair values (badPair set if any
// character is outside the alphabet) and the OR of the characters (bit 7
// of a byte set if any is above 0x7f). It writes up to 2 bytes past the
// decoded length.
func decodeGroups(dst, body []byte) (n int, bad uint16, high uint64) {
	out := dst
	t := &pairTab
	// Four groups (16 characters in, 12 bytes out) per step.
	for len(body) >= 16 {
		x := binary.LittleEndian.Uint64(body)
		y := binary.LittleEndian.Uint64(body[8:])
		high |= x | y
		p0, p1, p2, p3 := t[uint16(x)&0x7f7f], t[uint16(x>>16)&0x7f7f], t[uint16(x>>32)&0x7f7f], t[uint16(x>>48)&0x7f7f]
		q0, q1, q2, q3 := t[uint16(y)&0x7f7f], t[uint16(y>>16)&0x7f7f], t[uint16(y>>32)&0x7f7f], t[uint16(y>>48)&0x7f7f]
		bad |= p0 | p1 | p2 | p3 | q0 | q1 | q2 | q3
		binary.BigEndian.PutUint64(out, uint64(p0)<<52|uint64(p1)<<40|uint64(p2)<<28|uint64(p3)<<16)
		binary.BigEndian.PutUint64(out[6:], uint64(q0)<<52|uint64(q1)<<40|uint64(q2)<<28|uint64(q3)<<16)
		body = body[16:]
		out = out[12:]
	}
	for len(body) >= 4 {
		x := binary.LittleEndian.Uint32(body)
		high |= uint64(x)
		p0, p1 := t[uint16(x)&0x7f7f], t[uint16(x>>16)&0x7f7f]
		bad |= p0 | p1
		binary.BigEndian.PutUint32(out, uint32(p0)<<20|uint32(p1)<<8)
		body = body[4:]
		out = out[3:]
	}
	return len(dst) - len(out), bad, high
}

// charVal returns the 6-bit value of one alphabet character.
func charVal(c byte) (uint16, bool) {
	v := pairTab[uint16(alphabet[0])|uint16(c&0x7f)<<8]
	return v, c < 0x80 && v&badPair == 0
}
