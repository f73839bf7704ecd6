package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/rotate"
)

var cmdReindex = &command{
	name:  "reindex",
	args:  "--model-table TABLE --owner COLUMN --source COLUMN --index COLUMN=TAG [--index ...] [--pk COLUMN] [--rotate [--settle D]] [--dry-run] [--env-file PATH] [--batch-size N]",
	short: "fill a table's blind indexes, or rotate their keys",
	long: `Fills the blind indexes of a table that already has rows, or, with --rotate,
rotates their global index keys: what envelope.Reindex does with the app's
model. The command does not know the app's Go models, so its command line
describes the model: its table (--model-table), primary key (--pk) and owner
(--owner) columns, the encrypted columns the indexes are of (--source), and
each index column with the envelope tag of its field in the model:

  envelope reindex --model-table users --owner user_id --source email \
      --index 'email_idx=index:Email;scope:global;bits:12;transform:lower'

The --index tags must be the model's, option for option: an index written
with another transform, length, scope or name holds values the app's Match
does not find. A tag's index: names the source by column, or by the model's
Go field as GORM's default naming makes it a column (Email: email). Its
name: defaults, as in the app, to the model's table and the source column
(users.email), so that the keys are the app's. For a self-owned model --owner
is the primary key. --pk-type and --owner-type are string for text keys; the
owner's type is that of the profile table's owner column. The profile table
is named by --table and its column flags, as for the other commands.

Rows are read by primary key in batches of --batch-size, and a batch is
written in one transaction, to the index columns only, and only where the
encrypted value is still the one read: it is safe while the app runs. It can
be stopped at any point and run again: rows already right are skipped. Until
an index is filled, Match does not find the rows written before it existed.

--rotate is the zero-downtime rotation of the global index keys, for a key
that may have leaked: each global index gets a new key version, which the
app's writes use as soon as they learn of it, while Match looks under every
live version, so that no row stops matching. Every row is recomputed under
the new version; the command then waits --settle, for every app instance to
learn of the new version (within its Config.CacheTTL, 5m by default), passes
again over the table to fix what was written under the old version meanwhile,
and retires the old version. A rotation stopped part way is finished by the
next run, with or without --rotate. Per-owner indexes derive their keys from
the owners' DEKs and are not rotated.

--dry-run counts the rows whose index values would be written, and writes
none (on MySQL the plugin's lock table is still created if it is missing,
as by any app start). A row whose encrypted value does not open (a shredded
owner) is counted as unreadable and left as it is: Match never returns it.
Exits 0 when the run completes, 1 when it fails, 2 on a bad command line.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		r := &o.rx
		r.pkType, r.ownerType = colType{name: "int"}, colType{name: "int"}
		fs.StringVar(&r.table, "model-table", "", "the model's `table`")
		fs.StringVar(&r.pk, "pk", "id", "the model's primary key `column`")
		fs.Var(&r.pkType, "pk-type", "the primary key's `type`: int or string")
		fs.StringVar(&r.owner, "owner", "", "the model's owner `column` (its field tagged envelope:\"owner\")")
		fs.Var(&r.ownerType, "owner-type", "the owner's `type`, as in the profile table: int or string")
		fs.Var(&r.sources, "source", "an encrypted `column` an index is of (repeat, or separate by commas)")
		fs.Var(&r.indexes, "index", "a blind index, as `COLUMN=TAG`: its column and the envelope tag of its field in the model (repeat)")
		fs.BoolVar(&r.rotate, "rotate", false, "rotate the global index keys: a new version, every row under it, then the old one retired")
		fs.DurationVar(&r.settle, "settle", envelope.DefaultCacheTTL, "how long a rotation waits for the app instances to learn of the new key version, at least their CacheTTL (0: no wait, with no app running)")
		fs.BoolVar(&o.dryRun, "dry-run", false, "count the rows whose index values would be written; write none")
		fs.IntVar(&o.batchSize, "batch-size", envelope.DefaultReindexBatch, "rows per batch (one transaction each)")
		fs.StringVar(&o.envFile, "env-file", "", "read the keys from this env file instead of the environment")
	},
	run:      runReindex,
	database: true,
}

func runReindex(ctx context.Context, e *env, o *opts) error {
	spec, err := o.rx.spec(o.table, o.ownerCol)
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
	var total int64
	if err := db.WithContext(ctx).Table(spec.table).Count(&total).Error; err != nil {
		return fmt.Errorf("reindex: count %s: %w", db.Statement.Quote(spec.table), err)
	}
	// Before anything is written: a global index of a mistyped column
	// would get a key of its own.
	m := db.WithContext(ctx).Migrator()
	for _, c := range spec.columns() {
		if !m.HasColumn(spec.table, c[0]) {
			return fmt.Errorf("reindex: %s has no column %q (%s)", spec.table, c[0], c[1])
		}
	}
	p := envelope.New(envelope.Config{Keys: ring, Profile: spec.profile(), Logger: slog.New(slog.NewTextHandler(e.stderr, nil))})
	if err := db.Use(p); err != nil {
		return reindexError(err)
	}

	settle := o.rx.settle
	if settle == 0 {
		settle = time.Nanosecond // Reindex reads zero as its default
	}
	if o.rx.rotate && !o.dryRun {
		fmt.Fprintf(e.stderr, "reindex: rotating the global index keys of %s; after the first pass, waiting %v (--settle) for the app instances to learn of the new version\n", spec.table, o.rx.settle)
	}
	bars := &passBars{e: e, total: int(total)}
	res, err := envelope.Reindex(ctx, db.Table(spec.table), reflect.New(spec.structType()).Interface(), envelope.ReindexOptions{
		BatchSize: o.batchSize,
		Rotate:    o.rx.rotate,
		Settle:    settle,
		DryRun:    o.dryRun,
		Progress:  bars.update,
	})
	bars.finish()
	if res.Unreadable == 1 {
		fmt.Fprintf(e.stderr, "envelope: warning: 1 row of %s does not decrypt (a shredded owner, or a value no key opens): its index values were left as they were, and Match does not return it\n", spec.table)
	} else if res.Unreadable > 1 {
		fmt.Fprintf(e.stderr, "envelope: warning: %d rows of %s do not decrypt (shredded owners, or values no key opens): their index values were left as they were, and Match does not return them\n", res.Unreadable, spec.table)
	}
	if err != nil && ctx.Err() != nil {
		err = &commandError{msg: "reindex: interrupted", err: err} // SIGINT or SIGTERM
	}
	if err != nil {
		if bars.pass == 0 || o.dryRun {
			return reindexError(err)
		}
		fmt.Fprintf(e.stdout, "wrote the index values of %d rows of %s before the error\n", res.Updated, spec.table)
		return fmt.Errorf("%w (the values written are kept and no row stops matching; run the same command again to go on)", reindexError(err))
	}
	passes := ""
	if bars.pass > 1 {
		passes = fmt.Sprintf(" in %d passes", bars.pass)
	}
	if o.dryRun {
		fmt.Fprintf(e.stdout, "dry run: would write the index values of %d rows of %s (%d rows scanned, %d unreadable); nothing was written\n",
			res.Updated, spec.table, res.Scanned, res.Unreadable)
		if o.rx.rotate {
			fmt.Fprintln(e.stdout, "dry run: --rotate would also give each global index a new key version (unless a rotation is under way) and rewrite every row's global index values under it")
		}
		return nil
	}
	fmt.Fprintf(e.stdout, "reindexed %s: %d rows scanned%s, %d updated, %d unreadable, %s retired\n",
		spec.table, res.Scanned, passes, res.Updated, res.Unreadable, keyVersions(res.Retired))
	return nil
}

func keyVersions(n int) string {
	if n == 1 {
		return "1 old key version"
	}
	return fmt.Sprintf("%d old key versions", n)
}

// reindexError gives an error from package envelope the command's name in
// place of the package's, once.
func reindexError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "envelope: ")
	if !strings.HasPrefix(msg, "reindex") {
		msg = "reindex: " + msg
	}
	return &commandError{msg: msg, err: err}
}

// commandError is err with another message.
type commandError struct {
	msg string
	err error
}

func (e *commandError) Error() string { return e.msg }
func (e *commandError) Unwrap() error { return e.err }

// passBars draws a progress bar per pass of envelope.Reindex.
type passBars struct {
	e     *env
	total int // rows counted before the run
	pass  int // the pass shown, 0 before the first batch
	bar   *progress
}

func (b *passBars) update(pr envelope.ReindexProgress) {
	if pr.Pass != b.pass {
		b.finish()
		label := "reindexing"
		if pr.Pass > 1 {
			label = fmt.Sprintf("pass %d", pr.Pass)
		}
		b.bar = newProgress(b.e, label)
		b.bar.unit = "rows"
		b.pass = pr.Pass
	}
	b.bar.update(rotate.Progress{Scanned: pr.Scanned, Total: max(b.total, pr.Scanned)})
}

func (b *passBars) finish() {
	if b.bar != nil {
		b.bar.finish()
		b.bar = nil
	}
}
