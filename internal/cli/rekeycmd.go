package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/rotate"
)

var cmdRekeyAll = &command{
	name:  "rekey-all",
	args:  "--format fernet|bound --model-table TABLE --owner COLUMN --column COLUMN [--index COLUMN=TAG] [--pk COLUMN] [--row] [--model-table ...] [--settle D] [--dry-run] [--env-file PATH] [--batch-size N]",
	short: "give every owner a new DEK, and seal their values again under it",
	long: `Gives every owner of the profile table a new DEK and seals each of the
owner's values again under it: what envelope.RekeyAll does with the app's
models, after the master key leaked (rotate first: rotation alone does not
change the DEKs). The command does not know the app's Go models, so its
command line describes each of them: --model-table starts a model, and the
flags after it, up to the next --model-table, describe it, as for reseal
(--pk, --pk-type, --owner, --owner-type, --column, --row) and reindex
(--index COLUMN=TAG, the envelope tag of each blind index):

  envelope rekey-all --format fernet \
      --model-table credentials --owner user_id --column password,api_key \
      --model-table users --owner id --column email \
          --index 'email_idx=index:email;scope:global'

Give every table holding encrypted values of the owners: the old DEKs are
destroyed at the end, and a value only they open is lost with them. Give
every per-owner blind index (scope:owner, the default): its values are
recomputed under the new DEK; global ones do not change. --format is the
app's Config.Format, the format values are sealed in.

Each owner is rekeyed in one transaction that locks the owner's profile row
and rows (the app's writers for the owner wait), keeping the old DEK in the
table envelope_retired_deks. The command then waits --settle, at least the
longest Config.CacheTTL of the app instances, which may go on writing under
an old DEK until their caches let it go; then it seals again what they wrote
so, and destroys the old DEKs. A run that was stopped at any point loses
nothing: run the same command again to finish it (owners already rekeyed are
not rekeyed twice). envelope rotate refuses to run until it is finished.

--dry-run counts the owners and their encrypted values, and writes nothing.
Exits 0 when the run completes (unreadable values are a warning), 1 when it
fails, 2 on a bad command line.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		r := &o.rk
		field := func(set func(m *resealFlags, v string) error) flag.Value { return rekeyModelFlag{r: r, set: set} }
		fs.Var(rekeyModelFlag{r: r, start: true, set: func(m *resealFlags, v string) error { m.table = v; return nil }}, "model-table", "start a model: its `table`")
		fs.Var(field(func(m *resealFlags, v string) error { m.pk = v; return nil }), "pk", "the model's primary key `column` (default id)")
		fs.Var(field(func(m *resealFlags, v string) error { return m.pkType.Set(v) }), "pk-type", "the primary key's `type`: int or string")
		fs.Var(field(func(m *resealFlags, v string) error { m.owner = v; return nil }), "owner", "the model's owner `column` (its field tagged envelope:\"owner\")")
		fs.Var(field(func(m *resealFlags, v string) error { return m.ownerType.Set(v) }), "owner-type", "the owner's `type`, as in the profile table: int or string")
		fs.Var(field(func(m *resealFlags, v string) error { return m.columns.Set(v) }), "column", "an encrypted `column` of the model (repeat, or separate by commas)")
		fs.Var(rekeyModelFlag{r: r, isBool: true, set: func(m *resealFlags, v string) error {
			b, err := strconv.ParseBool(v)
			m.row = b
			return err
		}}, "row", "the model's primary key is tagged envelope:\"row\"")
		fs.Var(field(func(m *resealFlags, v string) error {
			r.indexes[len(r.indexes)-1] = append(r.indexes[len(r.indexes)-1], v)
			return nil
		}), "index", "a blind index of the model, as `COLUMN=TAG` (repeat)")
		fs.StringVar(&r.format, "format", "", "the `format` the app writes, its Config.Format: fernet or bound")
		fs.DurationVar(&r.settle, "settle", envelope.DefaultCacheTTL, "how long to wait before the old DEKs are destroyed: at least the app instances' CacheTTL (0: no wait, with no app running)")
		fs.BoolVar(&o.dryRun, "dry-run", false, "count the owners and values that would be rekeyed; write nothing")
		fs.IntVar(&o.batchSize, "batch-size", envelope.DefaultRekeyBatch, "owners per progress report")
		fs.StringVar(&o.envFile, "env-file", "", "read the keys from this env file instead of the environment")
	},
	run:      runRekeyAll,
	database: true,
}

// rekeyFlags are rekey-all's own flags: one resealFlags per model, and its
// --index values.
type rekeyFlags struct {
	models  []*resealFlags
	indexes [][]string
	format  string
	settle  time.Duration
}

// rekeyModelFlag is a flag of the model the last --model-table started.
type rekeyModelFlag struct {
	r      *rekeyFlags
	set    func(m *resealFlags, v string) error
	start  bool // --model-table: starts a model
	isBool bool
}

func (f rekeyModelFlag) String() string   { return "" }
func (f rekeyModelFlag) IsBoolFlag() bool { return f.isBool }

func (f rekeyModelFlag) Set(v string) error {
	if f.start {
		m := &resealFlags{pk: "id", pkType: colType{name: "int"}, ownerType: colType{name: "int"}}
		f.r.models = append(f.r.models, m)
		f.r.indexes = append(f.r.indexes, nil)
	}
	if len(f.r.models) == 0 {
		return errors.New("give --model-table first: the flags after it describe that model")
	}
	return f.set(f.r.models[len(f.r.models)-1], v)
}

// specs checks rekey-all's command line and returns the models it
// describes and the format to write.
func (r *rekeyFlags) specs(profileTable, profileOwnerCol string) ([]*modelSpec, envelope.Format, error) {
	if len(r.models) == 0 {
		return nil, 0, usagef("rekey-all: describe each model holding encrypted values: --model-table TABLE --owner COLUMN --column COLUMN ...")
	}
	if r.settle < 0 {
		return nil, 0, usagef("rekey-all: --settle %v is negative", r.settle)
	}
	var out []*modelSpec
	var format envelope.Format
	tables := map[string]bool{}
	var owner reflect.Type
	for i, m := range r.models {
		m.format = r.format
		s, f, err := m.spec(profileTable, profileOwnerCol)
		if err != nil {
			return nil, 0, rekeyUsage(err)
		}
		format = f
		if tables[s.table] {
			return nil, 0, usagef("rekey-all: --model-table %s is given twice", s.table)
		}
		tables[s.table] = true
		if owner != nil && owner != s.ownerType {
			return nil, 0, usagef("rekey-all: --model-table %s: the owners' type differs from the other models' (--owner-type): it is the profile table's", s.table)
		}
		owner = s.ownerType
		for _, v := range r.indexes[i] {
			ix, err := parseIndexFlag(v, s.sources)
			if err != nil {
				return nil, 0, rekeyUsage(err)
			}
			s.indexes = append(s.indexes, ix)
		}
		out = append(out, s)
	}
	return out, format, nil
}

// rekeyUsage gives a usage error of reseal's or reindex's checks
// rekey-all's name.
func rekeyUsage(err error) error {
	var u *usageError
	if !errors.As(err, &u) {
		return err
	}
	msg := u.msg
	for _, p := range []string{"reseal: ", "reindex: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	return usagef("rekey-all: %s", msg)
}

func runRekeyAll(ctx context.Context, e *env, o *opts) error {
	specs, format, err := o.rk.specs(o.table, o.ownerCol)
	if err != nil {
		return err
	}
	ring, err := o.keyring(ctx, e)
	if err != nil {
		return err
	}
	db, err := o.openJob()
	if err != nil {
		return err
	}
	defer closeDB(db)
	m := db.WithContext(ctx).Migrator()
	var models []any
	for _, s := range specs {
		for _, c := range s.columns() {
			if !m.HasColumn(s.table, c[0]) {
				return fmt.Errorf("rekey-all: %s has no column %q (%s)", s.table, c[0], c[1])
			}
		}
		models = append(models, envelope.TableModel{Table: s.table, Model: reflect.New(s.structType()).Interface()})
	}
	var total int64
	if err := db.WithContext(ctx).Table(o.table).Count(&total).Error; err != nil {
		return fmt.Errorf("rekey-all: count %s: %w", db.Statement.Quote(o.table), err)
	}
	p := envelope.New(envelope.Config{Keys: ring, Profile: specs[0].profile(), Format: format, Logger: slog.New(slog.NewTextHandler(e.stderr, nil))})
	if err := db.Use(p); err != nil {
		return rekeyError(err)
	}
	settle := o.rk.settle
	if settle == 0 {
		settle = -1 // RekeyAll reads zero as the plugin's CacheTTL
	}
	if !o.dryRun {
		fmt.Fprintf(e.stderr, "rekey-all: after the first phase, waiting %v (--settle) for the app instances to let the old DEKs go\n", o.rk.settle)
	}
	bar := newProgress(e, "rekeying")
	bar.unit = "owners"
	phase := 1
	res, err := envelope.RekeyAll(ctx, db, models, envelope.RekeyOptions{
		BatchSize: o.batchSize,
		Settle:    settle,
		DryRun:    o.dryRun,
		Progress: func(r envelope.RekeyResult) {
			if r.Phase != phase {
				bar.finish()
				bar = newProgress(e, "sweeping")
				bar.unit = "owners"
				phase = r.Phase
			}
			n, of := r.Owners+r.Shredded+r.Skipped, int(total)
			if r.Phase == 2 {
				// Owners swept, of those with a retired DEK: about those
				// the first phase rekeyed or found rekeyed.
				n, of = r.Retired, r.Owners+r.Skipped
			}
			bar.update(rotate.Progress{Scanned: n, Total: max(of, n)})
		},
	})
	bar.finish()
	if res.Unreadable > 0 {
		fmt.Fprintf(e.stderr, "envelope: warning: %d values open under neither their owner's DEK nor a retired one: left as they were\n", res.Unreadable)
	}
	if err != nil && ctx.Err() != nil {
		err = &commandError{msg: "rekey-all: interrupted", err: err} // SIGINT or SIGTERM
	}
	if err != nil {
		if o.dryRun {
			return rekeyError(err)
		}
		fmt.Fprintf(e.stdout, "rekeyed %d owners (%d values) before the error\n", res.Owners, res.Values)
		return fmt.Errorf("%w (nothing is lost, and every value opens under its owner's DEK or a retired one; run the same command again to finish)", rekeyError(err))
	}
	if o.dryRun {
		fmt.Fprintf(e.stdout, "dry run: would rekey %d owners and %d values (%d owners shredded, %d already rekeyed by a stopped run); nothing was written\n",
			res.Owners, res.Values, res.Shredded, res.Skipped)
		return nil
	}
	fmt.Fprintf(e.stdout, "rekeyed %d owners: %d values sealed again, %d index values recomputed, %d stragglers, %d unreadable, %d old DEKs destroyed (%d shredded owners skipped, %d done by a stopped run)\n",
		res.Owners, res.Values, res.Indexes, res.Stragglers, res.Unreadable, res.Retired, res.Shredded, res.Skipped)
	return nil
}

// rekeyError gives an error from package envelope the command's name in
// place of the package's, once.
func rekeyError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "envelope: ")
	msg = strings.TrimPrefix(msg, "RekeyAll: ")
	msg = strings.TrimPrefix(msg, "RekeyAll ")
	if !strings.HasPrefix(msg, "rekey-all") {
		msg = "rekey-all: " + msg
	}
	return &commandError{msg: msg, err: err}
}
