package indexkeys

import (
	"errors"
	"fmt"
	"strings"

	"github.com/gorm-envelope/envelope/dek"
)

var (
	// ErrNoKey reports a Store without a master keyring. It is
	// [dek.ErrNoKey], and so the root package's ErrNoKey.
	ErrNoKey = dek.ErrNoKey

	// ErrActive reports a refused [Store.Retire] of a name's active version
	// (its newest): values are hashed with it for writing, so it stays live
	// until a newer version is added.
	ErrActive = errors.New("envelope: the active version of a blind-index key cannot be retired")

	// ErrNoVersion reports a [Store.Retire] of a version that does not exist.
	ErrNoVersion = errors.New("envelope: no such blind-index key version")
)

// ActiveError is the error of a refused [Store.Retire] of an active
// version. It wraps [ErrActive].
type ActiveError struct {
	Name    string
	Version int
}

// Error names the index and the version.
func (e *ActiveError) Error() string {
	return fmt.Sprintf("envelope: blind-index key %q version %d is the active version and cannot be retired (add a newer version first)", e.Name, e.Version)
}

// Unwrap returns [ErrActive].
func (e *ActiveError) Unwrap() error { return ErrActive }

// OpenError reports a stored index key that could not be unwrapped. It
// names the index and the version, never the key or its stored bytes. Err
// wraps [dek.ErrDecrypt] when no key of the keyring opens it; another error
// (a KMS that could not be reached) is not proof of that, and does not.
type OpenError struct {
	Name    string
	Version int
	Err     error
}

// Error names the index and the version, then the reason. The keyring's
// reasons speak of DEKs, which an index key is wrapped as; here they speak
// of keys.
func (e *OpenError) Error() string {
	reason := strings.ReplaceAll(strings.TrimPrefix(e.Err.Error(), "envelope: "), "DEK", "key")
	return fmt.Sprintf("envelope: blind-index key %q version %d: %s", e.Name, e.Version, reason)
}

// Unwrap returns Err.
func (e *OpenError) Unwrap() error { return e.Err }
