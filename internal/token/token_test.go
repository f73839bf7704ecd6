package token

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fernet/fernet-go"
)

// crossSizes is every message size 0..300 plus 4 KiB.
func crossSizes() []int {
	sizes := make([]int, 0, 302)
	for n := 0; n <= 300; n++ {
		sizes = append(sizes, n)
	}
	return append(sizes, 4096)
}

// TestFernetGoReadsOurs: fernet-go decrypts what Encrypt and EncryptAt make.
func TestFernetGoReadsOurs(t *testing.T) {
	key := randKey(t)
	c := New(key)
	for _, n := range crossSizes() {
		msg := randBytes(t, n)
		tok, err := c.Encrypt(msg)
		if err != nil {
			t.Fatal(err)
		}
		if got := fernetDecrypt(key, tok); !bytes.Equal(got, msg) {
			t.Fatalf("size %d: fernet-go decrypts Encrypt's token to %x, want %x", n, got, msg)
		}
		tok, err = c.EncryptAt(msg, time.Unix(1700000000+int64(n), 0))
		if err != nil {
			t.Fatal(err)
		}
		if got := fernetDecrypt(key, tok); !bytes.Equal(got, msg) {
			t.Fatalf("size %d: fernet-go decrypts EncryptAt's token to %x, want %x", n, got, msg)
		}
	}
}

// TestWeReadFernetGo: Decrypt opens what fernet-go makes.
func TestWeReadFernetGo(t *testing.T) {
	key := randKey(t)
	fk := fernet.Key(key)
	c := New(key)
	for _, n := range crossSizes() {
		msg := randBytes(t, n)
		tok, err := fernet.EncryptAndSign(msg, &fk)
		if err != nil {
			t.Fatal(err)
		}
		got := mustDecrypt(t, c, tok)
		if !bytes.Equal(got, msg) || got == nil {
			t.Fatalf("size %d: got %x, want %x", n, got, msg)
		}
	}
}

// TestTokenLayout checks the token text against the spec field by field:
// padded URL-safe base64, version, timestamp, lengths, and the MAC.
func TestTokenLayout(t *testing.T) {
	key := randKey(t)
	c := New(key)
	at := time.Unix(1767225600, 999999999) // sub-second part is dropped
	for _, n := range []int{0, 1, 15, 16, 17, 100, 4096} {
		tok, err := c.EncryptAt(randBytes(t, n), at)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := base64.URLEncoding.Strict().DecodeString(string(tok))
		if err != nil {
			t.Fatalf("size %d: token text is not padded base64url: %v", n, err)
		}
		if want := 1 + 8 + 16 + (n/16+1)*16 + 32; len(raw) != want {
			t.Fatalf("size %d: %d token bytes, want %d", n, len(raw), want)
		}
		if raw[0] != 0x80 {
			t.Fatalf("size %d: version %#x", n, raw[0])
		}
		if ts := binary.BigEndian.Uint64(raw[1:9]); ts != uint64(at.Unix()) {
			t.Fatalf("size %d: timestamp %d, want %d", n, ts, at.Unix())
		}
		if len(tok) < MinLen || !LooksLike(tok) || !LooksLikeString(string(tok)) {
			t.Fatalf("size %d: len %d, LooksLike false", n, len(tok))
		}
	}
	// Encrypt stamps the current time.
	before := time.Now().Unix()
	tok, err := c.Encrypt([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now().Unix()
	raw, _ := base64.URLEncoding.DecodeString(string(tok))
	if ts := int64(binary.BigEndian.Uint64(raw[1:9])); ts < before || ts > after {
		t.Fatalf("Encrypt timestamp %d not in [%d, %d]", ts, before, after)
	}
}

// TestFreshIV: encrypting the same message twice gives different tokens.
func TestFreshIV(t *testing.T) {
	c := New(randKey(t))
	seen := map[string]bool{}
	for range 100 {
		tok, err := c.EncryptAt([]byte("same"), time.Unix(1, 0))
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(tok)] {
			t.Fatal("two tokens for the same message and time are identical")
		}
		seen[string(tok)] = true
	}
}

func TestEmptyMessage(t *testing.T) {
	c := New(randKey(t))
	for _, msg := range [][]byte{nil, {}} {
		tok, err := c.Encrypt(msg)
		if err != nil {
			t.Fatal(err)
		}
		if len(tok) != MinLen {
			t.Errorf("empty message token has %d characters, want MinLen = %d", len(tok), MinLen)
		}
		got := mustDecrypt(t, c, tok)
		if got == nil || len(got) != 0 {
			t.Fatalf("empty message decrypts to %#v, want non-nil empty slice", got)
		}
	}
}

// TestDecryptLeavesInputAlone: Decrypt neither modifies nor aliases tok.
func TestDecryptLeavesInputAlone(t *testing.T) {
	c := New(randKey(t))
	msg := randBytes(t, 100)
	tok, _ := c.Encrypt(msg)
	orig := bytes.Clone(tok)
	got := mustDecrypt(t, c, tok)
	if !bytes.Equal(tok, orig) {
		t.Fatal("Decrypt modified its input")
	}
	for i := range got {
		got[i] ^= 0xff
	}
	if !bytes.Equal(tok, orig) {
		t.Fatal("Decrypt's result aliases its input")
	}
	if again := mustDecrypt(t, c, tok); !bytes.Equal(again, msg) {
		t.Fatal("second Decrypt of the same token differs")
	}
}

// TestBitFlips flips every bit of a token's bytes (and re-encodes), and
// every character of its text: each must give ErrInvalid, never a panic or
// a different plaintext.
func TestBitFlips(t *testing.T) {
	c := New(randKey(t))
	for _, n := range []int{0, 7, 16, 42} {
		msg := randBytes(t, n)
		tok, err := c.Encrypt(msg)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := base64.URLEncoding.DecodeString(string(tok))
		if err != nil {
			t.Fatal(err)
		}
		for i := range raw {
			for bit := range 8 {
				bad := bytes.Clone(raw)
				bad[i] ^= 1 << bit
				wantInvalid(t, c, []byte(base64.URLEncoding.EncodeToString(bad)),
					fmt.Sprintf("size %d, byte %d bit %d flipped", n, i, bit))
			}
		}
		for i := range tok {
			for _, ch := range []byte{'A', 'B', '-', '_', '=', '+', '/', '!', 0, 0x80, 0xff} {
				if tok[i] == ch {
					continue
				}
				bad := bytes.Clone(tok)
				bad[i] = ch
				what := fmt.Sprintf("size %d, char %d set to %q", n, i, ch)
				if sameBytes(bad, raw) {
					// Only unused bits changed: a lenient decoder may
					// accept it, but never with another plaintext.
					if got, err := c.Decrypt(bad); err != ErrInvalid && !bytes.Equal(got, msg) {
						t.Fatalf("%s: Decrypt = %q, %v", what, got, err)
					}
					continue
				}
				wantInvalid(t, c, bad, what)
			}
		}
	}
}

// TestTruncations: every proper prefix of the text, and of the bytes
// (re-encoded), is rejected; so are bytes appended to the token bytes.
func TestTruncations(t *testing.T) {
	c := New(randKey(t))
	for _, n := range []int{0, 5, 16, 40, 300} {
		tok, _ := c.Encrypt(randBytes(t, n))
		for k := range len(tok) {
			wantInvalid(t, c, tok[:k], fmt.Sprintf("size %d, text cut to %d", n, k))
		}
		raw, _ := base64.URLEncoding.DecodeString(string(tok))
		for k := range len(raw) {
			wantInvalid(t, c, []byte(base64.URLEncoding.EncodeToString(raw[:k])),
				fmt.Sprintf("size %d, bytes cut to %d", n, k))
		}
		for _, extra := range [][]byte{{0}, {1, 2, 3}, bytes.Repeat([]byte{0x10}, 16)} {
			long := append(bytes.Clone(raw), extra...)
			wantInvalid(t, c, []byte(base64.URLEncoding.EncodeToString(long)),
				fmt.Sprintf("size %d, %d bytes appended", n, len(extra)))
		}
	}
}

// sameBytes reports whether text decodes, leniently, to raw.
func sameBytes(text, raw []byte) bool {
	b, err := base64.URLEncoding.DecodeString(string(text))
	return err == nil && bytes.Equal(b, raw)
}

func TestGarbage(t *testing.T) {
	c := New(randKey(t))
	for _, s := range []string{
		"", "gA", "not a token",
		string(bytes.Repeat([]byte("A"), 100)),
		string(bytes.Repeat([]byte("="), 100)),
		"gAAAAA" + string(bytes.Repeat([]byte("A"), 94)),
		"gAAAAA" + string(bytes.Repeat([]byte("_"), 1000)) + "==",
	} {
		wantInvalid(t, c, []byte(s), fmt.Sprintf("%.20q", s))
	}
	for n := range 300 {
		wantInvalid(t, c, randBytes(t, n), fmt.Sprintf("%d random bytes", n))
		wantInvalid(t, c, []byte(base64.URLEncoding.EncodeToString(randBytes(t, n))),
			fmt.Sprintf("%d random bytes as base64", n))
	}
}

func TestLooksLike(t *testing.T) {
	c := New(randKey(t))
	tok, _ := c.Encrypt([]byte("hello"))
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{string(tok), true},
		{string(tok[:MinLen-4]), false},
		{string(tok[:len(tok)-1]), false},
		{string(tok) + "AAAA", true}, // shape only, not validity
		{string(tok) + "A", false},
		{"hA" + string(tok[2:]), false},
		{"gB" + string(tok[2:]), false},
		{"", false},
		{"g", false},
	} {
		if got := LooksLike([]byte(tc.s)); got != tc.want {
			t.Errorf("LooksLike(%.30q) = %v", tc.s, got)
		}
		if got := LooksLikeString(tc.s); got != tc.want {
			t.Errorf("LooksLikeString(%.30q) = %v", tc.s, got)
		}
	}
}

// TestConcurrentUse shares one Cipher between goroutines that encrypt and
// decrypt their own messages and shared tokens; run with -race.
func TestConcurrentUse(t *testing.T) {
	c := New(randKey(t))
	other := New(randKey(t))
	shared := make([][]byte, 8)
	sharedTok := make([][]byte, 8)
	for i := range shared {
		shared[i] = randBytes(t, i*37)
		sharedTok[i], _ = c.Encrypt(shared[i])
	}
	foreign, _ := other.Encrypt([]byte("not yours"))

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				msg := []byte(fmt.Sprintf("goroutine %d message %d %s", g, i, bytes.Repeat([]byte{'x'}, i%70)))
				tok, err := c.Encrypt(msg)
				if err != nil {
					t.Error(err)
					return
				}
				got, err := c.Decrypt(tok)
				if err != nil || !bytes.Equal(got, msg) {
					t.Errorf("goroutine %d: round trip %d: %q, %v", g, i, got, err)
					return
				}
				k := (g + i) % len(shared)
				got, err = c.Decrypt(sharedTok[k])
				if err != nil || !bytes.Equal(got, shared[k]) {
					t.Errorf("goroutine %d: shared token %d: %v", g, k, err)
					return
				}
				if _, err := c.Decrypt(foreign); err != ErrInvalid {
					t.Errorf("goroutine %d: foreign token: %v", g, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
