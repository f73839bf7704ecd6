package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fernet/fernet-go"
	"github.com/gorm-envelope/envelope/internal/b64"
)

// TestSameBytesAsFernetGo: for fernet-go's timestamp and IV, EncryptAt's
// construction produces the identical token text.
func TestSameBytesAsFernetGo(t *testing.T) {
	key := randKey(t)
	fk := fernet.Key(key)
	c := New(key)
	for _, n := range crossSizes() {
		msg := randBytes(t, n)
		at := time.Unix(1600000000+int64(n)*7919, 0)
		want, err := fernet.EncryptAndSignAtTime(msg, &fk, at)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := base64.URLEncoding.DecodeString(string(want))
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.EncryptIV(msg, at.Unix(), (*[16]byte)(raw[9:25]))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("size %d:\n got %s\nwant %s", n, got, want)
		}
		if EncryptedLen(n) != len(want) {
			t.Fatalf("size %d: EncryptedLen %d, token %d", n, EncryptedLen(n), len(want))
		}
		// Appending keeps what dst held and adds the same token text, also
		// when dst must grow.
		for _, dst := range [][]byte{nil, []byte("prefix"), make([]byte, 3, 3+len(want))} {
			head := string(dst)
			out, err := c.AppendEncryptIV(dst, msg, at.Unix(), (*[16]byte)(raw[9:25]))
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != head+string(want) {
				t.Fatalf("size %d: appended to %q:\n got %s\nwant %s%s", n, head, out, head, want)
			}
		}
	}
}

// TestStrictText: token text that only a lenient decoder accepts is
// rejected: line breaks, data after the padding, missing padding, the
// standard alphabet, and set bits after the last byte.
func TestStrictText(t *testing.T) {
	c := New(randKey(t))
	for _, n := range []int{0, 1, 16, 32} { // 73, 73, 89, 105 bytes
		tok, _ := c.Encrypt(randBytes(t, n))
		mustDecrypt(t, c, tok)
		pad := bytes.Count(tok, []byte("="))
		cases := map[string][]byte{
			"newline inside":   append(append(bytes.Clone(tok[:40]), '\n'), tok[40:]...),
			"CRLF at end":      append(bytes.Clone(tok), "\r\n"...),
			"4 chars appended": append(bytes.Clone(tok), "AAAA"...),
			"= appended":       append(bytes.Clone(tok), "===="...),
			"space appended":   append(bytes.Clone(tok), ' '),
		}
		if pad > 0 {
			cases["padding removed"] = bytes.TrimRight(tok, "=")
			// The character before the padding carries unused bits.
			i := len(tok) - pad - 1
			bad := bytes.Clone(tok)
			bad[i] = b64.Alphabet[(strings.IndexByte(b64.Alphabet, tok[i])+1)%64]
			cases["unused bits set"] = bad
		}
		std := bytes.Map(func(r rune) rune {
			switch r {
			case '-':
				return '+'
			case '_':
				return '/'
			}
			return r
		}, tok)
		if !bytes.Equal(std, tok) {
			cases["standard alphabet"] = std
		}
		for what, bad := range cases {
			wantInvalid(t, c, bad, fmt.Sprintf("size %d: %s", n, what))
		}
	}
}

// forge builds a token with a valid MAC around body, which is encrypted
// as is (no padding added) when it is whole blocks and left as is
// otherwise, to reach the checks behind the MAC.
func forge(key [KeySize]byte, ver byte, body []byte) []byte {
	raw := []byte{ver, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint64(raw[1:], uint64(time.Now().Unix()))
	iv := bytes.Repeat([]byte{7}, 16)
	raw = append(raw, iv...)
	ct := bytes.Clone(body)
	if len(ct)%16 == 0 {
		blk, _ := aes.NewCipher(key[16:])
		cipher.NewCBCEncrypter(blk, iv).CryptBlocks(ct, ct)
	}
	raw = append(raw, ct...)
	m := hmac.New(sha256.New, key[:16])
	m.Write(raw)
	raw = m.Sum(raw)
	return []byte(base64.URLEncoding.EncodeToString(raw))
}

// TestAuthenticatedButMalformed: tokens whose MAC is valid but whose
// structure is not are rejected, never decrypted or panicking.
func TestAuthenticatedButMalformed(t *testing.T) {
	key := randKey(t)
	c := New(key)
	block := func(b byte, pad ...byte) []byte { return append(bytes.Repeat([]byte{b}, 16-len(pad)), pad...) }

	// Sanity: forge makes tokens Decrypt accepts when they are well formed.
	if got := mustDecrypt(t, c, forge(key, 0x80, append([]byte("abc"), bytes.Repeat([]byte{13}, 13)...))); string(got) != "abc" {
		t.Fatalf("forged valid token: %q", got)
	}
	if got := mustDecrypt(t, c, forge(key, 0x80, append(block('x'), bytes.Repeat([]byte{16}, 16)...))); !bytes.Equal(got, block('x')) {
		t.Fatalf("forged full-block padding: %q", got)
	}

	cases := map[string][]byte{
		"version 0x81":           forge(key, 0x81, block('a', 1)),
		"version 0x00":           forge(key, 0x00, block('a', 1)),
		"no ciphertext":          forge(key, 0x80, nil),
		"ciphertext of 8 bytes":  forge(key, 0x80, make([]byte, 8)),
		"ciphertext of 24 bytes": forge(key, 0x80, make([]byte, 24)),
		// Decrypting only the whole blocks of these would leave a last
		// byte of ct[32]^ct[16] = 1: valid padding.
		"ciphertext of 33 bytes": forge(key, 0x80, append(make([]byte, 32), 1)),
		"padding byte 0":         forge(key, 0x80, block('a', 0)),
		"padding byte 17":        forge(key, 0x80, append(block('a', 17), bytes.Repeat([]byte{17}, 16)...)),
		"padding byte 255":       forge(key, 0x80, bytes.Repeat([]byte{255}, 32)),
		"padding bytes unequal":  forge(key, 0x80, block('a', 2, 3, 3)),
	}
	for what, tok := range cases {
		wantInvalid(t, c, tok, what)
	}
	// With garbage after it, a token without ciphertext reaches MinLen.
	wantInvalid(t, c, append(forge(key, 0x80, nil), "!!!!!!!!!!!!!!!!!!!!!!!!"...), "no ciphertext, garbage after")
}

func TestAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	c := New(randKey(t))
	for _, n := range []int{0, 32, 4096} {
		msg := randBytes(t, n)
		tok, _ := c.Encrypt(msg)
		if a := testing.AllocsPerRun(200, func() { c.Decrypt(tok) }); a > 1 {
			t.Errorf("Decrypt of %d bytes: %v allocations, want 1", n, a)
		}
		if a := testing.AllocsPerRun(200, func() { c.Encrypt(msg) }); a > 1 {
			t.Errorf("Encrypt of %d bytes: %v allocations, want 1", n, a)
		}
		bad := bytes.Clone(tok)
		bad[len(bad)/2] ^= 1
		if a := testing.AllocsPerRun(200, func() { c.Decrypt(bad) }); a > 0 {
			t.Errorf("Decrypt of a bad token: %v allocations, want 0", a)
		}
	}
}

// AppendDecrypt appends each message after what dst holds, within
// DecryptedLen of room, and leaves dst as it was for a bad token.
func TestAppendDecrypt(t *testing.T) {
	c := New(randKey(t))
	var toks [][]byte
	var msgs [][]byte
	room := 0
	for _, n := range crossSizes() {
		msg := randBytes(t, n)
		tok, err := c.Encrypt(msg)
		if err != nil {
			t.Fatal(err)
		}
		toks, msgs = append(toks, tok), append(msgs, msg)
		room += DecryptedLen(len(tok))
	}
	buf := make([]byte, 0, room)
	base := &buf[:1][0]
	for i, tok := range toks {
		start := len(buf)
		var err error
		if buf, err = c.AppendDecrypt(buf, tok); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[start:], msgs[i]) {
			t.Fatalf("message %d: got %x", i, buf[start:])
		}
	}
	if &buf[:1][0] != base {
		t.Fatal("the buffer grew although DecryptedLen left room")
	}
	bad := bytes.Clone(toks[3])
	bad[len(bad)-5] ^= 1
	before := len(buf)
	out, err := c.AppendDecrypt(buf, bad)
	if err == nil || len(out) != before {
		t.Fatalf("bad token: err %v, len %d -> %d", err, before, len(out))
	}
}
