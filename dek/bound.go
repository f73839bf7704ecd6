package dek

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/gorm-envelope/envelope/internal/token"
)

// Owner-bound DEKs. Neither a Fernet master key nor a KMS keeper takes
// associated data, so the binding goes inside what the master key
// encrypts: a versioned header, the profile table and the owner, then the
// DEK's raw bytes (docs/format.md, "Owner-bound DEKs").

// Binding names the profile row a DEK belongs to: the profile table, and
// the owner as text (an integer owner in decimal, a string owner as it
// is). Both must be non-empty and at most 65,535 bytes long.
type Binding struct {
	Table string
	Owner string
}

// maxBindingLen is the longest Table or Owner a Binding may have, in
// bytes: each is written after a two-byte length.
const maxBindingLen = 1<<16 - 1

// ErrBoundElsewhere reports a DEK whose binding is not the one it was
// opened with: it was sealed for another profile row (another owner, or
// another profile table) and copied. It wraps [ErrDecrypt].
var ErrBoundElsewhere = fmt.Errorf("%w: DEK is bound to another profile row", ErrDecrypt)

// boundMagic starts the plaintext of a bound DEK. Its first byte, 0x00,
// is never a character of URL-safe base64, so no legacy plaintext (the
// 44-character text of the DEK) begins with it.
const boundMagic = "\x00DEK"

// boundV1 is the version byte of the layout below.
const boundV1 = 0x01

// boundHeaderLen is the magic and the version byte.
const boundHeaderLen = len(boundMagic) + 1

func (b Binding) check() error {
	switch {
	case b.Table == "" || b.Owner == "":
		return errors.New("envelope: DEK binding needs a profile table and an owner")
	case len(b.Table) > maxBindingLen || len(b.Owner) > maxBindingLen:
		return fmt.Errorf("envelope: DEK binding: profile table or owner longer than %d bytes", maxBindingLen)
	}
	return nil
}

// boundPlaintext is what the master key encrypts for a bound DEK:
//
//	"\x00DEK" 0x01 | len(table) uint16 BE | table | len(owner) uint16 BE | owner | DEK (32 bytes)
func boundPlaintext(d DEK, b Binding) []byte {
	out := make([]byte, 0, boundHeaderLen+2+len(b.Table)+2+len(b.Owner)+token.KeySize)
	out = append(out, boundMagic...)
	out = append(out, boundV1)
	out = binary.BigEndian.AppendUint16(out, uint16(len(b.Table)))
	out = append(out, b.Table...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(b.Owner)))
	out = append(out, b.Owner...)
	return append(out, d[:]...)
}

// isBound reports whether a decrypted plaintext is in the bound layout
// (of any version), rather than the legacy 44-character text.
func isBound(pt []byte) bool {
	return len(pt) >= len(boundMagic) && string(pt[:len(boundMagic)]) == boundMagic
}

var errBadBound = fmt.Errorf("%w: decrypted DEK is not in a known layout", ErrDecrypt)

// parseBound splits a bound plaintext into its binding and DEK. The
// binding's strings share no memory with pt, which the caller clears.
func parseBound(pt []byte) (DEK, Binding, error) {
	var d DEK
	if !isBound(pt) || len(pt) < boundHeaderLen || pt[len(boundMagic)] != boundV1 {
		return d, Binding{}, errBadBound
	}
	rest := pt[boundHeaderLen:]
	field := func() (string, bool) {
		if len(rest) < 2 {
			return "", false
		}
		n := int(binary.BigEndian.Uint16(rest))
		if n == 0 || len(rest) < 2+n {
			return "", false
		}
		s := string(rest[2 : 2+n])
		rest = rest[2+n:]
		return s, true
	}
	table, ok1 := field()
	owner, ok2 := field()
	if !ok1 || !ok2 || len(rest) != token.KeySize {
		return d, Binding{}, errBadBound
	}
	copy(d[:], rest)
	return d, Binding{Table: table, Owner: owner}, nil
}

// SealBound encrypts d under the primary key, bound to the profile row b:
// [Keyring.OpenBound] opens it only with the same binding. This is the
// form the plugin and rotations store; docs/format.md gives the layout.
func (r *Keyring) SealBound(ctx context.Context, d DEK, b Binding) ([]byte, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	pt := boundPlaintext(d, b)
	out, err := r.keys[0].Encrypt(ctx, pt)
	clear(pt)
	if err != nil {
		return nil, fmt.Errorf("envelope: encrypt DEK: %w", err)
	}
	return out, nil
}

// OpenBound decrypts an encrypted DEK stored in the profile row b, with
// the first key that opens it, and returns the DEK, that key's index (0 is
// the primary) and whether it was bound. It opens both layouts:
//
//   - a bound DEK ([Keyring.SealBound]) whose binding is exactly b
//     (bound is true); one bound to anything else gives an error wrapping
//     [ErrBoundElsewhere] and [ErrDecrypt];
//   - a legacy DEK, the token of the DEK's 44-character text as TOM
//     Toolkit and [Keyring.Seal] write it (bound is false). It carries no
//     binding, so it opens whatever b is.
//
// If no key opens it, the error wraps [ErrDecrypt]. Errors name neither
// the binding nor any bytes.
func (r *Keyring) OpenBound(ctx context.Context, encrypted []byte, b Binding) (d DEK, keyIndex int, bound bool, err error) {
	if err := b.check(); err != nil {
		return DEK{}, -1, false, err
	}
	pt, idx, err := r.decrypt(ctx, encrypted)
	if err != nil {
		return DEK{}, -1, false, err
	}
	defer clear(pt)
	if !isBound(pt) {
		d, err := parseDEKText(pt)
		if err != nil {
			return DEK{}, -1, false, err
		}
		return d, idx, false, nil
	}
	d, got, err := parseBound(pt)
	if err != nil {
		return DEK{}, -1, false, err
	}
	if got != b {
		clear(d[:])
		return DEK{}, -1, false, ErrBoundElsewhere
	}
	return d, idx, true, nil
}
