package dek

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Keyring is an ordered set of master keys: the primary encrypts new DEKs;
// every key, primary first, is tried to decrypt. A nil *Keyring means "no
// key configured".
type Keyring struct {
	keys []Encrypter
}

// NewKeyring returns a keyring with primary for encryption and previous
// keys accepted for decryption.
func NewKeyring(primary Encrypter, previous ...Encrypter) (*Keyring, error) {
	if primary == nil {
		return nil, ErrNoKey
	}
	keys := append([]Encrypter{primary}, previous...)
	for i, k := range keys {
		if k == nil {
			return nil, fmt.Errorf("envelope: keyring: key %d is nil", i)
		}
	}
	return &Keyring{keys: keys}, nil
}

// ParseKeyring parses a primary master key and any previous ones, all in
// Fernet text form. Invalid text gives a *[KeyError] naming which key.
func ParseKeyring(primary string, previous ...string) (*Keyring, error) {
	p, err := parseKey("primary key", primary)
	if err != nil {
		return nil, err
	}
	keys := []Encrypter{p}
	for i, s := range previous {
		k, err := parseKey(fmt.Sprintf("previous key %d", i+1), s)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return &Keyring{keys: keys}, nil
}

// KeyringFromEnv reads the primary master key from DEK_ENCRYPTION_KEY and
// previous keys from DEK_ENCRYPTION_KEY_PREVIOUS (comma-separated). If
// DEK_ENCRYPTION_KEY is unset or empty it returns (nil, [ErrNoKey]); a nil
// keyring is legal in the plugin's Config and makes encrypted fields fail
// with ErrNoKey while the rest of the app works.
func KeyringFromEnv() (*Keyring, error) {
	return keyringFromLookup(os.LookupEnv)
}

func keyringFromLookup(lookup func(string) (string, bool)) (*Keyring, error) {
	primary, _ := lookup(EnvKey)
	primary = strings.TrimSpace(primary)
	if primary == "" {
		return nil, ErrNoKey
	}
	p, err := parseKey(EnvKey, primary)
	if err != nil {
		return nil, err
	}
	keys := []Encrypter{p}
	prev, _ := lookup(EnvKeyPrevious)
	for i, s := range strings.Split(prev, ",") {
		if strings.TrimSpace(s) == "" {
			continue
		}
		k, err := parseKey(fmt.Sprintf("%s (entry %d)", EnvKeyPrevious, i+1), s)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return &Keyring{keys: keys}, nil
}

// Primary returns the key that encrypts new DEKs.
func (r *Keyring) Primary() Encrypter { return r.keys[0] }

// Keys returns all keys, primary first. The slice is a copy.
func (r *Keyring) Keys() []Encrypter { return append([]Encrypter(nil), r.keys...) }

// Len returns the number of keys, primary included.
func (r *Keyring) Len() int { return len(r.keys) }

// Seal encrypts d under the primary key, in TOM Toolkit's layout: the token
// of the DEK's 44-character text, bound to nothing. Profile DEKs are sealed
// with [Keyring.SealBound]; Seal is for keys that belong to no profile row
// (the blind-index keys) and for writing TOM Toolkit's layout.
func (r *Keyring) Seal(ctx context.Context, d DEK) ([]byte, error) {
	text := d.text()
	out, err := r.keys[0].Encrypt(ctx, text[:])
	clear(text[:])
	if err != nil {
		return nil, fmt.Errorf("envelope: encrypt DEK: %w", err)
	}
	return out, nil
}

// Open decrypts an encrypted DEK in the legacy layout ([Keyring.Seal]'s)
// with the first key that opens it and returns the DEK and that key's
// index (0 is the primary). If no key opens it, the error wraps
// [ErrDecrypt]. A bound DEK ([Keyring.SealBound]) is refused with
// ErrDecrypt too: it opens only with its binding, through
// [Keyring.OpenBound].
func (r *Keyring) Open(ctx context.Context, encrypted []byte) (DEK, int, error) {
	text, idx, err := r.decrypt(ctx, encrypted)
	if err != nil {
		return DEK{}, -1, err
	}
	defer clear(text)
	if isBound(text) {
		return DEK{}, -1, errBoundNeedsBinding
	}
	d, err := parseDEKText(text)
	if err != nil {
		return DEK{}, -1, err
	}
	return d, idx, nil
}

var errBoundNeedsBinding = fmt.Errorf("%w: DEK is bound to a profile row and opens only with its binding", ErrDecrypt)

// decrypt returns the plaintext of an encrypted DEK under the first key
// that opens it, and that key's index. The caller clears the plaintext.
func (r *Keyring) decrypt(ctx context.Context, encrypted []byte) ([]byte, int, error) {
	var firstErr error
	for i, k := range r.keys {
		pt, err := k.Decrypt(ctx, encrypted)
		if err != nil {
			if !errors.Is(err, ErrDecrypt) && firstErr == nil {
				firstErr = err
			}
			continue
		}
		return pt, i, nil
	}
	if firstErr != nil {
		// A key could not be asked (a KMS outage, a timeout): that is not
		// proof that no key opens the DEK, so it is not ErrDecrypt.
		return nil, -1, fmt.Errorf("envelope: open DEK: %w", firstErr)
	}
	return nil, -1, fmt.Errorf("%w: no configured master key opens this DEK", ErrDecrypt)
}
