package b64

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"testing"
)

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// sizes is every length 0..300, and some past 4 KiB.
func sizes() []int {
	s := make([]int, 0, 305)
	for n := 0; n <= 300; n++ {
		s = append(s, n)
	}
	return append(s, 4096, 4169, 4170, 4171)
}

// forms are the two codecs, each beside encoding/base64's strict one.
var forms = []struct {
	name   string
	std    *base64.Encoding
	encLen func(int) int
	encode func(dst, src []byte)
	decode func(dst, src []byte) (int, bool)
}{
	{"padded", base64.URLEncoding.Strict(), EncodedLen, Encode, Decode},
	{"raw", base64.RawURLEncoding.Strict(), RawEncodedLen, RawEncode, RawDecode},
}

// TestCodec compares each encoder and decoder with encoding/base64 on
// every length up to 300 and past 4 KiB.
func TestCodec(t *testing.T) {
	for _, f := range forms {
		for _, n := range sizes() {
			raw := randBytes(t, n)
			want := f.std.EncodeToString(raw)
			if f.encLen(n) != len(want) {
				t.Fatalf("%s: encoded length of %d bytes: %d, want %d", f.name, n, f.encLen(n), len(want))
			}
			enc := make([]byte, f.encLen(n))
			f.encode(enc, raw)
			if string(enc) != want {
				t.Fatalf("%s: encode %d bytes:\n got %s\nwant %s", f.name, n, enc, want)
			}
			dst := make([]byte, DecodeBuf(len(want)))
			m, ok := f.decode(dst, []byte(want))
			if n == 0 {
				if ok {
					t.Fatalf("%s: empty text decoded", f.name)
				}
				continue
			}
			if !ok || !bytes.Equal(dst[:m], raw) {
				t.Fatalf("%s: decode %d bytes: ok=%v got %x", f.name, n, ok, dst[:m])
			}
		}
	}
}

// check compares a decoder with encoding/base64's strict one, which
// differs only in skipping '\r' and '\n' (and in accepting the empty text).
func check(t *testing.T, name string, std *base64.Encoding, decode func(dst, src []byte) (int, bool), src []byte) {
	t.Helper()
	want, err := std.DecodeString(string(src))
	wantOK := err == nil && len(src) > 0 && !bytes.ContainsAny(src, "\r\n")
	dst := make([]byte, DecodeBuf(len(src)))
	n, ok := decode(dst, src)
	if ok != wantOK || ok && !bytes.Equal(dst[:n], want) {
		t.Fatalf("%s: decode(%q) = %x, %v; encoding/base64: %x, %v", name, src, dst[:n], ok, want, err)
	}
}

// TestStrict puts every byte value at every position of texts of a few
// lengths, short and long (past the decoder's four-group steps), and
// compares with encoding/base64; then cuts, pads and unpads them.
func TestStrict(t *testing.T) {
	for _, f := range forms {
		for _, n := range []int{1, 2, 3, 4, 5, 12, 13, 14, 200, 301, 302} {
			text := []byte(f.std.EncodeToString(randBytes(t, n)))
			for i := range text {
				for ch := range 256 {
					bad := bytes.Clone(text)
					bad[i] = byte(ch)
					check(t, f.name, f.std, f.decode, bad)
				}
			}
			for _, v := range [][]byte{
				text[:len(text)-1], append(bytes.Clone(text), '='), append(bytes.Clone(text), "=="...),
				bytes.TrimRight(text, "="), append(bytes.Clone(text), 'A'), append(bytes.Clone(text), "\n"...),
			} {
				check(t, fmt.Sprintf("%s, %d bytes", f.name, n), f.std, f.decode, v)
			}
		}
	}
}

func fuzzSeeds(f *testing.F) {
	for _, s := range []string{"gAAAAABrCTs8BxApIXNf", "AA==", "AAA=", "AB==", "AAB=", "AA", "AAA", "AB", "AAB", "A\nA==", "A\nA", "////++++", "gQABAgMEBQYHCAkKC3Cx0V_GUmd_peqkFvv8hHNxmv0uQcpqNPJIoKk-Mkj1UA"} {
		f.Add([]byte(s))
	}
	long := []byte(base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb, 0xef, 0x00}, 120)))
	f.Add(long)
	f.Add(long[:len(long)-1])
	f.Add(append(bytes.Clone(long[:200]), append([]byte("\n\n\n\n"), long[200:]...)...))
}

func FuzzDecode(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, src []byte) { check(t, "padded", forms[0].std, Decode, src) })
}

func FuzzRawDecode(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, src []byte) { check(t, "raw", forms[1].std, RawDecode, src) })
}
