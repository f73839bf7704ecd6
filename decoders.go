package envelope

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/token"
)

// Importing values encrypted under one app-wide key: the decoders
// [Reseal] tries, through ResealOptions.From, on values that do not open
// under their owner's DEK.

// Decoder opens the stored values of an encryption scheme other than the
// plugin's, for [Reseal] to import them: Reseal seals what a Decoder
// returns under the owner's DEK and writes it in place of the old value.
//
// Decode returns ok false for a value that is not one of the scheme's (so
// that Reseal tries the next decoder), ok true and the plaintext for a
// value it opened, and ok true with an error for a value that is one of
// the scheme's but does not open (a wrong key, a tampered value): Reseal
// counts that value as unreadable and leaves it as it is. Decode must not
// keep stored or the plaintext, and must be safe for concurrent use. Its
// errors must never contain a key, the stored value or plaintext: Reseal
// may log them.
type Decoder interface {
	Decode(stored []byte) (plain []byte, ok bool, err error)
}

// errImportNotOpened is what a decoder reports for a value of its scheme
// that its key does not open.
var errImportNotOpened = fmt.Errorf("%w: value does not open under the import key", ErrDecrypt)

// fernetDecoder opens Fernet tokens under one key.
type fernetDecoder struct{ c *token.Cipher }

// Decode opens stored if it is a Fernet token text.
func (d fernetDecoder) Decode(stored []byte) ([]byte, bool, error) {
	if !token.LooksLike(stored) {
		return nil, false, nil
	}
	plain, err := d.c.Decrypt(stored)
	if err != nil {
		return nil, true, errImportNotOpened
	}
	return plain, true, nil
}

// FernetDecoder returns a [Decoder] of Fernet tokens under one app-wide
// Fernet key (44 characters of URL-safe base64, as Python's
// Fernet.generate_key returns it): values that an app encrypted under a
// single key, with Python's cryptography package or any Fernet library.
// A key that is not a Fernet key gives a *[dek.KeyError]
// (errors.Is [dek.ErrInvalidKey]), which does not hold the key.
func FernetDecoder(key string) (Decoder, error) {
	k, err := fernetKey("FernetDecoder key", key)
	if err != nil {
		return nil, err
	}
	d := fernetDecoder{token.New(k)}
	clear(k[:])
	return d, nil
}

func fernetKey(source, text string) ([token.KeySize]byte, error) {
	var k [token.KeySize]byte
	text = strings.TrimSpace(text)
	if len(text) != dek.KeyTextLen {
		return k, &dek.KeyError{Source: source, Reason: fmt.Sprintf("want %d characters of URL-safe base64, got %d characters", dek.KeyTextLen, len(text))}
	}
	n, err := base64.URLEncoding.Decode(k[:], []byte(text))
	if err != nil || n != token.KeySize {
		clear(k[:])
		return k, &dek.KeyError{Source: source, Reason: "not URL-safe base64 of 32 bytes"}
	}
	return k, nil
}

// tomHKDFInfo is the HKDF info (domain separator) of TOM Toolkit 3's
// field encryption key.
const tomHKDFInfo = "tom-toolkit-encryption-v1"

// TOMToolkitDecoder returns a [Decoder] of the values TOM Toolkit 3
// encrypts (its EncryptedProperty fields: facility passwords, API keys),
// for an app moving them to per-owner DEKs. TOM derives one Fernet key for
// the whole site from Django's SECRET_KEY:
//
//	key = urlsafe_b64encode(HKDF(SHA-256, IKM = utf8(SECRET_KEY), salt = None,
//	                             info = b"tom-toolkit-encryption-v1", length = 32))
//
// and stores Fernet(key).encrypt(utf8(value)), as bytes. Python's HKDF
// with salt None uses a salt of 32 zero bytes, as RFC 5869 and Go's
// crypto/hkdf do for an empty salt. This follows _derive_fernet_key and
// encrypt in tom_common/encryption.py of github.com/TOMToolkit/tom_base
// at commit 3e85ba4aaef14cf284759642da81927bf33fd5fb.
//
// TOM decrypts with SECRET_KEY, then each of SECRET_KEY_FALLBACKS: give
// Reseal one decoder per secret, in that order. An empty secretKey is an
// error (Django refuses to start with one); the error does not hold it.
func TOMToolkitDecoder(secretKey string) (Decoder, error) {
	if secretKey == "" {
		return nil, errors.New("envelope: TOMToolkitDecoder: the SECRET_KEY is empty")
	}
	raw, err := hkdf.Key(sha256.New, []byte(secretKey), nil, tomHKDFInfo, token.KeySize)
	if err != nil {
		return nil, fmt.Errorf("envelope: TOMToolkitDecoder: derive the key: %w", err)
	}
	// TOM hands Fernet the key's base64 text, which decodes to these bytes.
	var k [token.KeySize]byte
	copy(k[:], raw)
	clear(raw)
	d := fernetDecoder{token.New(k)}
	clear(k[:])
	return d, nil
}
