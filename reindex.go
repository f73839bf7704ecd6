package envelope

import (
	"context"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Filling and rotating blind indexes.

// DefaultReindexBatch is the rows Reindex reads and writes per transaction
// when ReindexOptions.BatchSize is zero.
const DefaultReindexBatch = 1000

// ReindexOptions configures [Reindex].
type ReindexOptions struct {
	// BatchSize is the number of rows read and written per transaction
	// (default [DefaultReindexBatch]).
	BatchSize int

	// Rotate starts an index-key rotation: each global index of the model
	// gets a new key version, which writes use from then on; every row is
	// recomputed under it, and the old versions are retired. Until they
	// are, Match looks under every live version, so no row stops matching
	// at any point. When a rotation is already under way (an interrupted
	// run), Rotate resumes it rather than starting another.
	Rotate bool

	// Settle is how long a run that retires old key versions waits before
	// its last pass: other processes learn of a new version within their
	// Config.CacheTTL, and until then may still write under the old one.
	// Zero means [DefaultCacheTTL].
	Settle time.Duration

	// DryRun counts what a run would write, and writes nothing.
	DryRun bool

	// Progress, if set, is called after each batch.
	Progress func(ReindexProgress)
}

// ReindexProgress is what [ReindexOptions.Progress] receives.
type ReindexProgress struct {
	Pass    int // 1 for the first pass over the table
	Scanned int // rows read in this pass so far
	Updated int // rows whose index values this pass wrote (or would)
}

// ReindexResult counts what [Reindex] did, over all its passes.
type ReindexResult struct {
	Scanned int // rows read
	Updated int // rows whose index values were written (or would be, in a dry run)
	// Unreadable counts rows whose encrypted value did not open (a
	// shredded owner, a value no key opens): their index values were left
	// as they were, and Match never returns such rows.
	Unreadable int
	// Retired counts the global index key versions retired.
	Retired int
}

// Reindex computes the blind indexes of every row of model (e.g.
// &User{}; in the table db.Table names, if it names one), and writes those
// that differ: it fills an index added to a
// table that already has rows, and, with Rotate, moves every global index
// to a new key version. Rows are read by primary key in batches, each
// batch in its own transaction; a row is rewritten only if its encrypted
// value is still the one read, so concurrent writers are never
// overwritten (they write their own index values).
//
// Reindex can be stopped at any point and run again: a run skips rows
// already right, and an interrupted rotation is finished by the next run.
// Until an index is filled, Match does not find the rows written before
// the index existed.
func Reindex(ctx context.Context, db *gorm.DB, model any, opts ReindexOptions) (ReindexResult, error) {
	var res ReindexResult
	p, stmt, m, err := jobModel(db, model, "reindex")
	if err != nil {
		return res, err
	}
	table := stmt.Schema.Table
	if db.Statement.Table != "" {
		table = db.Statement.Table // Reindex(ctx, db.Table("users"), &User{}, opts)
	}
	// Errors name the model, or its table when its type has no name (a
	// struct made at run time, as the envelope command's reindex makes).
	name := m.name
	if name == "" {
		name = table
	}
	if len(m.indexes) == 0 {
		return res, fmt.Errorf("envelope: reindex: model %s has no blind index", name)
	}
	if len(stmt.Schema.PrimaryFields) != 1 {
		return res, fmt.Errorf("envelope: reindex: model %s needs one primary key", name)
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultReindexBatch
	}
	if opts.Settle == 0 {
		opts.Settle = DefaultCacheTTL
	}
	r := &reindexer{p: p, db: db.Session(&gorm.Session{NewDB: true, Context: ctx}), m: m, name: name, table: table, opts: opts}

	// Which global indexes have old versions to retire.
	rotating := map[string]*blindIdx{}
	for _, bi := range m.indexes {
		if !bi.global {
			continue
		}
		// A dry run creates no key: with none yet, every value is new.
		vs, err := p.liveIndexKeys(db.WithContext(ctx), bi, !opts.DryRun)
		if err != nil {
			return res, err
		}
		if len(vs) > 1 {
			rotating[bi.name] = bi
		} else if opts.Rotate && !opts.DryRun && rotating[bi.name] == nil {
			if err := p.addIndexVersion(ctx, bi); err != nil {
				return res, err
			}
			rotating[bi.name] = bi
		}
	}
	if err := r.pass(ctx, 1, &res); err != nil {
		return res, err
	}
	if len(rotating) == 0 || opts.DryRun {
		return res, nil
	}
	// Other processes may still write under the old versions until they
	// learn of the new one: wait, then fix what they wrote, then retire.
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(opts.Settle):
	}
	if err := r.pass(ctx, 2, &res); err != nil {
		return res, err
	}
	for _, bi := range rotating {
		n, err := p.retireOldVersions(db.WithContext(ctx), bi)
		res.Retired += n
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

type reindexer struct {
	p     *Plugin
	db    *gorm.DB
	m     *modelMeta
	name  string // the model's name in errors
	table string
	opts  ReindexOptions
}

// reRow is one row as a pass reads it.
type reRow struct {
	id    any
	owner any
	src   map[string][]byte // by source column; nil for NULL
	raw   map[string]any    // the source columns as scanned, to compare
	idx   map[string]*string
}

// pass reads every row once, by primary key, and rewrites the index
// values that differ from what they should be now.
func (r *reindexer) pass(ctx context.Context, n int, res *ReindexResult) error {
	pk := r.m.schema.PrimaryFields[0].DBName
	var srcCols []string
	seen := map[string]bool{}
	for _, bi := range r.m.indexes {
		if !seen[bi.src.f.DBName] {
			seen[bi.src.f.DBName] = true
			srcCols = append(srcCols, bi.src.f.DBName)
		}
	}
	cols := append([]string{pk, r.m.owner.DBName}, srcCols...)
	for _, bi := range r.m.indexes {
		cols = append(cols, bi.f.DBName)
	}
	prog := ReindexProgress{Pass: n}
	var last any
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		q := internal(r.db).Table(r.table).Select(cols).Order(clause.OrderByColumn{Column: clause.Column{Name: pk}}).Limit(r.opts.BatchSize)
		if last != nil {
			q = q.Where(clause.Gt{Column: clause.Column{Name: pk}, Value: last})
		}
		rows, err := q.Rows()
		if err != nil {
			return fmt.Errorf("envelope: reindex %s: %w", r.name, err)
		}
		var batch []reRow
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				rows.Close()
				return fmt.Errorf("envelope: reindex %s: %w", r.name, err)
			}
			row := reRow{id: vals[0], owner: normOwnerAny(asOwner(vals[1])), src: map[string][]byte{}, raw: map[string]any{}, idx: map[string]*string{}}
			for i, c := range srcCols {
				row.raw[c] = vals[2+i]
				if b := asBytes(vals[2+i]); b != nil {
					row.src[c] = b
				}
			}
			for i, bi := range r.m.indexes {
				if b := asBytes(vals[2+len(srcCols)+i]); b != nil {
					s := string(b)
					row.idx[bi.f.DBName] = &s
				}
			}
			batch = append(batch, row)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("envelope: reindex %s: %w", r.name, err)
		}
		if len(batch) == 0 {
			return nil
		}
		last = batch[len(batch)-1].id
		updated, unreadable, err := r.batch(ctx, batch)
		if err != nil {
			return err
		}
		prog.Scanned += len(batch)
		prog.Updated += updated
		res.Scanned += len(batch)
		res.Updated += updated
		if n == 1 {
			res.Unreadable += unreadable
		}
		if r.opts.Progress != nil {
			r.opts.Progress(prog)
		}
		if len(batch) < r.opts.BatchSize {
			return nil
		}
	}
}

// batch rewrites, in one transaction, the rows of batch whose index values
// differ from what they should be.
func (r *reindexer) batch(ctx context.Context, batch []reRow) (updated, unreadable int, err error) {
	var owners []any
	seen := map[any]bool{}
	for _, row := range batch {
		if row.owner != nil && !seen[row.owner] {
			seen[row.owner] = true
			owners = append(owners, row.owner)
		}
	}
	keys, _, err := r.p.resolve(r.db, owners, false)
	if err != nil {
		return 0, 0, err
	}
	type change struct {
		row reRow
		set map[string]any
	}
	var changes []change
	for _, row := range batch {
		set := map[string]any{}
		bad := false
		plains := map[string]*string{}
		for c, tok := range row.src {
			k := keys[row.owner]
			if k == nil || k.Shredded {
				bad = true
				break
			}
			msg, err := r.m.openRaw(k, r.m.byDB[c], row.owner, row.id, tok)
			if err != nil {
				bad = true
				break
			}
			s := string(msg)
			clear(msg)
			plains[c] = &s
		}
		if bad {
			unreadable++
			continue
		}
		for _, bi := range r.m.indexes {
			var want *string
			if plain := plains[bi.src.f.DBName]; plain != nil && r.opts.DryRun && bi.global && !r.hasKey(bi) {
				unknown := "" // no key yet: no stored value can be right
				want = &unknown
			} else if plain != nil {
				bk, ver, err := r.p.indexKey(r.db, bi, keys[row.owner])
				if err != nil {
					return updated, unreadable, &FieldError{Model: r.name, Field: bi.f.Name, Owner: row.owner, Err: err}
				}
				v := bi.value(bk, ver, *plain)
				want = &v
			}
			have := row.idx[bi.f.DBName]
			if bi.f.FieldType == typeString && want == nil {
				e := ""
				want = &e
			}
			if (have == nil) != (want == nil) || (have != nil && *have != *want) {
				if want == nil {
					set[bi.f.DBName] = nil
				} else {
					set[bi.f.DBName] = *want
				}
			}
		}
		if len(set) > 0 {
			changes = append(changes, change{row, set})
		}
	}
	if len(changes) == 0 || r.opts.DryRun {
		return len(changes), unreadable, nil
	}
	pk := r.m.schema.PrimaryFields[0].DBName
	err = internal(r.db).Transaction(func(tx *gorm.DB) error {
		for _, c := range changes {
			q := internal(tx).Table(r.table).Where(clause.Eq{Column: clause.Column{Name: pk}, Value: c.row.id})
			// Only if the encrypted values are still those read: a
			// concurrent writer wrote its own index values.
			for col := range uniqueSources(r.m) {
				if _, ok := c.row.src[col]; ok {
					q = q.Where(clause.Eq{Column: clause.Column{Name: col}, Value: c.row.raw[col]})
				} else {
					q = q.Where(clause.Eq{Column: clause.Column{Name: col}, Value: nil})
				}
			}
			res := q.UpdateColumns(c.set)
			if res.Error != nil {
				return res.Error
			}
			updated += int(res.RowsAffected)
		}
		return nil
	})
	if err != nil {
		return 0, unreadable, fmt.Errorf("envelope: reindex %s: %w", r.name, err)
	}
	return updated, unreadable, nil
}

func uniqueSources(m *modelMeta) map[string]bool {
	out := map[string]bool{}
	for _, bi := range m.indexes {
		out[bi.src.f.DBName] = true
	}
	return out
}

func asBytes(v any) []byte {
	switch x := v.(type) {
	case []byte:
		return x
	case string:
		return []byte(x)
	}
	return nil
}

// addIndexVersion starts a rotation of a global index key.
func (p *Plugin) addIndexVersion(ctx context.Context, bi *blindIdx) error {
	if _, err := p.ikeys.Add(ctx, bi.name); err != nil {
		return fmt.Errorf("envelope: index %s: new key version: %w", bi.name, err)
	}
	return nil
}

// retireOldVersions retires every live version of a global index but the
// active one.
func (p *Plugin) retireOldVersions(db *gorm.DB, bi *blindIdx) (int, error) {
	ctx := db.Statement.Context
	vs, err := p.liveIndexKeys(db, bi, false)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, v := range vs[1:] {
		if err := p.ikeys.Retire(ctx, bi.name, v.version); err != nil {
			return n, fmt.Errorf("envelope: index %s: retire version %d: %w", bi.name, v.version, err)
		}
		n++
	}
	return n, nil
}

// hasKey reports whether global index bi has a key yet.
func (r *reindexer) hasKey(bi *blindIdx) bool {
	vs, err := r.p.liveIndexKeys(r.db, bi, false)
	return err == nil && len(vs) > 0
}
