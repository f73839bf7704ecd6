package rotate

// The cryptor opens each DEK of a batch under the old keys and seals it
// under the new primary, on several cores.

import (
	"context"
	"crypto/subtle"
	"runtime"
	"strings"
	"sync"

	"github.com/gorm-envelope/envelope/dek"
)

// cryptor does a batch's key work on all CPUs.
type cryptor struct {
	keys   *dek.Keyring
	verify *dek.Keyring // the primary key alone, when rotating
	status bool         // only classify by key; do not re-encrypt
	// strict, for blind-index keys, which are never empty or shredded:
	// such a value is a failure, as it is to the key store.
	strict bool
	// table is the profile table a bound DEK names; "" for blind-index
	// keys, which belong to no row and stay in the legacy layout.
	table string
	// bind seals legacy DEKs bound to their row (Options.BindDEKs).
	bind bool
}

// minPerWorker keeps tiny batches on one goroutine.
const minPerWorker = 64

func (c *cryptor) process(ctx context.Context, rows []row) []item {
	items := make([]item, len(rows))
	workers := min(runtime.GOMAXPROCS(0), (len(rows)+minPerWorker-1)/minPerWorker)
	if workers <= 1 {
		for i := range rows {
			items[i] = c.one(ctx, rows[i])
		}
		return items
	}
	var wg sync.WaitGroup
	per := (len(rows) + workers - 1) / workers
	for lo := 0; lo < len(rows); lo += per {
		hi := min(lo+per, len(rows))
		wg.Go(func() {
			for i := lo; i < hi; i++ {
				items[i] = c.one(ctx, rows[i])
			}
		})
	}
	wg.Wait()
	return items
}

func (c *cryptor) one(ctx context.Context, r row) item {
	enc := r.enc
	switch {
	case len(enc) == 0 && c.strict:
		return item{kind: kindFailed, keyIdx: -1, reason: "empty wrapped key"}
	case len(enc) == 0:
		return item{kind: kindEmpty}
	case dek.IsTombstone(enc) && !c.strict:
		return item{kind: kindShredded}
	}
	b, hasRow := c.binding(r)
	var (
		d     dek.DEK
		idx   int
		bound bool
		err   error
	)
	if hasRow {
		d, idx, bound, err = c.keys.OpenBound(ctx, enc, b)
	} else {
		// No row to check a binding against: only the legacy layout opens.
		d, idx, err = c.keys.Open(ctx, enc)
	}
	if err != nil {
		return item{kind: kindFailed, keyIdx: -1, reason: c.reason(err.Error())}
	}
	defer clear(d[:])
	upgrade := c.bind && hasRow && !bound
	if (idx == 0 && !upgrade) || c.status {
		return item{kind: kindCurrent, keyIdx: idx, bound: bound}
	}
	seal := bound || upgrade
	var sealed []byte
	if seal {
		sealed, err = c.keys.SealBound(ctx, d, b)
	} else {
		sealed, err = c.keys.Seal(ctx, d)
	}
	if err != nil {
		return item{kind: kindFailed, keyIdx: idx, bound: bound, reason: c.reason(err.Error())}
	}
	// The new value must open under the primary key alone, to the same
	// DEK, in the layout it was sealed in, with the same binding.
	var check dek.DEK
	checkBound := false
	if seal {
		check, _, checkBound, err = c.verify.OpenBound(ctx, sealed, b)
	} else {
		check, _, err = c.verify.Open(ctx, sealed)
	}
	ok := err == nil && checkBound == seal && subtle.ConstantTimeCompare(check[:], d[:]) == 1
	clear(check[:])
	if !ok {
		return item{kind: kindFailed, keyIdx: idx, bound: bound, reason: c.reason("re-encrypted DEK did not open to the same DEK under the primary key")}
	}
	return item{kind: kindRotate, keyIdx: idx, bound: bound, upgrade: upgrade, sealed: sealed}
}

// binding is the profile row r as a bound DEK names it: the profile table
// and the row's owner as text. ok is false for a blind-index key, and for
// a profile whose owner is not read (OwnerColumn "-") or is NULL.
func (c *cryptor) binding(r row) (b dek.Binding, ok bool) {
	if c.table == "" || r.owner == nil {
		return dek.Binding{}, false
	}
	b = dek.Binding{Table: c.table, Owner: bindingOwner(r.owner)}
	return b, b.Owner != ""
}

// reason is an error's text for a Failure. Errors from dek never contain
// key material. They speak of DEKs, which an index key is wrapped as: for
// index keys they speak of keys.
func (c *cryptor) reason(text string) string {
	text = strings.TrimPrefix(text, "envelope: ")
	if c.strict {
		text = strings.ReplaceAll(text, "DEK", "key")
	}
	return text
}
