package envelope

import (
	"errors"
	"fmt"
	"strings"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
)

var (
	// ErrNoKey reports that no master key is configured: Config.Keys is nil.
	// It is the same error as [dek.ErrNoKey].
	ErrNoKey = dek.ErrNoKey

	// ErrNoOwner reports that the owner of an encrypted value cannot be
	// determined: the model has no field tagged envelope:"owner", the owner
	// is zero, or one statement would need more than one owner's key for a
	// single value.
	ErrNoOwner = errors.New("envelope: owner of an encrypted value cannot be determined")

	// ErrDecrypt reports a value that the owner's DEK does not open: wrong
	// key, tampered or truncated token, a token of another owner, or a value
	// that is not a token. It is the same error as [dek.ErrDecrypt].
	ErrDecrypt = dek.ErrDecrypt

	// ErrShredded reports that the owner's DEK was destroyed by [Shred]: the
	// owner's encrypted data is unreadable for good.
	ErrShredded = errors.New("envelope: owner's DEK was shredded")

	// ErrConflict reports that concurrent first writes for an owner
	// conflicted inside a transaction (a deadlock or serialization failure
	// reported by the database while the plugin created or read a DEK, or a
	// snapshot that cannot see another transaction's new DEK). The
	// transaction has been aborted by the database or must be: retry it.
	// It is the same error as keystore's, which the plugin's own DEK steps
	// return.
	ErrConflict = keystore.ErrConflict

	// ErrDuplicate reports a write that would give two rows one value of a
	// unique blind index: the value is taken. errors.Is(err,
	// gorm.ErrDuplicatedKey) holds too. The error names the model and
	// field, never the value.
	ErrDuplicate = fmt.Errorf("envelope: value already taken (unique blind index): %w", gorm.ErrDuplicatedKey)

	// ErrUnsafe reports an operation refused because it would send or store
	// plaintext in an encrypted column, or could never work on encrypted
	// values (such as comparing them in a WHERE clause).
	ErrUnsafe = errors.New("envelope: unsafe operation on an encrypted field")
)

// FieldError reports one encrypted value that could not be written or read.
// It names the model, the field and the owner, never key material or
// plaintext. Use errors.Is with [ErrDecrypt], [ErrShredded], [ErrNoKey],
// [ErrNoOwner] or [ErrUnsafe] to tell the kinds apart.
type FieldError struct {
	Model string // Go type name of the model, e.g. "Credential"
	Field string // Go field name, e.g. "Password"
	Owner any    // owner ID, nil when unknown
	Err   error
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString("envelope: ")
	b.WriteString(e.Model)
	if e.Field != "" {
		b.WriteString(".")
		b.WriteString(e.Field)
	}
	if e.Owner != nil {
		fmt.Fprintf(&b, " (owner %v)", e.Owner)
	}
	b.WriteString(": ")
	b.WriteString(strings.TrimPrefix(e.Err.Error(), "envelope: "))
	return b.String()
}

// Unwrap returns the underlying error.
func (e *FieldError) Unwrap() error { return e.Err }

// errorList is the one error a statement adds: GORM keeps only the last of
// several added errors for errors.Is, so every kind goes into one value.
type errorList []error

const maxListed = 3

func (l errorList) Error() string {
	var b strings.Builder
	for i, err := range l {
		if i == maxListed {
			fmt.Fprintf(&b, "; and %d more", len(l)-maxListed)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

func (l errorList) Unwrap() []error { return l }

// join returns nil, the single error, or an errorList.
func join(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return errorList(errs)
}
