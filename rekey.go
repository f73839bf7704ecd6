package envelope

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"time"

	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Giving owners new DEKs: after a DEK leaked, or the master key did.

// DefaultRekeyBatch is how many owners [RekeyAll] does between two calls
// of RekeyOptions.Progress when RekeyOptions.BatchSize is zero.
const DefaultRekeyBatch = 100

// RekeyOptions configures [Rekey] and [RekeyAll].
type RekeyOptions struct {
	// BatchSize is how many profiles RekeyAll reads at a time, and so how
	// often it reports Progress (default [DefaultRekeyBatch]). Each owner
	// is rekeyed in a transaction of its own whatever it is.
	BatchSize int

	// Settle is how long to wait between the two phases: other processes
	// may go on writing under an owner's old DEK for as long as they keep
	// it cached. Zero means this plugin's Config.CacheTTL; set it to the
	// longest CacheTTL of every process that writes. A negative Settle
	// does not wait: right only for an app that runs in this one process
	// (and for tests).
	Settle time.Duration

	// DryRun counts the owners and the values a run would rekey, and
	// writes nothing.
	DryRun bool

	// Progress, if set, is called after each batch of owners in each phase
	// with the counts so far.
	Progress func(RekeyResult)
}

// RekeyResult counts what [Rekey] and [RekeyAll] did.
type RekeyResult struct {
	Phase      int // the phase the counts were reported in: 1 or 2
	Owners     int // owners given a new DEK (in a dry run: that would be)
	Values     int // values sealed again under an owner's new DEK (in a dry run: encrypted values found)
	Indexes    int // per-owner blind-index values recomputed
	Stragglers int // values found under a retired DEK after the wait, sealed under the new one
	Unreadable int // values that opened under neither the owner's DEK nor a retired one: left as they were
	Retired    int // retired DEKs destroyed
	Shredded   int // owners skipped because their DEK is shredded
	Skipped    int // owners RekeyAll skipped because the run it resumes rekeyed them already
}

func (r *RekeyResult) add(d RekeyResult) {
	r.Owners += d.Owners
	r.Values += d.Values
	r.Indexes += d.Indexes
	r.Stragglers += d.Stragglers
	r.Unreadable += d.Unreadable
	r.Retired += d.Retired
	r.Shredded += d.Shredded
	r.Skipped += d.Skipped
}

// rekeyFault, when set (by the tests), is called at each step of a rekey;
// an error it returns stops the job there, as if it were killed.
var rekeyFault func(step string) error

func fault(step string) error {
	if rekeyFault == nil {
		return nil
	}
	return rekeyFault(step)
}

// Rekey gives owner a new DEK and seals again, under it, the owner's
// values in models (e.g. []any{&Credential{}, &User{}}; a [TableModel]
// for a model read in another table): every model
// holding values of the owner must be given, for the old DEK is destroyed
// at the end, and with it whatever only it opens. A model the plugin has
// used with encrypted fields that is not given is refused.
//
// It runs in two phases. The first is one transaction: it locks the
// owner's profile row (FOR UPDATE; on SQLite, the write lock), keeps the
// old DEK, as stored, in the table envelope_retired_deks, stores a new
// DEK, and reads (FOR UPDATE) and rewrites every row of the owner in each
// model: each value opened with the old DEK and sealed with the new one
// in the model's format, and its per-owner blind-index values recomputed
// (global ones do not change). Concurrent writers for the owner wait for
// it. Then this process forgets the old DEK, as after [Shred]; other
// processes may go on writing under it for as long as they cache it.
//
// The second phase, after opts.Settle, catches those writes: in one more
// transaction it seals again every value of the owner that still opens
// only under the retired DEK, and destroys the retired DEK. Until then,
// in a process that already uses the new DEK, such a value reads as
// [ErrDecrypt]. Values that open under neither are counted as Unreadable
// and left as they are.
//
// A Rekey that stops part way loses nothing: run it again (it rekeys
// once more and destroys both retired DEKs), or run [RekeyAll].
func Rekey(ctx context.Context, db *gorm.DB, owner any, models []any, opts RekeyOptions) (RekeyResult, error) {
	var res RekeyResult
	r, err := newRekeyer(ctx, db, models, opts, "Rekey")
	if err != nil {
		return res, err
	}
	o := normOwnerAny(owner)
	if o == nil {
		return res, fmt.Errorf("%w: Rekey needs a non-zero owner", ErrNoOwner)
	}
	if opts.DryRun {
		err := r.count(o, time.Time{}, &res)
		return res, err
	}
	res.Phase = 1
	d, err := r.phase1(o, time.Time{})
	res.add(d)
	if err != nil {
		return res, err
	}
	if d.Owners > 0 {
		if err := r.settle(ctx, time.Now()); err != nil {
			return res, err
		}
	}
	res.Phase = 2
	d, err = r.phase2(o, false)
	res.add(d)
	return res, err
}

// RekeyAll gives every owner of the profile table a new DEK, as [Rekey]
// does for one: after the master key leaked, rotating it (rotate.Run) is
// not enough, since whoever has it and a copy of the database opens the
// DEKs of the copy (docs/key-management.md, "Incident runbook").
//
// Phase one rekeys the owners in profile-table order, each in a
// transaction of its own, reporting Progress after each batch; phase two,
// opts.Settle after the last owner's phase one, sweeps every owner with a
// retired DEK for values written under it meanwhile, and destroys it.
// Owners with a shredded DEK are skipped and counted.
//
// A run that stops at any point loses nothing, and is finished by running
// RekeyAll again: a run records when it began in envelope_retired_deks,
// and an owner done in phase two keeps a mark there (a row with no DEK)
// until the run ends, so that owners with a retired DEK or a mark written
// since the run began are not rekeyed twice; the second run goes on with
// the others, then sweeps. An owner whose retired DEK predates the run (a
// stopped Rekey) is rekeyed again. Owners created during a run get a new DEK
// once more, which costs a little time and nothing else. Run one RekeyAll
// at a time. rotate.Run refuses to run while retired DEKs are pending.
func RekeyAll(ctx context.Context, db *gorm.DB, models []any, opts RekeyOptions) (RekeyResult, error) {
	var res RekeyResult
	r, err := newRekeyer(ctx, db, models, opts, "RekeyAll")
	if err != nil {
		return res, err
	}
	res.Phase = 1
	var run time.Time
	if !opts.DryRun {
		if run, err = r.p.store.StartRun(r.db); err != nil {
			return res, err
		}
	} else if ok, err := keystore.RetiredExists(r.db); err != nil {
		return res, err
	} else if ok {
		if run, _, err = r.p.store.RunStarted(r.db); err != nil {
			return res, err
		}
	}
	err = r.eachProfile(func(batch []any) error {
		for _, o := range batch {
			if opts.DryRun {
				if err := r.count(o, run, &res); err != nil {
					return err
				}
				continue
			}
			d, err := r.phase1(o, run)
			res.add(d)
			if err != nil {
				return err
			}
		}
		if opts.Progress != nil {
			opts.Progress(res)
		}
		return nil
	})
	if err != nil || opts.DryRun {
		return res, err
	}
	res.Phase = 2
	owners, err := r.p.store.RetiredOwners(r.db)
	if err != nil {
		return res, err
	}
	var latest time.Time
	for _, ro := range owners {
		if ro.RetiredAt.After(latest) {
			latest = ro.RetiredAt
		}
	}
	if len(owners) > 0 {
		if err := r.settle(ctx, latest); err != nil {
			return res, err
		}
	}
	for i, ro := range owners {
		d, err := r.phase2(ro.Owner, true)
		res.add(d)
		if err != nil {
			return res, err
		}
		if opts.Progress != nil && ((i+1)%r.batch == 0 || i == len(owners)-1) {
			opts.Progress(res)
		}
	}
	if err := fault("marks"); err != nil {
		return res, err
	}
	if err := r.p.store.ClearMarks(r.db); err != nil {
		return res, fmt.Errorf("envelope: RekeyAll: %w", err)
	}
	return res, nil
}

// TableModel is a model of [Rekey] and [RekeyAll] read in a table other
// than its own, as db.Table names one for the other jobs: a model made at
// run time, or one of several tables with the same layout.
type TableModel struct {
	Table string
	Model any // e.g. &Credential{}
}

type rekeyer struct {
	p      *Plugin
	ctx    context.Context
	db     *gorm.DB // a new session on ctx
	job    string
	models []*rekeyModel
	wait   time.Duration
	batch  int
}

// rekeyModel is one model a rekey rewrites.
type rekeyModel struct {
	m         *modelMeta
	name      string
	table, pk string
}

func newRekeyer(ctx context.Context, db *gorm.DB, models []any, opts RekeyOptions, job string) (*rekeyer, error) {
	p, err := pluginOf(db)
	if err != nil {
		return nil, err
	}
	if p.keys == nil {
		return nil, ErrNoKey
	}
	if _, inTx := db.Statement.ConnPool.(gorm.TxCommitter); inTx {
		// Each owner's phase must commit before the wait, and the
		// retired-DEK table may have to be created first.
		return nil, fmt.Errorf("envelope: %s runs transactions of its own: call it outside a transaction", job)
	}
	r := &rekeyer{p: p, ctx: ctx, db: db.Session(&gorm.Session{NewDB: true, Context: ctx}), job: job, batch: opts.BatchSize}
	if r.batch <= 0 {
		r.batch = DefaultRekeyBatch
	}
	switch {
	case opts.Settle < 0:
	case opts.Settle > 0:
		r.wait = opts.Settle
	case p.cacheTTL > 0:
		r.wait = p.cacheTTL
	}
	given, seen := map[string]bool{}, map[string]bool{}
	for _, model := range models {
		table := ""
		switch tm := model.(type) {
		case TableModel:
			model, table = tm.Model, tm.Table
		case *TableModel:
			model, table = tm.Model, tm.Table
		}
		_, stmt, m, err := jobModel(db, model, job)
		if err != nil {
			return nil, err
		}
		given[stmt.Schema.Table] = true
		if table != "" && table != m.table {
			c := *m // read, and bound, where the values are
			c.table = table
			m = &c
		}
		name := m.name
		if name == "" {
			name = m.table
		}
		if err := m.ownerless(); err != nil {
			return nil, err
		}
		if len(m.fields) == 0 {
			return nil, fmt.Errorf("envelope: %s: model %s has no encrypted fields", job, name)
		}
		if len(stmt.Schema.PrimaryFields) != 1 {
			return nil, fmt.Errorf("envelope: %s: model %s needs exactly one primary key field", job, name)
		}
		if seen[m.table] {
			continue
		}
		seen[m.table], given[m.table] = true, true
		r.models = append(r.models, &rekeyModel{m: m, name: name, table: m.table, pk: stmt.Schema.PrimaryFields[0].DBName})
	}
	var missing error
	p.tables.Range(func(k, v any) bool {
		m := v.(*modelMeta)
		// A model without a table name of its own ("") is used through
		// db.Table, which names a table this cannot know.
		if k.(string) != "" && !given[k.(string)] && m.owner != nil && len(m.fields) > 0 {
			missing = fmt.Errorf("envelope: %s: model %s (table %s) has encrypted fields and is not among the models given: its values would not open once the old DEKs are destroyed", job, m.name, k)
			return false
		}
		return true
	})
	if missing != nil {
		return nil, missing
	}
	if !opts.DryRun {
		if err := keystore.EnsureRetiredTable(ctx, db); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// settle waits until r.wait has passed since t.
func (r *rekeyer) settle(ctx context.Context, t time.Time) error {
	d := time.Until(t.Add(r.wait))
	if err := fault("settle"); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// eachProfile calls fn with the owners of the profile table in
// primary-key order, r.batch at a time.
func (r *rekeyer) eachProfile(fn func([]any) error) error {
	prof := r.p.prof
	var last any
	for {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		q := r.db.Table(prof.Table).
			Clauses(clause.Select{Columns: []clause.Column{{Name: prof.ID.DBName}, {Name: prof.Owner.DBName}}}).
			Order(clause.OrderByColumn{Column: clause.Column{Name: prof.ID.DBName}}).Limit(r.batch)
		if last != nil {
			q = q.Where(clause.Gt{Column: clause.Column{Name: prof.ID.DBName}, Value: last})
		}
		rows, err := q.Rows()
		if err != nil {
			return fmt.Errorf("envelope: %s: read %s: %w", r.job, prof.Table, err)
		}
		var owners []any
		n := 0
		for rows.Next() {
			var id, o any
			if err := rows.Scan(&id, &o); err != nil {
				rows.Close()
				return fmt.Errorf("envelope: %s: read %s: %w", r.job, prof.Table, err)
			}
			if b, ok := id.([]byte); ok {
				id = string(b)
			}
			last, n = id, n+1
			if o = r.profileOwner(o); o != nil {
				owners = append(owners, o)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("envelope: %s: read %s: %w", r.job, prof.Table, err)
		}
		if n == 0 {
			return nil
		}
		if err := fn(owners); err != nil {
			return err
		}
		if n < r.batch {
			return nil
		}
	}
}

// profileOwner normalises an owner scanned from the profile table.
func (r *rekeyer) profileOwner(v any) any {
	if b, ok := v.([]byte); ok {
		v = string(b)
	}
	if s, ok := v.(string); ok && r.p.prof.Owner.IndirectFieldType.Kind() != reflect.String {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil
		}
		v = n
	}
	return normOwnerAny(v)
}
