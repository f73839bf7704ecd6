package rotate

import (
	"context"
	"errors"
	"fmt"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/keystore"
)

// ErrRekeyPending is what Run returns while a rekey (envelope.Rekey,
// envelope.RekeyAll) has retired DEKs that it has not destroyed yet: Run
// refuses to start then, rather than leave them under the old key.
var ErrRekeyPending = errors.New("rekey pending")

// Result counts what Run did.
type Result struct {
	// Rotated counts DEKs this run re-encrypted under the primary key (in a
	// dry run: would have).
	Rotated int
	// AlreadyCurrent counts DEKs that already opened under the primary key.
	AlreadyCurrent int
	// Empty counts profiles whose DEK column is NULL or empty (see Backfill).
	Empty int
	// Shredded counts crypto-shredded DEKs, which are left as they are.
	Shredded int
	// Failed counts DEKs that no configured key opens, or that could not be
	// re-encrypted; Failures names them (up to MaxFailures).
	Failed int
	// Skipped counts DEKs that kept changing under this run (a concurrent
	// writer won every compare-and-swap). They were left as the other
	// writer made them; a second run picks them up.
	Skipped int
	// Upgraded counts DEKs in TOM Toolkit's legacy layout that this run
	// sealed bound to their profile row under Options.BindDEKs (in a dry
	// run: would have), whether they were under an old key (also counted
	// in Rotated) or already under the primary (also in AlreadyCurrent).
	Upgraded int

	Failures []Failure

	// The blind-index keys (the rows of the table envelope_index_keys, when
	// the database has it), counted apart: the fields above count DEKs
	// only. Rewrapping an index key changes how it is stored, never the
	// key, so no index value changes.

	// IndexKeys counts index keys this run rewrapped under the primary key
	// (in a dry run: would have).
	IndexKeys int
	// IndexKeysCurrent counts index keys already under the primary key.
	IndexKeysCurrent int
	// IndexKeysFailed counts index keys that no configured key opens (an
	// empty one included), or that could not be rewrapped; IndexFailures
	// names them (up to MaxFailures).
	IndexKeysFailed int
	// IndexKeysSkipped counts index keys that kept changing under this run.
	IndexKeysSkipped int

	IndexFailures []Failure
}

func (r *Result) progress(scanned, total int) Progress {
	return Progress{
		Scanned: scanned, Total: total,
		Rotated: r.Rotated, AlreadyCurrent: r.AlreadyCurrent, Empty: r.Empty,
		Shredded: r.Shredded, Failed: r.Failed, Skipped: r.Skipped, Upgraded: r.Upgraded,
	}
}

func (r *Result) fail(x row, reason string) {
	r.Failed++
	if len(r.Failures) < MaxFailures {
		r.Failures = append(r.Failures, newFailure(x, reason))
	}
}

func newFailure(x row, reason string) Failure {
	if x.version != nil {
		return Failure{ID: idText(x.id), Index: ownerText(x.owner) + " v" + ownerText(x.version), Reason: reason}
	}
	return Failure{ID: idText(x.id), Owner: ownerText(x.owner), Reason: reason}
}

// casAttempts is how many times Run tries to swap a DEK that a concurrent
// writer keeps changing before it counts it as skipped.
const casAttempts = 3

// kind is what a DEK needs.
type kind uint8

const (
	kindEmpty kind = iota
	kindShredded
	kindCurrent
	kindRotate
	kindFailed
)

// item is one row's outcome of the crypto step.
type item struct {
	kind    kind
	keyIdx  int    // index of the key that opened it
	bound   bool   // it was read in the bound layout
	upgrade bool   // kindRotate: a legacy DEK sealed bound
	sealed  []byte // kindRotate: the DEK under the primary key, verified
	reason  string // kindFailed
}

// Run re-encrypts, under opts.Keys' primary key, every DEK that opens under
// one of its other keys. Only the DEK column is read and written.
//
// Profiles are read in primary key order, opts.BatchSize at a time. Each
// batch's DEKs are opened, sealed under the primary key and checked (the
// new value must open under the primary key alone, to the same DEK), then
// written in one short transaction with a compare-and-swap: a row is
// updated only if it still holds the exact value that was read, so a
// concurrent change (a shred, a new DEK) is never overwritten. Every DEK is
// openable by opts.Keys at every instant, so a run that is killed or
// cancelled can simply be run again; a rerun rotates only what is left.
//
// Each DEK is opened with its row's binding (the profile table and the
// row's owner; docs/format.md, "Owner-bound DEKs") and keeps its layout: a
// bound DEK is sealed bound again, a legacy one stays legacy unless
// opts.BindDEKs is set, in which case it is sealed bound too (also when it
// is already under the primary key) and counted in Result.Upgraded. A
// bound DEK that names another row (copied there) is a failure, like a
// DEK no key opens, and is left as it is.
//
// DEKs that no key opens are counted in Result.Failed and named in
// Result.Failures; the others are still rotated, and Run returns a
// *[FailedError] naming the count. Any database error stops the run and is
// returned with the counts so far.
//
// Then, when the database has the table envelope_index_keys, Run rewraps
// every blind-index key in it under the primary key in the same way
// (batched, checked, compare-and-swap), counted in Result.IndexKeys and the
// fields after it. The unwrapped key never changes, so no index value
// does. Options.Progress reports the profiles only.
//
// Run refuses to start (with [ErrRekeyPending]) while a rekey has retired
// DEKs it has not destroyed yet; a dry run does not.
func Run(ctx context.Context, db *gorm.DB, opts Options) (Result, error) {
	var res Result
	t, err := opts.resolve(ctx, db)
	if err != nil {
		return res, wrap(err)
	}
	if !opts.DryRun {
		// A retired DEK is wrapped by the master keys too: it would be
		// left under the old key, and the rekey could not finish.
		n, err := keystore.RetiredPending(t.db)
		if err != nil {
			return res, wrap(err)
		}
		if n > 0 {
			return res, wrap(fmt.Errorf("%w: a rekey is not finished (%d retired DEKs in %s): run it again to completion, then rotate", ErrRekeyPending, n, keystore.RetiredTable))
		}
	}
	primaryOnly, err := dek.NewKeyring(opts.Keys.Primary())
	if err != nil {
		return res, wrap(err)
	}
	total := 0
	if opts.Progress != nil {
		if total, err = t.count(ctx, ""); err != nil {
			return res, wrap(err)
		}
	}
	c := &cryptor{keys: opts.Keys, verify: primaryOnly, table: t.bindTable, bind: opts.BindDEKs}
	scanned := 0
	err = t.pipeline(ctx, c, func(ctx context.Context, rows []row, items []item) (Result, error) {
		return t.rotateBatch(ctx, c, rows, items, opts.DryRun)
	}, func(n int, d Result) {
		scanned += n
		res.add(d)
		if opts.Progress != nil {
			opts.Progress(res.progress(scanned, total))
		}
	})
	if err != nil {
		return res, wrap(interrupted(ctx, err))
	}
	if err := t.rotateIndexKeys(ctx, primaryOnly, opts, &res); err != nil {
		return res, wrap(interrupted(ctx, err))
	}
	if res.Failed > 0 || res.IndexKeysFailed > 0 {
		return res, &FailedError{Op: "rotate", Count: res.Failed, IndexKeys: res.IndexKeysFailed}
	}
	return res, nil
}

// rotateIndexKeys rewraps the blind-index keys, if the database has them,
// through the same pipeline as the DEKs, and adds the counts to res.
func (t *target) rotateIndexKeys(ctx context.Context, primaryOnly *dek.Keyring, opts Options, res *Result) error {
	ix, err := t.indexKeys(ctx)
	if err != nil || ix == nil {
		return err
	}
	c := &cryptor{keys: opts.Keys, verify: primaryOnly, strict: true}
	var ir Result
	err = ix.pipeline(ctx, c, func(ctx context.Context, rows []row, items []item) (Result, error) {
		return ix.rotateBatch(ctx, c, rows, items, opts.DryRun)
	}, func(_ int, d Result) { ir.add(d) })
	res.add(Result{
		IndexKeys: ir.Rotated, IndexKeysCurrent: ir.AlreadyCurrent,
		IndexKeysFailed: ir.Failed, IndexKeysSkipped: ir.Skipped, IndexFailures: ir.Failures,
	})
	return err
}

// interrupted makes an error caused by ctx ending match ctx.Err(): when
// the context is cancelled, database/sql rolls the open transaction back,
// and the batch's commit then fails with sql.ErrTxDone instead.
// A nil err stays nil: work that finished is not failed by its context
// ending afterwards.
func interrupted(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}

func (r *Result) add(d Result) {
	r.Rotated += d.Rotated
	r.AlreadyCurrent += d.AlreadyCurrent
	r.Empty += d.Empty
	r.Shredded += d.Shredded
	r.Failed += d.Failed
	r.Skipped += d.Skipped
	r.Upgraded += d.Upgraded
	if room := MaxFailures - len(r.Failures); room > 0 {
		r.Failures = append(r.Failures, d.Failures[:min(room, len(d.Failures))]...)
	}
	r.IndexKeys += d.IndexKeys
	r.IndexKeysCurrent += d.IndexKeysCurrent
	r.IndexKeysFailed += d.IndexKeysFailed
	r.IndexKeysSkipped += d.IndexKeysSkipped
	if room := MaxFailures - len(r.IndexFailures); room > 0 {
		r.IndexFailures = append(r.IndexFailures, d.IndexFailures[:min(room, len(d.IndexFailures))]...)
	}
}

// rotateBatch writes one batch whose crypto is done (items), then retries,
// up to casAttempts-1 times, rows that a concurrent writer changed meanwhile.
// It returns the batch's counts.
func (t *target) rotateBatch(ctx context.Context, c *cryptor, rows []row, items []item, dryRun bool) (Result, error) {
	var res Result
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			items = c.process(ctx, rows)
		}
		var cs []change
		var pending []row
		var pendingItems []item
		for i, it := range items {
			switch it.kind {
			case kindEmpty:
				res.Empty++
			case kindShredded:
				res.Shredded++
			case kindCurrent:
				res.AlreadyCurrent++
			case kindFailed:
				res.fail(rows[i], it.reason)
			case kindRotate:
				cs = append(cs, change{id: rows[i].id, old: rows[i].enc, new: it.sealed})
				pending = append(pending, rows[i])
				pendingItems = append(pendingItems, it)
			}
		}
		if len(cs) == 0 {
			return res, nil
		}
		if dryRun {
			for _, it := range pendingItems {
				res.written(it)
			}
			return res, nil
		}
		if t.beforeWrite != nil {
			t.beforeWrite(attempt)
		}
		done, err := t.write(ctx, cs, false)
		if err != nil {
			return res, err
		}
		var lost []any
		for i, ok := range done {
			if ok {
				res.written(pendingItems[i])
			} else {
				lost = append(lost, pending[i].id)
			}
		}
		if len(lost) == 0 {
			return res, nil
		}
		if attempt == casAttempts {
			res.Skipped += len(lost)
			return res, nil
		}
		// A concurrent writer changed these rows: read them again and
		// treat them afresh (they may now be current, shredded or gone).
		if rows, err = t.reread(ctx, lost); err != nil {
			return res, err
		}
	}
}

// written counts a DEK rewritten under the primary key: rotated off an old
// key, or upgraded to the bound layout (and already current, or rotated).
func (r *Result) written(it item) {
	if it.keyIdx == 0 {
		r.AlreadyCurrent++
	} else {
		r.Rotated++
	}
	if it.upgrade {
		r.Upgraded++
	}
}

// write applies cs in one transaction.
func (t *target) write(ctx context.Context, cs []change, emptyOnly bool) ([]bool, error) {
	var done []bool
	err := t.db.Transaction(func(tx *gorm.DB) error {
		var err error
		done, err = t.writerFor(cs).apply(ctx, tx.Statement.ConnPool, cs, emptyOnly)
		return err
	})
	if err != nil {
		return nil, err
	}
	return done, nil
}
