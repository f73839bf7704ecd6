package envelope

import (
	"context"
	"errors"
	"fmt"

	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Rewriting a table's values in the format the model writes, and
// importing values of other schemes.

// DefaultResealBatch is the rows Reseal reads and writes per transaction
// when ResealOptions.BatchSize is zero.
const DefaultResealBatch = 500

// MaxResealFailures is how many [ResealFailure] records a [ResealResult]
// keeps; the Unreadable count is always complete.
const MaxResealFailures = 100

// ResealOptions configures [Reseal].
type ResealOptions struct {
	// BatchSize is the number of rows read and written per transaction
	// (default [DefaultResealBatch]).
	BatchSize int

	// DryRun counts what a run would write, and writes nothing: no value,
	// and no DEK for an owner who has none.
	DryRun bool

	// From are the decoders of the values to import: a value that does
	// not open under its owner's DEK is given to each in turn, and the
	// first that opens it gives the plaintext Reseal seals under the
	// owner's DEK (created if the owner has none). See [FernetDecoder]
	// and [TOMToolkitDecoder].
	From []Decoder

	// After, if not nil, is a primary key: the run starts with the row
	// after it, as a run stopped part way reported in ResealResult.Last.
	After any

	// Progress, if set, is called after each batch with the counts so far.
	Progress func(ResealResult)
}

// ResealResult counts what [Reseal] did. Each non-NULL, non-empty
// encrypted value read is counted once, as Resealed, Imported, Skipped or
// Unreadable.
type ResealResult struct {
	Scanned    int // rows read
	Resealed   int // values of the plugin rewritten in the model's format (or would be, in a dry run)
	Imported   int // values a decoder opened, now sealed under their owner's DEK (or would be)
	Skipped    int // values already in the model's format, where they are
	Unreadable int // values neither the owner's DEK nor a decoder opens: left as they were
	// Last is the primary key of the last row done, as scanned: set as
	// ResealOptions.After to go on from there.
	Last any
	// Failures names unreadable values, up to [MaxResealFailures].
	Failures []ResealFailure
}

// ResealFailure names one value [Reseal] could not open: by row, field
// and owner, never by value.
type ResealFailure struct {
	Row   any    // the row's primary key
	Field string // the model's Go field
	Owner any    // the row's owner; nil if it has none
	Err   error  // why: wraps ErrDecrypt, ErrShredded or ErrNoOwner
}

func (f ResealFailure) String() string {
	return fmt.Sprintf("row %v field %s owner %v: %v", f.Row, f.Field, f.Owner, f.Err)
}

// Reseal rewrites, in place, the encrypted values of model (e.g.
// &Credential{}; in the table db.Table names, if it names one) that are
// not in the format the model writes, and imports values encrypted under
// one app-wide key into per-owner DEKs:
//
//   - a Fernet token of its owner, in a model that writes bound values
//     (Config.Format is [FormatBound], or its primary key is tagged
//     envelope:"row"), or a bound value in a model that writes Fernet
//     tokens, is sealed again in the model's format;
//   - a bound value of a row-bound model sealed before its primary key
//     was tagged envelope:"row" (bound to table, column and owner only) is
//     sealed again bound to its row; and, after the tag was removed, a
//     bound value bound to its row is sealed again without;
//   - a value that does not open under its owner's DEK is given to the
//     decoders of opts.From, and the plaintext of the first that opens it
//     is sealed under the owner's DEK, in the model's format;
//   - any other value (a shredded owner, a value nothing opens, a row
//     without an owner) is counted as unreadable and left as it is.
//     Values of a shredded owner are never imported: shredding is final.
//
// It walks the table in primary-key order, a batch per transaction that
// locks the batch's rows (FOR UPDATE; on SQLite, the write lock) before
// reading them, so a concurrent write is never clobbered. Values already
// in the model's format are left alone, so a run that was stopped can
// simply be run again, or go on after ResealResult.Last (opts.After).
// Reads work throughout, as every format the plugin wrote opens; changing
// Config.Format in the app first makes new writes use the new format.
//
// Reseal returns an error only when the database or a DEK fails (a DEK
// that the master keys do not open); unreadable values are counted and
// named in the result. Imported values have no blind-index values yet:
// run [Reindex] after importing into a model with blind indexes.
func Reseal(ctx context.Context, db *gorm.DB, model any, opts ResealOptions) (ResealResult, error) {
	var res ResealResult
	p, stmt, m, err := jobModel(db, model, "Reseal")
	if err != nil {
		return res, err
	}
	table := stmt.Schema.Table
	if db.Statement.Table != "" && db.Statement.Table != table {
		// Reseal(ctx, db.Table("users"), &User{}, opts): the values are
		// read, and bound, where they are.
		table = db.Statement.Table
		c := *m
		c.table = table
		m = &c
	}
	name := m.name
	if name == "" {
		name = table
	}
	if err := m.ownerless(); err != nil {
		return res, err
	}
	if len(m.fields) == 0 {
		return res, fmt.Errorf("envelope: Reseal: model %s has no encrypted fields", name)
	}
	if len(stmt.Schema.PrimaryFields) != 1 {
		return res, fmt.Errorf("envelope: Reseal: model %s needs exactly one primary key field", name)
	}
	r := &resealer{p: p, m: m, name: name, table: table, pk: stmt.Schema.PrimaryFields[0].DBName, opts: opts, res: &res}
	if r.opts.BatchSize <= 0 {
		r.opts.BatchSize = DefaultResealBatch
	}
	base := db.Session(&gorm.Session{NewDB: true, Context: ctx})
	last := opts.After
	for {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		var n int
		err := base.Transaction(func(tx *gorm.DB) error {
			var err error
			n, err = r.batch(tx, last)
			return err
		})
		if err != nil {
			return res, fmt.Errorf("envelope: Reseal %s: %w", name, err)
		}
		if n == 0 {
			return res, nil
		}
		last = res.Last
		if opts.Progress != nil {
			opts.Progress(res)
		}
		if n < r.opts.BatchSize {
			return res, nil
		}
	}
}

type resealer struct {
	p               *Plugin
	m               *modelMeta
	name, table, pk string
	opts            ResealOptions
	res             *ResealResult
}

// resealRow is one row as a batch reads it.
type resealRow struct {
	id, owner any
	vals      []*string
}

// resealChange is one value to write: its new plaintext, to seal.
type resealChange struct {
	row, field int
	plain      []byte
	imported   bool
}

// batch reseals, in transaction tx, the rows after last, and returns how
// many it read.
func (r *resealer) batch(tx *gorm.DB, last any) (int, error) {
	m := r.m
	cols := []clause.Column{{Name: r.pk}, {Name: m.owner.DBName}}
	if m.owner.DBName == r.pk {
		cols = cols[:1] // self-owned: the key is the owner
	}
	for _, ef := range m.fields {
		cols = append(cols, clause.Column{Name: ef.f.DBName})
	}
	q := tx.Table(r.table).Clauses(clause.Select{Columns: cols}).Order(clause.OrderByColumn{Column: clause.Column{Name: r.pk}}).Limit(r.opts.BatchSize)
	if !r.opts.DryRun {
		if tx.Dialector.Name() == "sqlite" {
			if err := keystore.LockSQLite(tx, r.table, r.pk); err != nil {
				return 0, err
			}
		} else {
			q = q.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate})
		}
	}
	if last != nil {
		q = q.Where(clause.Gt{Column: clause.Column{Name: r.pk}, Value: last})
	}
	rows, err := q.Rows()
	if err != nil {
		return 0, err
	}
	var recs []resealRow
	for rows.Next() {
		rec := resealRow{vals: make([]*string, len(m.fields))}
		dest := []any{&rec.id}
		if len(cols) > len(m.fields)+1 {
			dest = append(dest, &rec.owner)
		}
		for i := range rec.vals {
			dest = append(dest, &rec.vals[i])
		}
		if err := rows.Scan(dest...); err != nil {
			rows.Close()
			return 0, err
		}
		if b, ok := rec.id.([]byte); ok { // MySQL returns numbers as text
			rec.id = string(b)
		}
		if len(dest) == len(m.fields)+1 {
			rec.owner = rec.id
		}
		rec.owner = ownerScan(m, rec.owner)
		recs = append(recs, rec)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if len(recs) == 0 {
		return 0, nil
	}

	var owners []any
	seen := map[any]bool{}
	for _, rec := range recs {
		if rec.owner != nil && !seen[rec.owner] {
			seen[rec.owner] = true
			owners = append(owners, rec.owner)
		}
	}
	keys, kerrs, err := r.p.resolve(tx, owners, false)
	if err != nil {
		return 0, err
	}
	var changes []resealChange
	defer func() {
		for _, c := range changes {
			clear(c.plain)
		}
	}()
	res := *r.res // counted into a copy, kept once the batch commits
	fail := func(rec resealRow, ef *encField, err error) {
		res.Unreadable++
		if len(res.Failures) < MaxResealFailures {
			res.Failures = append(res.Failures, ResealFailure{Row: rec.id, Field: ef.f.Name, Owner: rec.owner, Err: err})
		}
	}
	needDEK := map[any]bool{}
	for ri, rec := range recs {
		var k *ownerKey
		var kerr error
		switch {
		case rec.owner == nil:
			kerr = ErrNoOwner
		case kerrs[rec.owner] != nil:
			kerr = kerrs[rec.owner]
			if !errors.Is(kerr, keystore.ErrNoDEK) && !errors.Is(kerr, ErrShredded) {
				// The master keys do not open the owner's DEK.
				return 0, &FieldError{Model: r.name, Owner: rec.owner, Err: kerr}
			}
		case keys[rec.owner] == nil:
			kerr = keystore.ErrNoDEK // a dry run, for an owner with no DEK
		case keys[rec.owner].Shredded:
			kerr = ErrShredded
		default:
			k = keys[rec.owner]
		}
		for fi, v := range rec.vals {
			if v == nil || *v == "" {
				continue
			}
			ef := &m.fields[fi]
			if k != nil {
				plain, done, err := r.own(k, ef, rec, *v)
				if err != nil {
					return 0, err
				}
				if done {
					if plain == nil {
						res.Skipped++
					} else {
						changes = append(changes, resealChange{row: ri, field: fi, plain: plain})
					}
					continue
				}
			}
			if errors.Is(kerr, ErrShredded) || errors.Is(kerr, ErrNoOwner) {
				fail(rec, ef, kerr) // never imported: a shred is final
				continue
			}
			plain, err := r.decode(*v)
			if err != nil {
				fail(rec, ef, err)
				continue
			}
			changes = append(changes, resealChange{row: ri, field: fi, plain: plain, imported: true})
			if k == nil {
				needDEK[rec.owner] = true
			}
		}
	}
	res.Scanned += len(recs)
	res.Last = recs[len(recs)-1].id
	if r.opts.DryRun {
		for _, c := range changes {
			if c.imported {
				res.Imported++
			} else {
				res.Resealed++
			}
		}
		*r.res = res
		return len(recs), nil
	}
	if len(needDEK) > 0 {
		var list []any
		for _, o := range owners {
			if needDEK[o] {
				list = append(list, o)
			}
		}
		created, cerrs, err := r.p.resolve(tx, list, true)
		if err != nil {
			return 0, err
		}
		for _, o := range list {
			if err := cerrs[o]; err != nil {
				return 0, &FieldError{Model: r.name, Owner: o, Err: err}
			}
			if created[o] == nil || created[o].Shredded {
				return 0, &FieldError{Model: r.name, Owner: o, Err: fmt.Errorf("%w: no DEK to import under", ErrDecrypt)}
			}
			keys[o] = created[o]
		}
	}
	sets := map[int]map[string]any{}
	for _, c := range changes {
		rec := recs[c.row]
		ef := &m.fields[c.field]
		sealed, err := m.sealOne(keys[rec.owner], ef, rec.owner, r.m.rowText(rec.id), c.plain)
		if err != nil {
			return 0, &FieldError{Model: r.name, Field: ef.f.Name, Owner: rec.owner, Err: err}
		}
		if sets[c.row] == nil {
			sets[c.row] = map[string]any{}
		}
		sets[c.row][ef.f.DBName] = sealed
		if c.imported {
			res.Imported++
		} else {
			res.Resealed++
		}
	}
	for ri, rec := range recs {
		set := sets[ri]
		if len(set) == 0 {
			continue
		}
		upd := internal(tx).Table(r.table).Where(clause.Eq{Column: clause.Column{Name: r.pk}, Value: rec.id}).UpdateColumns(set)
		if upd.Error != nil {
			return 0, upd.Error
		}
	}
	*r.res = res
	return len(recs), nil
}
