package dek

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// The worked example of docs/format.md ("Owner-bound DEKs"), made with
// Python's cryptography: Fernet(master)._encrypt_from_parts(plaintext,
// 1767225600, bytes(range(0x40, 0x50))).
const (
	exampleMaster    = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
	exampleDEK       = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	examplePlaintext = "0044454b01000870726f66696c657300023432000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	exampleToken     = "gAAAAABpVbkAQEFCQ0RFRkdISUpLTE1OT3V19Avia10jdIn7mPgwhC8iGW5p6Lc7kUa_HmCuxk527ptrbpGmlvfgOOFyg97LXmWNXVtclwLwvFF0EA3WKmjFHuCD4mS85zTwUov32Z-HF9reGLwKK0kJrqW4yC02uA=="
)

var exampleBinding = Binding{Table: "profiles", Owner: "42"}

func TestBoundWorkedExample(t *testing.T) {
	ctx := context.Background()
	r, err := ParseKeyring(exampleMaster)
	if err != nil {
		t.Fatal(err)
	}
	var want DEK
	if _, err := base64.URLEncoding.Decode(want[:], []byte(exampleDEK)); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(boundPlaintext(want, exampleBinding)); got != examplePlaintext {
		t.Fatalf("plaintext:\n got %s\nwant %s", got, examplePlaintext)
	}
	d, idx, bound, err := r.OpenBound(ctx, []byte(exampleToken), exampleBinding)
	if err != nil || idx != 0 || !bound || d != want {
		t.Fatalf("Python's token: idx %d, bound %v, same DEK %v, %v", idx, bound, d == want, err)
	}
	if _, _, _, err := r.OpenBound(ctx, []byte(exampleToken), Binding{Table: "profiles", Owner: "43"}); !errors.Is(err, ErrBoundElsewhere) {
		t.Fatalf("owner 43: %v, want ErrBoundElsewhere", err)
	}
}

// What SealBound encrypts is the layout of docs/format.md, byte by byte.
func TestSealBoundLayout(t *testing.T) {
	ctx := context.Background()
	k, _ := GenerateKey()
	r, _ := ParseKeyring(k)
	d, _ := NewDEK()
	for i, b := range []Binding{
		{Table: "profiles", Owner: "1"},
		{Table: "app.user_profiles", Owner: "-9223372036854775808"},
		{Table: "profiles", Owner: "ada@example.org ☃"},
		{Table: "t", Owner: strings.Repeat("o", maxBindingLen)},
	} {
		enc, err := r.SealBound(ctx, d, b)
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		pt, err := r.Primary().Decrypt(ctx, enc)
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		want := []byte{0x00, 'D', 'E', 'K', 0x01}
		want = binary.BigEndian.AppendUint16(want, uint16(len(b.Table)))
		want = append(want, b.Table...)
		want = binary.BigEndian.AppendUint16(want, uint16(len(b.Owner)))
		want = append(want, b.Owner...)
		want = append(want, d[:]...)
		if !bytes.Equal(pt, want) {
			t.Fatalf("#%d: plaintext %x, want %x", i, pt[:min(len(pt), 64)], want[:min(len(want), 64)])
		}
		if len(pt) == KeyTextLen || bytes.Contains(pt, []byte(base64.URLEncoding.EncodeToString(d[:]))) {
			t.Fatalf("#%d: the plaintext holds the DEK's text", i)
		}
		got, idx, bound, err := r.OpenBound(ctx, enc, b)
		if err != nil || got != d || idx != 0 || !bound {
			t.Fatalf("#%d: OpenBound: idx %d, bound %v, same %v, %v", i, idx, bound, got == d, err)
		}
	}
}

// A bound DEK opens with its own binding only; the error for another one
// names neither binding.
func TestOpenBoundOtherRow(t *testing.T) {
	ctx := context.Background()
	k, _ := GenerateKey()
	r, _ := ParseKeyring(k)
	d, _ := NewDEK()
	b := Binding{Table: "profiles", Owner: "12"}
	enc, err := r.SealBound(ctx, d, b)
	if err != nil {
		t.Fatal(err)
	}
	for i, other := range []Binding{
		{Table: "profiles", Owner: "1"},
		{Table: "profiles", Owner: "120"},
		{Table: "profiles", Owner: "12 "},
		{Table: "profile", Owner: "12"},
		{Table: "Profiles", Owner: "12"},
		{Table: "other_profiles", Owner: "12"},
		// The fields are length-prefixed: moving bytes from one to the
		// other makes another binding.
		{Table: "profiles1", Owner: "2"},
	} {
		got, idx, bound, err := r.OpenBound(ctx, enc, other)
		if !errors.Is(err, ErrBoundElsewhere) || !errors.Is(err, ErrDecrypt) || got != (DEK{}) || idx != -1 || bound {
			t.Errorf("#%d %+v: got idx %d, bound %v, %v; want ErrBoundElsewhere", i, other, idx, bound, err)
			continue
		}
		if !strings.Contains(err.Error(), "bound to another profile row") {
			t.Errorf("#%d: error %q does not say why", i, err)
		}
		for _, s := range []string{other.Owner, b.Owner, string(enc), base64.URLEncoding.EncodeToString(d[:]), hex.EncodeToString(d[:])} {
			if strings.Contains(err.Error(), s) {
				t.Errorf("#%d: error %q holds %q", i, err, s)
			}
		}
	}
	if _, _, err := r.Open(ctx, enc); !errors.Is(err, ErrDecrypt) || errors.Is(err, ErrBoundElsewhere) {
		t.Fatalf("Open of a bound DEK: %v, want ErrDecrypt (it needs its binding)", err)
	}
}

// The legacy layout (TOM Toolkit's, Seal's) opens through OpenBound for
// any binding, and says it was not bound.
func TestOpenBoundLegacy(t *testing.T) {
	ctx := context.Background()
	oldK, _ := GenerateKey()
	newK, _ := GenerateKey()
	old, _ := ParseKeyring(oldK)
	both, _ := ParseKeyring(newK, oldK)
	d, _ := NewDEK()
	legacy, err := old.Seal(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range []Binding{{"profiles", "1"}, {"profiles", "2"}, {"elsewhere", "x"}} {
		got, idx, bound, err := both.OpenBound(ctx, legacy, b)
		if err != nil || got != d || idx != 1 || bound {
			t.Fatalf("#%d: idx %d, bound %v, same %v, %v", i, idx, bound, got == d, err)
		}
	}
	// Sealed bound under the new primary: opened by key 0, not by the old ring.
	enc, _ := both.SealBound(ctx, d, Binding{"profiles", "1"})
	if _, idx, bound, err := both.OpenBound(ctx, enc, Binding{"profiles", "1"}); err != nil || idx != 0 || !bound {
		t.Fatalf("primary: idx %d, bound %v, %v", idx, bound, err)
	}
	if _, _, _, err := old.OpenBound(ctx, enc, Binding{"profiles", "1"}); !errors.Is(err, ErrDecrypt) || errors.Is(err, ErrBoundElsewhere) {
		t.Fatalf("old keyring: %v, want ErrDecrypt", err)
	}
	if _, _, _, err := both.OpenBound(ctx, Tombstone(), Binding{"profiles", "1"}); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("tombstone: %v", err)
	}
}

// Plaintexts under the master key that are neither layout, or a broken
// bound one, fail with ErrDecrypt, not as another row's DEK.
func TestOpenBoundMalformed(t *testing.T) {
	ctx := context.Background()
	k, _ := GenerateKey()
	r, _ := ParseKeyring(k)
	d, _ := NewDEK()
	b := Binding{Table: "profiles", Owner: "7"}
	good := boundPlaintext(d, b)
	withVersion := func(v byte) []byte { p := bytes.Clone(good); p[4] = v; return p }
	zeroTable := append([]byte("\x00DEK\x01\x00\x00\x00\x017"), d[:]...)
	longLen := bytes.Clone(good)
	longLen[5], longLen[6] = 0xff, 0xff
	for i, pt := range [][]byte{
		good[:len(good)-1],
		append(bytes.Clone(good), 0),
		good[:5],
		[]byte("\x00DEK"),
		withVersion(0x00),
		withVersion(0x02),
		zeroTable,
		longLen,
		[]byte("\x00" + base64.URLEncoding.EncodeToString(d[:])[1:]),
		[]byte(base64.URLEncoding.EncodeToString(d[:31])),
		{},
	} {
		enc, err := r.Primary().Encrypt(ctx, pt)
		if err != nil {
			t.Fatal(err)
		}
		got, _, bound, err := r.OpenBound(ctx, enc, b)
		if !errors.Is(err, ErrDecrypt) || errors.Is(err, ErrBoundElsewhere) || got != (DEK{}) || bound {
			t.Errorf("#%d: got bound %v, %v; want ErrDecrypt", i, bound, err)
		}
		if _, _, err := r.Open(ctx, enc); !errors.Is(err, ErrDecrypt) {
			t.Errorf("#%d: Open: %v, want ErrDecrypt", i, err)
		}
	}
}

// A binding without a table or an owner, or too long to write, is refused
// before any key is used: it is a caller's mistake, not a DEK that does
// not open.
func TestBindingRefused(t *testing.T) {
	ctx := context.Background()
	k, _ := GenerateKey()
	r, _ := ParseKeyring(k)
	d, _ := NewDEK()
	enc, _ := r.SealBound(ctx, d, Binding{"profiles", "1"})
	long := strings.Repeat("x", maxBindingLen+1)
	for i, b := range []Binding{{}, {Table: "profiles"}, {Owner: "1"}, {Table: long, Owner: "1"}, {Table: "profiles", Owner: long}} {
		if out, err := r.SealBound(ctx, d, b); err == nil || out != nil || errors.Is(err, ErrDecrypt) {
			t.Errorf("#%d: SealBound: %v", i, err)
		}
		if _, _, _, err := r.OpenBound(ctx, enc, b); err == nil || errors.Is(err, ErrDecrypt) {
			t.Errorf("#%d: OpenBound: %v", i, err)
		} else if len(b.Owner) > 1 && strings.Contains(err.Error(), b.Owner) {
			t.Errorf("#%d: error holds the owner", i)
		}
	}
}

// A key that cannot be asked is reported as such by OpenBound too.
func TestOpenBoundReportsUnavailableKey(t *testing.T) {
	k, _ := GenerateKey()
	fk, _ := ParseKey(k)
	other, _ := ParseKeyring(k)
	d, _ := NewDEK()
	b := Binding{"profiles", "1"}
	sealed, _ := other.SealBound(context.Background(), d, b)
	r, _ := NewKeyring(unavailable{})
	if _, _, _, err := r.OpenBound(context.Background(), sealed, b); err == nil || errors.Is(err, ErrDecrypt) {
		t.Fatalf("got %v, want the key's own error", err)
	}
	if _, err := r.SealBound(context.Background(), d, b); err == nil || !strings.Contains(err.Error(), "kms unavailable") {
		t.Fatalf("SealBound: %v", err)
	}
	r, _ = NewKeyring(unavailable{}, fk)
	if got, idx, bound, err := r.OpenBound(context.Background(), sealed, b); err != nil || got != d || idx != 1 || !bound {
		t.Fatalf("second key: idx %d, %v", idx, err)
	}
}
