package keystore

// A Key: one owner's DEK as the store serves it, and the names and
// helpers the store keys its caches and errors by.

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/blind"
	"github.com/gorm-envelope/envelope/internal/bound"
	"github.com/gorm-envelope/envelope/internal/token"
)

// Key is one owner's DEK as the store holds it: its prepared cipher, or
// the fact that it was shredded.
type Key struct {
	C        *token.Cipher
	Shredded bool

	bound atomic.Pointer[bound.Cipher] // the bound-value cipher, made on first use

	root    dek.DEK  // the DEK's bytes, the root of the owner's blind-index keys
	indexes sync.Map // index name -> *blind.Key, derived on first use
}

// newKey prepares d for use; the caller may clear d afterwards.
func newKey(d dek.DEK) *Key { return &Key{C: token.New(d), root: d} }

// NewKey prepares d for use outside a store (tests, jobs); the caller may
// clear d afterwards.
func NewKey(d dek.DEK) *Key { return newKey(d) }

// Bound returns the cipher of the owner's bound values (docs/format.md,
// "Bound values"), deriving its key from the DEK on first use.
func (k *Key) Bound() *bound.Cipher {
	if c := k.bound.Load(); c != nil {
		return c
	}
	c := bound.New(k.root)
	if k.bound.CompareAndSwap(nil, c) {
		return c
	}
	return k.bound.Load()
}

// IndexKey returns the key of the owner's blind index name, derived from
// the DEK (HKDF, docs/format.md) on first use.
func (k *Key) IndexKey(name string) (*blind.Key, error) {
	if v, ok := k.indexes.Load(name); ok {
		return v.(*blind.Key), nil
	}
	bk, err := blind.NewKey(k.root[:], name)
	if err != nil {
		return nil, err
	}
	v, _ := k.indexes.LoadOrStore(name, bk)
	return v.(*blind.Key), nil
}

// OwnerText is a normalised owner (or row key) as bound DEKs and bound
// values name it: an int64 in decimal, a string as it is, "" for none
// (docs/format.md, "Owner-bound DEKs" and "Bound values").
func OwnerText(owner any) string {
	switch o := owner.(type) {
	case int64:
		return strconv.FormatInt(o, 10)
	case string:
		return o
	case nil:
		return ""
	}
	return fmt.Sprint(owner)
}

// openedName names a stored DEK in the opened cache and among concurrent
// opens: the length of the owner's text, a colon, the text, then the
// stored bytes (the table is the store's own). The length makes the name
// unambiguous whatever bytes the owner and the DEK hold, so the same
// bytes in two owners' rows never share a name.
func openedName(owner any, enc []byte) string {
	o := OwnerText(owner)
	return strconv.Itoa(len(o)) + ":" + o + string(enc)
}

func sortOwners(owners []any) {
	slices.SortFunc(owners, func(a, b any) int {
		switch x := a.(type) {
		case int64:
			if y, ok := b.(int64); ok {
				return cmp.Compare(x, y)
			}
		case string:
			if y, ok := b.(string); ok {
				return cmp.Compare(x, y)
			}
		}
		return 0
	})
}

func setErr(m map[any]error, o any, err error) map[any]error {
	if m == nil {
		m = map[any]error{}
	}
	m[o] = err
	return m
}
