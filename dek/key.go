package dek

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"

	"github.com/gorm-envelope/envelope/internal/token"
)

// DEK is a data encryption key: the raw 32 bytes of a Fernet key. Printing
// a DEK with fmt shows a placeholder, never the key.
type DEK [token.KeySize]byte

// NewDEK returns a new random DEK.
func NewDEK() (DEK, error) {
	var d DEK
	if _, err := rand.Read(d[:]); err != nil {
		return d, fmt.Errorf("envelope: generate DEK: %w", err)
	}
	return d, nil
}

// String returns a placeholder, so a DEK never reaches a log by accident.
func (DEK) String() string { return "dek.DEK(redacted)" }

// GoString is String.
func (d DEK) GoString() string { return d.String() }

// Format implements fmt.Formatter so that every verb prints the placeholder.
func (d DEK) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(d.String())) }

func (d DEK) text() [KeyTextLen]byte {
	var out [KeyTextLen]byte
	base64.URLEncoding.Encode(out[:], d[:])
	return out
}

func parseDEKText(text []byte) (DEK, error) {
	var d DEK
	if len(text) != KeyTextLen {
		return d, fmt.Errorf("%w: decrypted DEK is not a Fernet key", ErrDecrypt)
	}
	n, err := base64.URLEncoding.Decode(d[:], text)
	if err != nil || n != token.KeySize {
		return DEK{}, fmt.Errorf("%w: decrypted DEK is not a Fernet key", ErrDecrypt)
	}
	return d, nil
}

// tombstone is what a shredded DEK's column holds: a value no key opens and
// no code path replaces, so the owner's data stays unreadable for good.
const tombstone = "envelope:shredded"

// Tombstone returns the value stored in place of a shredded DEK.
func Tombstone() []byte { return []byte(tombstone) }

// IsTombstone reports whether an encrypted_dek value marks a shredded DEK.
func IsTombstone(encrypted []byte) bool { return string(encrypted) == tombstone }
