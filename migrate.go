package envelope

import (
	"context"
	"fmt"
	"reflect"
	"strconv"

	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// MigrateOptions tune [EncryptExisting].
type MigrateOptions struct {
	// BatchSize is the number of rows read and written per transaction
	// (default 500).
	BatchSize int
	// Progress, if set, is called after each batch with the counts so far.
	Progress func(MigrateResult)
}

// MigrateResult counts what [EncryptExisting] did.
type MigrateResult struct {
	Scanned   int // rows read
	Encrypted int // values that held plaintext and now hold a token
	Skipped   int // values that already were tokens of their owner, or NULL
}

// EncryptExisting encrypts, in place, the values of model's encrypted
// columns that still hold plaintext: for an app adopting the plugin on a
// table that already has data. It walks the table in primary-key order, a
// batch per transaction that locks the batch's rows (FOR UPDATE; on SQLite,
// the write lock) before reading them, so a concurrent write is never
// clobbered, and no plaintext is ever sent back as a condition (where the
// SQL log would show it). Values that already
// are tokens of their owner are left alone, so a run that was interrupted
// can simply be run again.
//
// Until it has finished, reads of rows it has not reached fail with
// [ErrDecrypt], unless Config.AcceptPlaintext is set for the migration
// window.
func EncryptExisting(ctx context.Context, db *gorm.DB, model any, opts MigrateOptions) (MigrateResult, error) {
	var res MigrateResult
	p, stmt, m, err := jobModel(db, model, "EncryptExisting")
	if err != nil {
		return res, err
	}
	if err := m.ownerless(); err != nil {
		return res, err
	}
	if len(m.fields) == 0 {
		return res, fmt.Errorf("envelope: EncryptExisting: model %s has no encrypted fields", m.name)
	}
	if len(stmt.Schema.PrimaryFields) != 1 {
		return res, fmt.Errorf("envelope: EncryptExisting: model %s needs exactly one primary key field", m.name)
	}
	pk := stmt.Schema.PrimaryFields[0].DBName
	table := stmt.Schema.Table
	batch := opts.BatchSize
	if batch <= 0 {
		batch = 500
	}
	cols := []clause.Column{{Name: pk}, {Name: m.owner.DBName}}
	for _, ef := range m.fields {
		cols = append(cols, clause.Column{Name: ef.f.DBName})
	}
	base := db.Session(&gorm.Session{NewDB: true, Context: ctx})
	var last any
	for {
		var done bool
		err := base.Transaction(func(tx *gorm.DB) error {
			q := tx.Table(table).Clauses(clause.Select{Columns: cols}).Order(clause.OrderByColumn{Column: clause.Column{Name: pk}}).Limit(batch)
			if tx.Dialector.Name() == "sqlite" {
				if err := keystore.LockSQLite(tx, table, pk); err != nil {
					return err
				}
			} else {
				q = q.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate})
			}
			if last != nil {
				q = q.Where(clause.Gt{Column: clause.Column{Name: pk}, Value: last})
			}
			rows, err := q.Rows()
			if err != nil {
				return err
			}
			type rec struct {
				id    any
				owner any
				vals  []*string
			}
			var recs []rec
			for rows.Next() {
				r := rec{vals: make([]*string, len(m.fields))}
				dest := []any{&r.id, &r.owner}
				for i := range r.vals {
					dest = append(dest, &r.vals[i])
				}
				if err := rows.Scan(dest...); err != nil {
					rows.Close()
					return err
				}
				if b, ok := r.id.([]byte); ok { // MySQL returns numbers as text
					r.id = string(b)
				}
				r.owner = ownerScan(m, r.owner)
				recs = append(recs, r)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			if len(recs) == 0 {
				done = true
				return nil
			}
			last = recs[len(recs)-1].id
			res.Scanned += len(recs)
			var owners []any
			seen := map[any]bool{}
			for _, r := range recs {
				if r.owner != nil && !seen[r.owner] {
					seen[r.owner] = true
					owners = append(owners, r.owner)
				}
			}
			keys, kerrs, err := p.resolve(tx, owners, true)
			if err != nil {
				return err
			}
			for _, r := range recs {
				set := map[string]any{}
				where := internal(tx).Table(table).Where(clause.Eq{Column: clause.Column{Name: pk}, Value: r.id})
				for i, v := range r.vals {
					if v == nil || *v == "" {
						res.Skipped++
						continue
					}
					name := m.fields[i].f.Name
					if r.owner == nil {
						return &FieldError{Model: m.name, Field: name, Err: fmt.Errorf("%w: row %v has no owner", ErrNoOwner, r.id)}
					}
					if err := kerrs[r.owner]; err != nil {
						return &FieldError{Model: m.name, Field: name, Owner: r.owner, Err: err}
					}
					k := keys[r.owner]
					if k == nil || k.Shredded {
						return &FieldError{Model: m.name, Field: name, Owner: r.owner, Err: ErrShredded}
					}
					ef := &m.fields[i]
					row := m.rowText(r.id)
					if m.opens(k, ef, keystore.OwnerText(r.owner), row, *v) {
						res.Skipped++
						continue
					}
					tok, err := m.sealOne(k, ef, r.owner, row, []byte(*v))
					if err != nil {
						return err
					}
					set[ef.f.DBName] = tok
				}
				if len(set) == 0 {
					continue
				}
				upd := where.UpdateColumns(set)
				if upd.Error != nil {
					return upd.Error
				}
				res.Encrypted += len(set)
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("envelope: EncryptExisting %s: %w", m.name, err)
		}
		if done {
			return res, nil
		}
		if opts.Progress != nil {
			opts.Progress(res)
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
}

// ownerScan normalises a scanned owner column like ownerOf does a field.
func ownerScan(m *modelMeta, v any) any {
	if b, ok := v.([]byte); ok {
		v = string(b)
	}
	if s, ok := v.(string); ok && m.owner.IndirectFieldType.Kind() != reflect.String {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil
		}
		v = n
	}
	return normOwnerAny(v)
}

// jobModel is the start of a job over a model's table (EncryptExisting,
// Reindex): the plugin on db, with a master key, and the model parsed.
func jobModel(db *gorm.DB, model any, job string) (*Plugin, *gorm.Statement, *modelMeta, error) {
	p, err := pluginOf(db)
	if err != nil {
		return nil, nil, nil, err
	}
	if p.keys == nil {
		return nil, nil, nil, ErrNoKey
	}
	stmt := &gorm.Statement{DB: db}
	if err := stmt.Parse(model); err != nil {
		return nil, nil, nil, fmt.Errorf("envelope: %s: %w", job, err)
	}
	m := p.metaOf(stmt.Schema)
	if m.err != nil {
		return nil, nil, nil, m.err
	}
	return p, stmt, m, nil
}
