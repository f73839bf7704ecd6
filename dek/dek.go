// Package dek holds the key hierarchy of gorm-envelope: master keys, the
// keyring that names which master key is primary, and the per-owner data
// encryption keys (DEKs) that master keys encrypt.
//
// Both master keys and DEKs are Fernet keys: 32 random bytes, written as 44
// characters of URL-safe base64. A DEK is stored encrypted under the primary
// master key, bound to its profile row ([Keyring.SealBound]): what the master
// key encrypts names the profile table and the owner, so a DEK copied into
// another owner's row does not open there. The legacy layout, the Fernet
// token of the DEK's own 44-character text as TOM Toolkit stores it, is
// still read ([Keyring.OpenBound]) and written by [Keyring.Seal]. Both
// layouts are in docs/format.md.
package dek

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/gorm-envelope/envelope/internal/token"
)

// Environment variables read by [KeyringFromEnv].
const (
	EnvKey         = "DEK_ENCRYPTION_KEY"
	EnvKeyPrevious = "DEK_ENCRYPTION_KEY_PREVIOUS"
)

// KeyTextLen is the length of a Fernet key's text: URL-safe base64 of 32 bytes.
const KeyTextLen = 44

var (
	// ErrNoKey reports that no master key is configured.
	ErrNoKey = errors.New("envelope: no master key configured (set DEK_ENCRYPTION_KEY; see docs/key-management.md)")
	// ErrDecrypt reports a value or DEK that no configured key opens: wrong
	// key, tampered or truncated data, or data that is not a token.
	ErrDecrypt = errors.New("envelope: cannot decrypt")
	// ErrInvalidKey reports key text that is not a Fernet key.
	ErrInvalidKey = errors.New("envelope: invalid key")
)

// KeyError reports invalid key text. It names where the key came from and
// what is wrong with it, never the key itself.
type KeyError struct {
	Source string // e.g. "DEK_ENCRYPTION_KEY" or "previous key 2"
	Reason string
}

func (e *KeyError) Error() string {
	return "envelope: invalid key in " + e.Source + ": " + e.Reason + " (see docs/key-management.md)"
}

// Unwrap returns [ErrInvalidKey].
func (e *KeyError) Unwrap() error { return ErrInvalidKey }

// Encrypter encrypts and decrypts DEKs under one master key: a Fernet key
// here, or a key held in a KMS. Implementations must be safe for concurrent
// use and must return an error wrapping [ErrDecrypt] for ciphertext they
// cannot open. Errors must never contain key material or plaintext.
type Encrypter interface {
	Encrypt(ctx context.Context, plaintext []byte) ([]byte, error)
	Decrypt(ctx context.Context, ciphertext []byte) ([]byte, error)
}

// GenerateKey returns a new random master key in Fernet text form.
func GenerateKey() (string, error) {
	var k [token.KeySize]byte
	if _, err := rand.Read(k[:]); err != nil {
		return "", fmt.Errorf("envelope: generate key: %w", err)
	}
	return base64.URLEncoding.EncodeToString(k[:]), nil
}

func decodeKeyText(source, s string) ([token.KeySize]byte, error) {
	var k [token.KeySize]byte
	s = strings.TrimSpace(s)
	if len(s) != KeyTextLen {
		return k, &KeyError{Source: source, Reason: fmt.Sprintf("want %d characters of URL-safe base64, got %d characters", KeyTextLen, len(s))}
	}
	n, err := base64.URLEncoding.Decode(k[:], []byte(s))
	if err != nil || n != token.KeySize {
		return k, &KeyError{Source: source, Reason: "not URL-safe base64 of 32 bytes"}
	}
	return k, nil
}

// FernetKey is a master key held in process memory. Its String method
// prints a fingerprint, never the key.
type FernetKey struct {
	c  *token.Cipher
	id string
}

// ParseKey parses a master key in Fernet text form (44 characters of
// URL-safe base64). An invalid key gives a *[KeyError].
func ParseKey(text string) (*FernetKey, error) {
	return parseKey("key", text)
}

func parseKey(source, text string) (*FernetKey, error) {
	k, err := decodeKeyText(source, text)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(k[:])
	return &FernetKey{c: token.New(k), id: "fernet:" + hex.EncodeToString(sum[:4])}, nil
}

// Encrypt returns the Fernet token of plaintext under the key.
func (k *FernetKey) Encrypt(_ context.Context, plaintext []byte) ([]byte, error) {
	return k.c.Encrypt(plaintext)
}

// Decrypt opens a Fernet token made under the key.
func (k *FernetKey) Decrypt(_ context.Context, ciphertext []byte) ([]byte, error) {
	msg, err := k.c.Decrypt(ciphertext)
	if err != nil {
		return nil, ErrDecrypt
	}
	return msg, nil
}

// ID returns a short fingerprint of the key, safe to log: the first four
// bytes of its SHA-256, in hex.
func (k *FernetKey) ID() string { return k.id }

// String returns the key's fingerprint, never the key.
func (k *FernetKey) String() string { return "dek.FernetKey(" + k.id + ")" }

// GoString is String, so %#v does not print the key either.
func (k *FernetKey) GoString() string { return k.String() }

// KeyID returns a printable identity for an Encrypter: its ID method if it
// has one, otherwise its type.
func KeyID(e Encrypter) string {
	if i, ok := e.(interface{ ID() string }); ok {
		return i.ID()
	}
	return fmt.Sprintf("%T", e)
}
