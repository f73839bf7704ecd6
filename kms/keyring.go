package kms

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/gorm-envelope/envelope/dek"
)

// ParseKeyring returns a keyring of a primary master key and any previous
// ones, each either Fernet key text or a key URL ([IsURL]) opened with
// [Open]. Invalid Fernet text gives a *[dek.KeyError] naming which key; a
// URL that cannot be opened gives an error naming it by position and ID.
// Keys already opened are closed on failure.
//
// A KMS primary with a Fernet key as previous is how a deployment moves
// its master key from the environment into a KMS: see the package
// documentation.
func ParseKeyring(ctx context.Context, primary string, previous ...string) (*dek.Keyring, error) {
	entries := []entry{{"primary key", primary}}
	for i, s := range previous {
		entries = append(entries, entry{fmt.Sprintf("previous key %d", i+1), s})
	}
	return build(ctx, entries)
}

// KeyringFromEnv is [ParseKeyring] over the environment: the primary key
// from DEK_ENCRYPTION_KEY, previous keys from DEK_ENCRYPTION_KEY_PREVIOUS
// (comma-separated), each Fernet key text or a key URL. If
// DEK_ENCRYPTION_KEY is unset or empty it returns (nil, [dek.ErrNoKey]),
// as dek.KeyringFromEnv does.
func KeyringFromEnv(ctx context.Context) (*dek.Keyring, error) {
	return keyringFromLookup(ctx, os.LookupEnv)
}

func keyringFromLookup(ctx context.Context, lookup func(string) (string, bool)) (*dek.Keyring, error) {
	primary, _ := lookup(dek.EnvKey)
	primary = strings.TrimSpace(primary)
	if primary == "" {
		return nil, dek.ErrNoKey
	}
	entries := []entry{{dek.EnvKey, primary}}
	prev, _ := lookup(dek.EnvKeyPrevious)
	for i, s := range strings.Split(prev, ",") {
		if strings.TrimSpace(s) == "" {
			continue
		}
		entries = append(entries, entry{fmt.Sprintf("%s (entry %d)", dek.EnvKeyPrevious, i+1), s})
	}
	return build(ctx, entries)
}

type entry struct {
	source, text string
}

func build(ctx context.Context, entries []entry) (*dek.Keyring, error) {
	keys := make([]dek.Encrypter, 0, len(entries))
	fail := func(err error) (*dek.Keyring, error) {
		closeAll(keys)
		return nil, err
	}
	for _, e := range entries {
		text := strings.TrimSpace(e.text)
		if IsURL(text) {
			k, err := Open(ctx, text)
			if err != nil {
				return fail(fmt.Errorf("%s: %w", e.source, err))
			}
			keys = append(keys, k)
			continue
		}
		k, err := dek.ParseKey(text)
		if err != nil {
			var ke *dek.KeyError
			if errors.As(err, &ke) {
				err = &dek.KeyError{Source: e.source, Reason: ke.Reason}
			}
			return fail(err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, dek.ErrNoKey
	}
	r, err := dek.NewKeyring(keys[0], keys[1:]...)
	if err != nil {
		return fail(err)
	}
	return r, nil
}

// CloseKeyring closes every key of r that holds resources (the Keepers);
// Fernet keys have none. The keyring cannot be used after.
func CloseKeyring(r *dek.Keyring) error {
	if r == nil {
		return nil
	}
	return closeAll(r.Keys())
}

func closeAll(keys []dek.Encrypter) error {
	var errs []error
	for _, k := range keys {
		if c, ok := k.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}
