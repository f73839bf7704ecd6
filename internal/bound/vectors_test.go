package bound

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
)

type vector struct {
	DEK          string  `json:"dek"`
	DEKHex       string  `json:"dek_hex"`
	KeyHex       string  `json:"key_hex"`
	Table        string  `json:"table"`
	Column       string  `json:"column"`
	Owner        string  `json:"owner"`
	Row          *string `json:"row"`
	AADHex       string  `json:"aad_hex"`
	NonceHex     string  `json:"nonce_hex"`
	PlaintextHex string  `json:"plaintext_hex"`
	RawHex       string  `json:"raw_hex"`
	Text         string  `json:"text"`
}

func (v *vector) context() *Context {
	ctx := &Context{Table: v.Table, Column: v.Column, Owner: v.Owner}
	if v.Row != nil {
		ctx.Row = *v.Row
	}
	return ctx
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	data, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Vectors []vector }
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("testdata/vectors.json: %v", err)
	}
	if len(doc.Vectors) == 0 {
		t.Fatal("testdata/vectors.json has no vectors")
	}
	return doc.Vectors
}

func unhex(t testing.TB, i int, name, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("#%d: %s: %v", i, name, err)
	}
	return b
}

// TestVectors checks each fixed vector at every stage: the DEK text, the
// derived key, the associated data, the raw value sealed with the vector's
// nonce, its text, and that both open to the plaintext.
func TestVectors(t *testing.T) {
	for i, v := range loadVectors(t) {
		dek := [DEKSize]byte(unhex(t, i, "dek_hex", v.DEKHex))
		if got, err := base64.URLEncoding.DecodeString(v.DEK); err != nil || !bytes.Equal(got, dek[:]) {
			t.Errorf("#%d: dek %q decodes to %x, %v; want %x", i, v.DEK, got, err, dek)
		}
		key, err := hkdf.Key(sha256.New, dek[:], nil, info, 32)
		if err != nil || hex.EncodeToString(key) != v.KeyHex {
			t.Errorf("#%d: key %x, %v; want %s", i, key, err, v.KeyHex)
		}
		ctx := v.context()
		if got := hex.EncodeToString(appendAAD(nil, ctx)); got != v.AADHex {
			t.Errorf("#%d: associated data\n got %s\nwant %s", i, got, v.AADHex)
		}
		pt := unhex(t, i, "plaintext_hex", v.PlaintextHex)
		nonce := unhex(t, i, "nonce_hex", v.NonceHex)
		raw := unhex(t, i, "raw_hex", v.RawHex)
		if got := newFixedNonce(t, dek).seal(nil, pt, ctx, nonce); !bytes.Equal(got, raw) {
			t.Errorf("#%d: sealed with the vector's nonce:\n got %x\nwant %x", i, got, raw)
		}
		if len(raw) != len(pt)+Overhead || raw[0] != Version || !bytes.Equal(raw[1:1+NonceSize], nonce) {
			t.Errorf("#%d: raw value of %d bytes, version %#x, nonce %x", i, len(raw), raw[0], raw[1:1+NonceSize])
		}
		if got := AppendText(nil, raw); string(got) != v.Text {
			t.Errorf("#%d: text\n got %s\nwant %s", i, got, v.Text)
		}
		if got, err := ParseText([]byte(v.Text)); err != nil || !bytes.Equal(got, raw) {
			t.Errorf("#%d: ParseText = %x, %v", i, got, err)
		}
		c := New(dek)
		if got := mustOpen(t, c, raw, ctx); !bytes.Equal(got, pt) {
			t.Errorf("#%d: Open = %x, want %x", i, got, pt)
		}
		if got, err := c.OpenText(nil, []byte(v.Text), ctx); err != nil || !bytes.Equal(got, pt) {
			t.Errorf("#%d: OpenText = %x, %v; want %x", i, got, err, pt)
		}
		if !IsBound(raw) || !IsBound([]byte(v.Text)) {
			t.Errorf("#%d: IsBound raw %v, text %v", i, IsBound(raw), IsBound([]byte(v.Text)))
		}
		other := *ctx
		other.Owner += "0"
		wantInvalid(t, c, raw, &other, "vector under another owner")
	}
}

// docs/format.md's worked example for bound values is the first vector.
func TestFormatDocExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/format.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Bound values\n")
	if ok {
		section, _, _ = strings.Cut(section, "\n## ")
		_, section, ok = strings.Cut(section, "### Worked example")
	}
	if !ok {
		t.Fatal("docs/format.md has no worked example of a bound value")
	}
	v := loadVectors(t)[0]
	dek := unhex(t, 0, "dek_hex", v.DEKHex)
	prk, _ := hkdf.Extract(sha256.New, dek, nil)
	raw := unhex(t, 0, "raw_hex", v.RawHex)
	spaced := func(b []byte, cuts ...int) string { // hex, a space before each cut
		var s strings.Builder
		last := 0
		for _, c := range append(cuts, len(b)) {
			if last > 0 {
				s.WriteString("` `")
			}
			s.WriteString(hex.EncodeToString(b[last:c]))
			last = c
		}
		return "`" + s.String() + "`"
	}
	ct, tag := raw[1+NonceSize:len(raw)-TagSize], raw[len(raw)-TagSize:]
	pt := unhex(t, 0, "plaintext_hex", v.PlaintextHex)
	for _, want := range []string{
		v.DEKHex, v.DEK, hex.EncodeToString([]byte(info)), hex.EncodeToString(prk), v.KeyHex,
		fmt.Sprintf("table `%s`, column `%s`, owner `%s`, no row", v.Table, v.Column, v.Owner),
		fmt.Sprintf("| aad | `81` `%02x %x` `%02x %x` `%02x %x` `00` |", len(v.Table), v.Table, len(v.Column), v.Column, len(v.Owner), v.Owner),
		"| nonce | `" + v.NonceHex + "` |", fmt.Sprintf("`%s` (`%x`, %d bytes)", pt, pt, len(pt)),
		"| ciphertext | `" + hex.EncodeToString(ct) + "` |", "| tag | `" + hex.EncodeToString(tag) + "` |",
		spaced(raw, 1, 1+NonceSize, len(raw)-TagSize) + fmt.Sprintf(" (%d bytes)", len(raw)),
		"| text | `" + v.Text + fmt.Sprintf("` (%d characters)", len(v.Text)),
	} {
		if !strings.Contains(section, want) {
			t.Errorf("the worked example in docs/format.md does not show %s", want)
		}
	}
	// And the second vector's tag, which the example quotes.
	v2 := loadVectors(t)[1]
	if !strings.Contains(section, v2.RawHex[len(v2.RawHex)-2*TagSize:]) {
		t.Error("the worked example does not show the second vector's tag")
	}
}
