package envelope

// A rekey's two phases, owner by owner: phase 1 seals every value again
// under a new DEK and retires the old one; phase 2, after the wait, seals
// the stragglers and destroys the retired DEK.

import (
	"errors"
	"fmt"
	"time"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// transaction runs fn in a transaction, again when the database reports
// a deadlock or a serialization failure.
func (r *rekeyer) transaction(o any, fn func(tx *gorm.DB) error) error {
	var err error
	for range 3 {
		if err = r.ctx.Err(); err != nil {
			return err
		}
		err = keystore.ConflictErr(r.db.Transaction(fn))
		if !errors.Is(err, keystore.ErrConflict) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("envelope: %s owner %v: %w", r.job, o, err)
	}
	return nil
}

// lockProfile locks owner's profile row until the end of tx and returns
// the DEK stored in it (nil for none).
func (r *rekeyer) lockProfile(tx *gorm.DB, o any) ([]byte, error) {
	prof := r.p.prof
	q := tx.Table(prof.Table).Where(clause.Eq{Column: clause.Column{Name: prof.Owner.DBName}, Value: o})
	if tx.Dialector.Name() == "sqlite" {
		if err := keystore.LockSQLite(tx, prof.Table, prof.DEK.DBName); err != nil {
			return nil, err
		}
	} else {
		q = q.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate})
	}
	var encs [][]byte
	if err := q.Pluck(prof.DEK.DBName, &encs).Error; err != nil {
		return nil, err
	}
	if len(encs) == 0 {
		return nil, nil
	}
	return encs[0], nil
}

// phase1 gives owner o a new DEK and seals its values under it, in one
// transaction. An owner with a row in the retired table written since
// run (rekeyed by the run being resumed) is skipped; a zero run skips
// none.
func (r *rekeyer) phase1(o any, run time.Time) (RekeyResult, error) {
	var d RekeyResult
	var old []byte
	err := r.transaction(o, func(tx *gorm.DB) error {
		d, old = RekeyResult{}, nil
		enc, err := r.lockProfile(tx, o)
		if err != nil {
			return err
		}
		if err := fault("phase1:locked"); err != nil {
			return err
		}
		switch {
		case len(enc) == 0:
			return nil // no DEK: nothing was ever sealed for the owner
		case dek.IsTombstone(enc):
			d.Shredded++
			return nil
		}
		retired, latest, err := r.p.store.Retired(tx, o)
		if err != nil {
			return err
		}
		if !run.IsZero() && !latest.Before(run) {
			d.Skipped++
			return nil
		}
		oldKey, err := r.p.store.OpenStored(r.ctx, o, enc)
		if err != nil {
			return err
		}
		// The DEKs an unfinished rekey of the owner retired open its
		// stragglers: seal them now too (phase two destroys every one).
		olds := []*ownerKey{oldKey}
		for _, e := range retired {
			k, err := r.p.store.OpenStored(r.ctx, o, e)
			if err != nil {
				return fmt.Errorf("retired DEK: %w", err)
			}
			olds = append(olds, k)
		}
		if err := r.p.store.Retire(tx, o, enc); err != nil {
			return err
		}
		if err := fault("phase1:retired"); err != nil {
			return err
		}
		nd, err := dek.NewDEK()
		if err != nil {
			return err
		}
		newEnc, err := r.p.store.Seal(r.ctx, o, nd)
		newKey := keystore.NewKey(nd)
		clear(nd[:])
		if err != nil {
			return err
		}
		if err := tx.Table(r.p.prof.Table).
			Where(clause.Eq{Column: clause.Column{Name: r.p.prof.Owner.DBName}, Value: o}).
			UpdateColumn(r.p.prof.DEK.DBName, newEnc).Error; err != nil {
			return err
		}
		if err := fault("phase1:dek"); err != nil {
			return err
		}
		for _, rm := range r.models {
			if err := r.sweep(tx, rm, o, newKey, olds, &d, false); err != nil {
				return err
			}
			if err := fault("phase1:model"); err != nil {
				return err
			}
		}
		d.Owners++
		old = enc
		return nil
	})
	// Whether it committed or not: a rollback only costs a lookup.
	r.p.store.Forget(o, old)
	if err != nil {
		return RekeyResult{}, err
	}
	return d, fault("phase1:committed")
}

// phase2 seals under owner o's DEK the values that open only under its
// retired DEKs, and destroys those (keepMark: leaves the mark of a
// finished rekey), in one transaction.
func (r *rekeyer) phase2(o any, keepMark bool) (RekeyResult, error) {
	var d RekeyResult
	var olds [][]byte
	err := r.transaction(o, func(tx *gorm.DB) error {
		d = RekeyResult{}
		enc, err := r.lockProfile(tx, o)
		if err != nil {
			return err
		}
		if olds, _, err = r.p.store.Retired(tx, o); err != nil || len(olds) == 0 {
			return err
		}
		if err := fault("phase2:locked"); err != nil {
			return err
		}
		if len(enc) > 0 && !dek.IsTombstone(enc) {
			cur, err := r.p.store.OpenStored(r.ctx, o, enc)
			if err != nil {
				return err
			}
			keys := make([]*ownerKey, 0, len(olds))
			for _, e := range olds {
				k, err := r.p.store.OpenStored(r.ctx, o, e)
				if err != nil {
					return fmt.Errorf("retired DEK: %w", err)
				}
				keys = append(keys, k)
			}
			for _, rm := range r.models {
				if err := r.sweep(tx, rm, o, cur, keys, &d, true); err != nil {
					return err
				}
				if err := fault("phase2:model"); err != nil {
					return err
				}
			}
		} else if dek.IsTombstone(enc) {
			d.Shredded++ // shredded since: nothing is left to save
		}
		n, err := r.p.store.DestroyRetired(tx, o, keepMark)
		d.Retired += n
		return err
	})
	r.p.store.Forget(o, olds...)
	if err != nil {
		return RekeyResult{}, err
	}
	return d, fault("phase2:committed")
}

// sweep rewrites owner o's rows of model rm in tx: each value that does
// not open under cur but opens under one of olds is sealed under cur, and
// its per-owner index values recomputed.
func (r *rekeyer) sweep(tx *gorm.DB, rm *rekeyModel, o any, cur *ownerKey, olds []*ownerKey, d *RekeyResult, stragglers bool) error {
	m := rm.m
	cols := []clause.Column{{Name: rm.pk}}
	for _, ef := range m.fields {
		cols = append(cols, clause.Column{Name: ef.f.DBName})
	}
	q := tx.Table(rm.table).Clauses(clause.Select{Columns: cols}).
		Where(clause.Eq{Column: clause.Column{Name: m.owner.DBName}, Value: o}).
		Order(clause.OrderByColumn{Column: clause.Column{Name: rm.pk}})
	if tx.Dialector.Name() != "sqlite" {
		q = q.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate})
	}
	rows, err := q.Rows()
	if err != nil {
		return err
	}
	type rec struct {
		id   any
		vals []*string
	}
	var recs []rec
	for rows.Next() {
		x := rec{vals: make([]*string, len(m.fields))}
		dest := []any{&x.id}
		for i := range x.vals {
			dest = append(dest, &x.vals[i])
		}
		if err := rows.Scan(dest...); err != nil {
			rows.Close()
			return err
		}
		if b, ok := x.id.([]byte); ok { // MySQL returns numbers as text
			x.id = string(b)
		}
		recs = append(recs, x)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	owner := keystore.OwnerText(o)
	for _, x := range recs {
		row := m.rowText(x.id)
		set := map[string]any{}
		for fi, v := range x.vals {
			if v == nil || *v == "" {
				continue
			}
			ef := &m.fields[fi]
			if m.opens(cur, ef, owner, row, *v) {
				continue
			}
			var plain []byte
			for _, k := range olds {
				if out, err := m.openRaw(k, ef, o, x.id, stringBytes(*v)); err == nil {
					plain = nonNil(out)
					break
				}
			}
			if plain == nil {
				d.Unreadable++
				continue
			}
			err := r.reseal(rm, ef, o, row, cur, plain, set, d)
			clear(plain)
			if err != nil {
				return err
			}
			if stragglers {
				d.Stragglers++
			} else {
				d.Values++
			}
		}
		if len(set) == 0 {
			continue
		}
		if err := internal(tx).Table(rm.table).Where(clause.Eq{Column: clause.Column{Name: rm.pk}, Value: x.id}).UpdateColumns(set).Error; err != nil {
			return err
		}
	}
	return nil
}

// reseal puts into set the value plain of field ef sealed under cur, and
// its per-owner index values.
func (r *rekeyer) reseal(rm *rekeyModel, ef *encField, o any, row string, cur *ownerKey, plain []byte, set map[string]any, d *RekeyResult) error {
	sealed, err := rm.m.sealOne(cur, ef, o, row, plain)
	if err != nil {
		return &FieldError{Model: rm.name, Field: ef.f.Name, Owner: o, Err: err}
	}
	set[ef.f.DBName] = sealed
	for _, bi := range ef.idx {
		if bi.global {
			continue // keyed apart from the DEK: the value does not change
		}
		bk, err := cur.IndexKey(bi.name)
		if err != nil {
			return &FieldError{Model: rm.name, Field: bi.f.Name, Owner: o, Err: err}
		}
		set[bi.f.DBName] = bi.value(bk, 1, string(plain))
		d.Indexes++
	}
	return nil
}

// count adds to res what rekeying o would do: one owner, and its
// encrypted values. run is as for phase1.
func (r *rekeyer) count(o any, run time.Time, res *RekeyResult) error {
	enc, err := r.lockProfileless(o)
	if err != nil {
		return err
	}
	switch {
	case len(enc) == 0:
		return nil
	case dek.IsTombstone(enc):
		res.Shredded++
		return nil
	}
	if !run.IsZero() {
		if _, latest, err := r.p.store.Retired(r.db, o); err != nil {
			return err
		} else if !latest.Before(run) {
			res.Skipped++
			return nil
		}
	}
	res.Owners++
	for _, rm := range r.models {
		for _, ef := range rm.m.fields {
			var n int64
			err := r.db.Table(rm.table).
				Where(clause.Eq{Column: clause.Column{Name: rm.m.owner.DBName}, Value: o}).
				Where(clause.Neq{Column: clause.Column{Name: ef.f.DBName}, Value: nil}).
				Where(clause.Neq{Column: clause.Column{Name: ef.f.DBName}, Value: ""}).
				Count(&n).Error
			if err != nil {
				return fmt.Errorf("envelope: %s: count %s: %w", r.job, rm.name, err)
			}
			res.Values += int(n)
		}
	}
	return nil
}

// lockProfileless reads owner o's stored DEK without a lock (a dry run).
func (r *rekeyer) lockProfileless(o any) ([]byte, error) {
	prof := r.p.prof
	var encs [][]byte
	if err := r.db.Table(prof.Table).Where(clause.Eq{Column: clause.Column{Name: prof.Owner.DBName}, Value: o}).
		Pluck(prof.DEK.DBName, &encs).Error; err != nil {
		return nil, err
	}
	if len(encs) == 0 {
		return nil, nil
	}
	return encs[0], nil
}
