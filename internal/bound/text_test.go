package bound

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope/internal/b64"
	"github.com/gorm-envelope/envelope/internal/token"
)

// TestTextForm: the text is unpadded URL-safe base64 of the raw value, as
// encoding/base64 writes it.
func TestTextForm(t *testing.T) {
	c := New(randDEK(t))
	for n := range 40 {
		raw := mustSeal(t, c, randBytes(t, n), &testCtx)
		text := AppendText(nil, raw)
		if want := base64.RawURLEncoding.EncodeToString(raw); string(text) != want {
			t.Fatalf("size %d:\n got %s\nwant %s", n, text, want)
		}
		if strings.ContainsAny(string(text), "=+/") {
			t.Fatalf("size %d: text %s has padding or the standard alphabet", n, text)
		}
	}
}

// TestTextStrict: texts that a lenient decoder would read as a value's are
// refused, by ParseText and by OpenText.
func TestTextStrict(t *testing.T) {
	c := New(randDEK(t))
	for n := range 6 { // raw lengths n+29: every remainder mod 3, twice
		pt := randBytes(t, n)
		raw := mustSeal(t, c, pt, &testCtx)
		text := string(AppendText(nil, raw))
		if got, err := c.OpenText(nil, []byte(text), &testCtx); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("size %d: the text itself: %v", n, err)
		}
		std := base64.RawStdEncoding.EncodeToString(raw)
		var bad []string
		if pad := base64.URLEncoding.EncodeToString(raw); pad != text {
			bad = append(bad, pad) // padded
		}
		bad = append(bad, text+"=", text+"==", text+"====")
		if std != text {
			bad = append(bad, std) // '+' or '/' for '-' or '_'
		}
		for i := range len(text) {
			switch text[i] {
			case '-':
				bad = append(bad, text[:i]+"+"+text[i+1:])
			case '_':
				bad = append(bad, text[:i]+"/"+text[i+1:])
			}
		}
		for _, ws := range []string{" ", "\t", "\n", "\r", "\r\n", "\v", "\f", "\u00a0"} {
			bad = append(bad, ws+text, text+ws, text[:20]+ws+text[20:], text[:4]+ws+text[4:])
		}
		// The same bytes with the unused low bits of the last character
		// set: a lenient decoder reads them as the same value.
		if unused := map[int]int{2: 4, 3: 2}[len(text)%4]; unused > 0 {
			last := strings.IndexByte(b64.Alphabet, text[len(text)-1])
			for v := 1; v < 1<<unused; v++ {
				ch := b64.Alphabet[last|v]
				alt := text[:len(text)-1] + string(ch)
				if dec, err := base64.RawURLEncoding.DecodeString(alt); err != nil || !bytes.Equal(dec, raw) {
					t.Fatalf("size %d: %q does not decode leniently to the value", n, alt)
				}
				bad = append(bad, alt)
			}
		} else if len(text)%4 != 0 {
			t.Fatalf("size %d: text of %d characters", n, len(text))
		}
		for _, b := range bad {
			if got, err := ParseText([]byte(b)); err != ErrInvalid || got != nil {
				t.Errorf("size %d: ParseText(%q) = %x, %v; want nil, ErrInvalid", n, b, got, err)
			}
			wantInvalidText(t, c, []byte(b), &testCtx, fmt.Sprintf("size %d: %q", n, b))
		}
	}
}

// TestParseTextShape: ParseText refuses canonical base64 of what is not a
// raw value: too short, or another first byte.
func TestParseTextShape(t *testing.T) {
	c := New(randDEK(t))
	raw := mustSeal(t, c, nil, &testCtx)
	if _, err := ParseText(AppendText(nil, raw)); err != nil {
		t.Fatalf("shortest value: %v", err)
	}
	if _, err := ParseText(AppendText(nil, raw[:Overhead-1])); err != ErrInvalid {
		t.Errorf("%d bytes: %v, want ErrInvalid", Overhead-1, err)
	}
	for _, v := range []byte{0, 0x80, 0x82, 0xff} {
		other := bytes.Clone(raw)
		other[0] = v
		if _, err := ParseText(AppendText(nil, other)); err != ErrInvalid {
			t.Errorf("first byte %#x: %v, want ErrInvalid", v, err)
		}
	}
	if _, err := ParseText(nil); err != ErrInvalid {
		t.Errorf("empty text: %v, want ErrInvalid", err)
	}
}

// TestIsBound: both forms of a value are bound; Fernet tokens, their
// bytes, plaintexts and short or malformed input are not.
func TestIsBound(t *testing.T) {
	c := New(randDEK(t))
	fernet := token.New(randDEK(t))
	for n := range 100 {
		pt := randBytes(t, n)
		raw := mustSeal(t, c, pt, &testCtx)
		text := AppendText(nil, raw)
		if !IsBound(raw) || !IsBound(text) {
			t.Fatalf("size %d: IsBound raw %v, text %v", n, IsBound(raw), IsBound(text))
		}
		if token.LooksLike(text) {
			t.Fatalf("size %d: token.LooksLike(%s) = true", n, text)
		}
		tok, err := fernet.Encrypt(pt)
		if err != nil {
			t.Fatal(err)
		}
		if IsBound(tok) {
			t.Fatalf("size %d: IsBound(Fernet token %s) = true", n, tok)
		}
		if rawTok, _ := base64.URLEncoding.DecodeString(string(tok)); IsBound(rawTok) {
			t.Fatalf("size %d: IsBound(Fernet token bytes) = true", n)
		}
		// The two formats do not open as each other.
		if _, err := fernet.Decrypt(text); err != token.ErrInvalid {
			t.Fatalf("size %d: Fernet Decrypt of a bound text: %v", n, err)
		}
		wantInvalidText(t, c, tok, &testCtx, "a Fernet token")
	}
	raw := mustSeal(t, c, nil, &testCtx)
	text := AppendText(nil, raw)
	for _, tc := range []struct {
		b    string
		want bool
	}{
		{string(raw[:Overhead-1]), false},
		{string(text[:minText-1]), false},
		{string(text) + "A", true}, // shape only, not validity
		{string(text) + "AA", false},
		{"", false},
		{"g", false},
		{"\x81", false},
		{"gQ" + strings.Repeat("A", 40), true},
		{"gf" + strings.Repeat("A", 40), true},
		{"gP" + strings.Repeat("A", 40), false}, // 0x80: Fernet
		{"gg" + strings.Repeat("A", 40), false},
		{"hQ" + strings.Repeat("A", 40), false},
		{"g=" + strings.Repeat("A", 40), false},
		{"password that is long enough to be a bound value's text", false},
	} {
		if got := IsBound([]byte(tc.b)); got != tc.want {
			t.Errorf("IsBound(%.30q) = %v, want %v", tc.b, got, tc.want)
		}
	}
}

// TestIsBoundFirstQuantum: for every first two characters, IsBound's answer
// on the text is what decoding the first quantum says.
func TestIsBoundFirstQuantum(t *testing.T) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	bound := 0
	for c0 := range 256 {
		for c1 := range 256 {
			text := append([]byte{byte(c0), byte(c1)}, strings.Repeat("A", 38)...)
			q, err := base64.RawURLEncoding.DecodeString(string(text[:4]))
			want := err == nil && strings.IndexByte(alphabet, byte(c0)) >= 0 && strings.IndexByte(alphabet, byte(c1)) >= 0 && q[0] == Version
			if c0 == int(Version) {
				want = true // the raw form
			}
			if got := IsBound(text); got != want {
				t.Fatalf("IsBound(%q...) = %v, want %v", text[:4], got, want)
			}
			if want && c0 == 'g' {
				bound++
			}
		}
	}
	if bound != 16 {
		t.Fatalf("%d second characters after 'g' say bound, want 16 ('Q' to 'Z', 'a' to 'f')", bound)
	}
}

// TestSmallerThanFernet: a 32-byte value's text is at least 30% shorter
// than its Fernet token's text, and its raw form shorter still.
func TestSmallerThanFernet(t *testing.T) {
	const n = 32
	pt := randBytes(t, n)
	text := mustSealText(t, New(randDEK(t)), pt, &testCtx)
	raw := mustSeal(t, New(randDEK(t)), pt, &testCtx)
	tok, err := token.New(randDEK(t)).Encrypt(pt)
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) != token.EncryptedLen(n) || len(text) != TextLen(n+Overhead) {
		t.Fatalf("lengths: token %d (EncryptedLen %d), text %d (TextLen %d)", len(tok), token.EncryptedLen(n), len(text), TextLen(n+Overhead))
	}
	saved := 1 - float64(len(text))/float64(len(tok))
	t.Logf("32-byte value: Fernet text %d bytes; bound text %d (%.0f%% smaller), raw %d (%.0f%% smaller)",
		len(tok), len(text), 100*saved, len(raw), 100*(1-float64(len(raw))/float64(len(tok))))
	if saved < 0.30 {
		t.Fatalf("bound text %d bytes is only %.1f%% smaller than Fernet's %d", len(text), 100*saved, len(tok))
	}
	if len(raw) >= len(text) {
		t.Fatalf("raw value %d bytes is not shorter than its text %d", len(raw), len(text))
	}
}
