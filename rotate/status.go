package rotate

import (
	"context"
	"fmt"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
)

// KeyCount is how many DEKs (in StatusResult.IndexKeys: blind-index keys)
// one master key opens.
type KeyCount struct {
	Index int    // position in the keyring: 0 is the primary, 1.. the previous keys
	ID    string // the key's fingerprint, dek.KeyID; never the key
	Count int
}

// StatusResult counts the DEKs by the key that opens them.
type StatusResult struct {
	// Keys has one entry per key of Options.Keys, primary first. A previous
	// key whose Count is zero opens no DEK: once every running app has the
	// new primary, it can be retired.
	Keys []KeyCount
	// Undecryptable counts DEKs that no configured key opens; Failures
	// names them (up to MaxFailures).
	Undecryptable int
	// Empty counts profiles without a DEK (NULL or empty column).
	Empty int
	// Shredded counts crypto-shredded DEKs.
	Shredded int
	// Legacy counts the DEKs counted in Keys that are in TOM Toolkit's
	// legacy layout, not bound to their profile row (docs/format.md,
	// "Owner-bound DEKs"): Run with Options.BindDEKs upgrades them.
	Legacy int
	// Total is the number of profiles examined.
	Total int

	Failures []Failure

	// The blind-index keys (the rows of the table envelope_index_keys),
	// counted apart: the fields above count DEKs only.

	// IndexKeys has one entry per key of Options.Keys, primary first,
	// counting the index keys it opens; all zero when the database has no
	// index keys. A previous key can be retired once it opens neither a DEK
	// nor an index key.
	IndexKeys []KeyCount
	// IndexUndecryptable counts index keys that no configured key opens
	// (an empty one included); IndexFailures names them (up to MaxFailures).
	IndexUndecryptable int
	// IndexTotal is the number of index keys examined.
	IndexTotal int

	IndexFailures []Failure
}

// Current reports whether every DEK and every blind-index key opens under
// the primary key: nothing is left to rotate and nothing is undecryptable.
func (s StatusResult) Current() bool {
	n := 0
	for _, k := range s.Keys[1:] {
		n += k.Count
	}
	for _, k := range s.IndexKeys[min(1, len(s.IndexKeys)):] {
		n += k.Count
	}
	return n == 0 && s.Undecryptable == 0 && s.IndexUndecryptable == 0
}

// Status opens every DEK and counts them by the key of opts.Keys that opens
// them; then, when the database has the table envelope_index_keys, every
// blind-index key the same way. It writes nothing.
// Memory stays flat in the number of profiles.
func Status(ctx context.Context, db *gorm.DB, opts Options) (StatusResult, error) {
	var st StatusResult
	t, err := opts.resolve(ctx, db)
	if err != nil {
		return st, wrap(err)
	}
	for i, k := range opts.Keys.Keys() {
		st.Keys = append(st.Keys, KeyCount{Index: i, ID: dek.KeyID(k)})
		st.IndexKeys = append(st.IndexKeys, KeyCount{Index: i, ID: dek.KeyID(k)})
	}
	total := 0
	if opts.Progress != nil {
		if total, err = t.count(ctx, ""); err != nil {
			return st, wrap(err)
		}
	}
	c := &cryptor{keys: opts.Keys, status: true, table: t.bindTable}
	err = t.scan(ctx, "", func(rows []row) error {
		for i, it := range c.process(ctx, rows) {
			switch it.kind {
			case kindEmpty:
				st.Empty++
			case kindShredded:
				st.Shredded++
			case kindCurrent:
				st.Keys[it.keyIdx].Count++
				if !it.bound {
					st.Legacy++
				}
			case kindFailed:
				st.Undecryptable++
				if len(st.Failures) < MaxFailures {
					st.Failures = append(st.Failures, newFailure(rows[i], it.reason))
				}
			}
		}
		st.Total += len(rows)
		if opts.Progress != nil {
			p := Progress{Scanned: st.Total, Total: total, AlreadyCurrent: st.Keys[0].Count,
				Empty: st.Empty, Shredded: st.Shredded, Failed: st.Undecryptable}
			opts.Progress(p)
		}
		return nil
	})
	if err == nil {
		err = t.indexStatus(ctx, opts.Keys, &st)
	}
	return st, wrap(err)
}

// indexStatus counts the blind-index keys, if the database has them, into
// st's Index fields.
func (t *target) indexStatus(ctx context.Context, keys *dek.Keyring, st *StatusResult) error {
	ix, err := t.indexKeys(ctx)
	if err != nil || ix == nil {
		return err
	}
	c := &cryptor{keys: keys, status: true, strict: true}
	return ix.scan(ctx, "", func(rows []row) error {
		for i, it := range c.process(ctx, rows) {
			switch it.kind {
			case kindCurrent:
				st.IndexKeys[it.keyIdx].Count++
			default:
				st.IndexUndecryptable++
				if len(st.IndexFailures) < MaxFailures {
					st.IndexFailures = append(st.IndexFailures, newFailure(rows[i], it.reason))
				}
			}
		}
		st.IndexTotal += len(rows)
		return nil
	})
}

// Verify is Status that fails: it returns a *[FailedError] if any DEK or
// blind-index key cannot be opened by opts.Keys.
func Verify(ctx context.Context, db *gorm.DB, opts Options) (StatusResult, error) {
	st, err := Status(ctx, db, opts)
	if err == nil && (st.Undecryptable > 0 || st.IndexUndecryptable > 0) {
		err = &FailedError{Op: "verify", Count: st.Undecryptable, IndexKeys: st.IndexUndecryptable}
	}
	return st, err
}

// Backfill gives a new DEK, sealed under opts.Keys' primary key, to every
// profile whose DEK column is NULL or empty, and returns how many it gave.
// With opts.BindDEKs the DEKs are bound to their profile rows; a profile
// whose owner is NULL then stops the run, as a bound DEK needs its owner.
// Each write is conditional on the column still being empty, so a DEK made
// concurrently (by the app, or another Backfill) is never replaced. In a
// dry run it returns how many profiles have no DEK.
func Backfill(ctx context.Context, db *gorm.DB, opts Options) (int, error) {
	t, err := opts.resolve(ctx, db)
	if err != nil {
		return 0, wrap(err)
	}
	empty := t.emptyCond(t.dek)
	if opts.DryRun {
		n, err := t.count(ctx, empty)
		return n, wrap(err)
	}
	total := 0
	if opts.Progress != nil {
		if total, err = t.count(ctx, empty); err != nil {
			return 0, wrap(err)
		}
	}
	given, scanned := 0, 0
	err = t.scan(ctx, empty, func(rows []row) error {
		cs := make([]change, len(rows))
		for i, r := range rows {
			d, err := dek.NewDEK()
			if err != nil {
				return err
			}
			var sealed []byte
			if opts.BindDEKs {
				b := dek.Binding{Table: t.bindTable, Owner: bindingOwner(r.owner)}
				if b.Owner == "" {
					clear(d[:])
					return fmt.Errorf("profile id %s has no owner, which a bound DEK names", idText(r.id))
				}
				sealed, err = opts.Keys.SealBound(ctx, d, b)
			} else {
				sealed, err = opts.Keys.Seal(ctx, d)
			}
			clear(d[:])
			if err != nil {
				return err
			}
			cs[i] = change{id: r.id, new: sealed}
		}
		done, err := t.write(ctx, cs, true)
		if err != nil {
			return err
		}
		for _, ok := range done {
			if ok {
				given++
			}
		}
		scanned += len(rows)
		if opts.Progress != nil {
			opts.Progress(Progress{Scanned: scanned, Total: total, Rotated: given, Skipped: scanned - given})
		}
		return nil
	})
	return given, wrap(interrupted(ctx, err))
}
