// Package token implements the Fernet token format used for both DEKs and
// field values: base64url(0x80 | timestamp | IV | AES-128-CBC(PKCS7(msg)) | HMAC-SHA256).
//
// A Cipher holds the state prepared from one 32-byte Fernet key and is safe
// for concurrent use.
package token

import (
	"errors"
	"time"

	"github.com/fernet/fernet-go"
)

// KeySize is the size of a raw Fernet key: 16 bytes of HMAC key, 16 of AES key.
const KeySize = 32

// MinLen is the length of the shortest token text: an empty message still
// has one block of padding (1+8+16+16+32 = 73 bytes, 100 base64 characters).
const MinLen = 100

// ErrInvalid is returned for any token that does not verify under the key:
// wrong key, tampered, truncated, or not a token at all.
var ErrInvalid = errors.New("invalid token")

// Cipher encrypts and decrypts Fernet tokens under one key.
type Cipher struct {
	key  fernet.Key
	keys []*fernet.Key
}

// New prepares a Cipher for key.
func New(key [KeySize]byte) *Cipher {
	c := &Cipher{key: fernet.Key(key)}
	c.keys = []*fernet.Key{&c.key}
	return c
}

// Encrypt returns the token text for msg.
func (c *Cipher) Encrypt(msg []byte) ([]byte, error) {
	return fernet.EncryptAndSign(msg, &c.key)
}

// EncryptAt returns the token text for msg with the given timestamp.
func (c *Cipher) EncryptAt(msg []byte, at time.Time) ([]byte, error) {
	return fernet.EncryptAndSignAtTime(msg, &c.key, at)
}

// Decrypt verifies tok and returns its message, or ErrInvalid.
// An empty message decrypts to a non-nil empty slice.
func (c *Cipher) Decrypt(tok []byte) ([]byte, error) {
	if len(tok) < MinLen {
		return nil, ErrInvalid
	}
	msg := fernet.VerifyAndDecrypt(tok, 0, c.keys)
	if msg == nil {
		return nil, ErrInvalid
	}
	return msg, nil
}

// LooksLike reports whether b has the shape of a Fernet token text: the
// version byte and a plausible length. It says nothing about validity.
func LooksLike(b []byte) bool {
	return len(b) >= MinLen && len(b)%4 == 0 && b[0] == 'g' && b[1] == 'A'
}

// LooksLikeString is LooksLike for a string, without copying.
func LooksLikeString(s string) bool {
	return len(s) >= MinLen && len(s)%4 == 0 && s[0] == 'g' && s[1] == 'A'
}
