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

	"gorm.io/gorm/clause"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/rotate"
)

// Environment variables of the import keys: the flags' defaults, so that
// the keys need not be on the command line (where ps shows them).
const (
	envImportFernetKey = "ENVELOPE_IMPORT_FERNET_KEY"
	envTOMSecretKey    = "TOM_SECRET_KEY"
)

var cmdReseal = &command{
	name:  "reseal",
	args:  "--model-table TABLE --owner COLUMN --column COLUMN [--column ...] --format fernet|bound [--pk COLUMN] [--row] [--fernet-key KEY] [--tom-secret-key SECRET] [--after PK] [--dry-run] [--env-file PATH] [--batch-size N]",
	short: "rewrite a table's values in another format, or import them from a single-key scheme",
	long: `Rewrites, in place, the encrypted values of a table in the format the app
writes (--format: its Config.Format), and imports values encrypted under one
app-wide key into the owners' DEKs: what envelope.Reseal does with the app's
model. The command does not know the app's Go models, so its command line
describes the model: its table (--model-table), primary key (--pk) and owner
(--owner) columns, and its encrypted columns (--column):

  envelope reseal --model-table credentials --owner user_id \
      --column password,api_key --format bound

Each value is read, and
  - left as it is if it already is in the --format format where it is;
  - sealed again in that format if it is the plugin's value in the other
    (a Fernet token, or a bound value), or a bound value of a model whose
    primary key was tagged envelope:"row" (--row) after it was written;
  - imported if it is a Fernet token under --fernet-key (default
    $` + envImportFernetKey + `), or a value TOM Toolkit 3 encrypted under its Django
    SECRET_KEY (--tom-secret-key, default $` + envTOMSecretKey + `): sealed under the
    owner's DEK, which is made for an owner who has none;
  - otherwise counted as unreadable, named on stderr, and left as it is (a
    shredded owner's values are never imported).

Set Config.Format in the app first, so that new writes use the format too;
reads work throughout, since every format the plugin wrote opens. Rows are
read by primary key in batches of --batch-size; a batch is locked, and
written in one transaction, so the command is safe while the app runs.
Values already done are left alone: a run that was stopped can simply be run
again, or go on after the last row done (--after, as the stopped run prints).
The keys given are never printed. A model with blind indexes needs envelope
reindex after an import: imported values have no index values yet.

--dry-run counts what would be written, and writes nothing, nor makes any
DEK. Exits 0 when the run completes (unreadable values are a warning), 1 when
it fails, 2 on a bad command line.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		r := &o.rs
		r.pkType, r.ownerType = colType{name: "int"}, colType{name: "int"}
		fs.StringVar(&r.table, "model-table", "", "the model's `table`")
		fs.StringVar(&r.pk, "pk", "id", "the model's primary key `column`")
		fs.Var(&r.pkType, "pk-type", "the primary key's `type`: int or string")
		fs.StringVar(&r.owner, "owner", "", "the model's owner `column` (its field tagged envelope:\"owner\")")
		fs.Var(&r.ownerType, "owner-type", "the owner's `type`, as in the profile table: int or string")
		fs.Var(&r.columns, "column", "an encrypted `column` (repeat, or separate by commas)")
		fs.BoolVar(&r.row, "row", false, "the model's primary key is tagged envelope:\"row\": values are bound to their row")
		fs.StringVar(&r.format, "format", "", "the `format` to write, the app's Config.Format: fernet or bound")
		fs.Var(hidden{&r.fernetKey}, "fernet-key", "import Fernet tokens under this app-wide `key` (default $"+envImportFernetKey+")")
		fs.Var(hidden{&r.tomSecret}, "tom-secret-key", "import TOM Toolkit 3's values, encrypted under this Django `SECRET_KEY` (default $"+envTOMSecretKey+")")
		fs.StringVar(&r.after, "after", "", "start after this primary `key` (a stopped run prints it)")
		fs.BoolVar(&o.dryRun, "dry-run", false, "count the values that would be written; write none")
		fs.IntVar(&o.batchSize, "batch-size", envelope.DefaultResealBatch, "rows per batch (one transaction each)")
		fs.StringVar(&o.envFile, "env-file", "", "read the keys from this env file instead of the environment")
	},
	run:      runReseal,
	database: true,
}

// resealFlags are reseal's own flags.
type resealFlags struct {
	table, pk, owner     string
	pkType, ownerType    colType
	columns              listFlag
	row                  bool
	format               string
	fernetKey, tomSecret string
	after                string
}

// spec checks reseal's command line and returns the model it describes
// and the format to write. Every error is a usage error naming the flag.
func (r *resealFlags) spec(profileTable, profileOwnerCol string) (*modelSpec, envelope.Format, error) {
	s := &modelSpec{table: strings.TrimSpace(r.table), pk: strings.TrimSpace(r.pk), owner: strings.TrimSpace(r.owner), row: r.row}
	var format envelope.Format
	switch f := strings.ToLower(strings.TrimSpace(r.format)); f {
	case "fernet":
		format = envelope.FormatFernet
	case "bound":
		format = envelope.FormatBound
	case "":
		return nil, 0, usagef("reseal: set --format to the format the app writes (its Config.Format): fernet or bound")
	default:
		return nil, 0, usagef("reseal: --format %q: want fernet or bound", r.format)
	}
	switch {
	case s.table == "":
		return nil, 0, usagef("reseal: set --model-table to the table of the model whose values to reseal")
	case s.owner == "":
		return nil, 0, usagef("reseal: set --owner to the model's owner column (its field tagged envelope:\"owner\"; for a self-owned model, its primary key)")
	case len(r.columns) == 0:
		return nil, 0, usagef("reseal: set --column to the model's encrypted columns")
	case profileOwnerCol == "-":
		return nil, 0, usagef("reseal: --owner-column is -, but reseal reads each owner's DEK by it: name the profile table's owner column")
	case s.table == profileTable:
		return nil, 0, usagef("reseal: --model-table %s is the profile table (--table), which holds no encrypted column", s.table)
	case r.row && s.owner == s.pk:
		return nil, 0, usagef("reseal: --row: the owner is the primary key %s, which binds each value to its row already", s.pk)
	}
	for _, c := range []struct{ flag, name string }{{"--model-table", s.table}, {"--pk", s.pk}, {"--owner", s.owner}} {
		if err := checkColumn(c.flag, c.name); err != nil {
			return nil, 0, resealUsage(err)
		}
	}
	s.pkType, s.ownerType = r.pkType.goType(), r.ownerType.goType()
	if s.owner == s.pk {
		if r.pkType.set && r.ownerType.set && r.pkType.name != r.ownerType.name {
			return nil, 0, usagef("reseal: --owner is the primary key %s, so --pk-type %s and --owner-type %s must agree", s.pk, r.pkType.name, r.ownerType.name)
		}
		if r.ownerType.set {
			s.pkType = s.ownerType
		} else {
			s.ownerType = s.pkType
		}
	}
	taken := map[string]string{s.pk: "--pk"}
	if s.owner != s.pk {
		taken[s.owner] = "--owner"
	}
	for _, list := range r.columns {
		for c := range strings.SplitSeq(list, ",") {
			c = strings.TrimSpace(c)
			if err := checkColumn("--column", c); err != nil {
				return nil, 0, resealUsage(err)
			}
			if f, ok := taken[c]; ok {
				return nil, 0, usagef("reseal: --column %s is already given as %s", c, f)
			}
			taken[c] = "--column"
			s.sources = append(s.sources, c)
		}
	}
	if r.after != "" && s.pkType.Kind() != reflect.String {
		if _, err := strconv.ParseInt(r.after, 10, 64); err != nil {
			return nil, 0, usagef("reseal: --after %q: the primary key is an integer (--pk-type int)", r.after)
		}
	}
	return s, format, nil
}

// resealUsage gives a usage error of checkColumn reseal's name.
func resealUsage(err error) error {
	return usagef("reseal: %s", strings.TrimPrefix(err.Error(), "reindex: "))
}

// decoders returns the decoders of the import keys given, from the flags
// or the environment. A bad key is a usage error naming its flag, never
// the key.
func (r *resealFlags) decoders(e *env) ([]envelope.Decoder, error) {
	var out []envelope.Decoder
	key := r.fernetKey
	if key == "" {
		key, _ = e.lookup(envImportFernetKey)
	}
	if key = strings.TrimSpace(key); key != "" {
		d, err := envelope.FernetDecoder(key)
		if err != nil {
			var ke *dek.KeyError
			if errors.As(err, &ke) {
				return nil, usagef("reseal: --fernet-key (or %s): %s", envImportFernetKey, ke.Reason)
			}
			return nil, usagef("reseal: --fernet-key (or %s) is not a Fernet key", envImportFernetKey)
		}
		out = append(out, d)
	}
	secret := r.tomSecret
	if secret == "" {
		secret, _ = e.lookup(envTOMSecretKey)
	}
	if secret != "" {
		d, err := envelope.TOMToolkitDecoder(secret)
		if err != nil {
			return nil, usagef("reseal: --tom-secret-key (or %s) cannot be used", envTOMSecretKey)
		}
		out = append(out, d)
	}
	return out, nil
}

func runReseal(ctx context.Context, e *env, o *opts) error {
	spec, format, err := o.rs.spec(o.table, o.ownerCol)
	if err != nil {
		return err
	}
	from, err := o.rs.decoders(e)
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
	var after any
	if o.rs.after != "" {
		after = o.rs.after
		if spec.pkType.Kind() != reflect.String {
			n, _ := strconv.ParseInt(o.rs.after, 10, 64)
			after = n
		}
	}
	count := db.WithContext(ctx).Table(spec.table)
	if after != nil {
		count = count.Where(clause.Gt{Column: clause.Column{Name: spec.pk}, Value: after})
	}
	var total int64
	if err := count.Count(&total).Error; err != nil {
		return fmt.Errorf("reseal: count %s: %w", db.Statement.Quote(spec.table), err)
	}
	m := db.WithContext(ctx).Migrator()
	for _, c := range spec.columns() {
		if !m.HasColumn(spec.table, c[0]) {
			return fmt.Errorf("reseal: %s has no column %q (%s)", spec.table, c[0], c[1])
		}
	}
	p := envelope.New(envelope.Config{Keys: ring, Profile: spec.profile(), Format: format, Logger: slog.New(slog.NewTextHandler(e.stderr, nil))})
	if err := db.Use(p); err != nil {
		return resealError(err)
	}

	bar := newProgress(e, "resealing")
	bar.unit = "rows"
	res, err := envelope.Reseal(ctx, db.Table(spec.table), reflect.New(spec.structType()).Interface(), envelope.ResealOptions{
		BatchSize: o.batchSize,
		DryRun:    o.dryRun,
		From:      from,
		After:     after,
		Progress: func(r envelope.ResealResult) {
			bar.update(rotate.Progress{Scanned: r.Scanned, Total: max(int(total), r.Scanned)})
		},
	})
	bar.finish()
	printResealFailures(e, spec, res)
	if err != nil && ctx.Err() != nil {
		err = &commandError{msg: "reseal: interrupted", err: err} // SIGINT or SIGTERM
	}
	if err != nil {
		if o.dryRun || res.Last == nil {
			return resealError(err)
		}
		fmt.Fprintf(e.stdout, "resealed %d and imported %d values of %s before the error, up to primary key %v\n", res.Resealed, res.Imported, spec.table, res.Last)
		return fmt.Errorf("%w (the values written are kept and every value still reads; run the same command again to go on, or add --after %v)", resealError(err), res.Last)
	}
	if o.dryRun {
		fmt.Fprintf(e.stdout, "dry run: would reseal %d and import %d values of %s in the %s format (%d rows scanned, %d values already %s, %d unreadable); nothing was written\n",
			res.Resealed, res.Imported, spec.table, format, res.Scanned, res.Skipped, format, res.Unreadable)
		return nil
	}
	fmt.Fprintf(e.stdout, "resealed %s in the %s format: %d rows scanned, %d values resealed, %d imported, %d already %s, %d unreadable\n",
		spec.table, format, res.Scanned, res.Resealed, res.Imported, res.Skipped, format, res.Unreadable)
	return nil
}

// printResealFailures names the unreadable values on stderr, by row and
// column.
func printResealFailures(e *env, spec *modelSpec, res envelope.ResealResult) {
	if res.Unreadable == 0 {
		return
	}
	const show = 20
	for i, f := range res.Failures {
		if i == show {
			break
		}
		col := f.Field
		if n, err := strconv.Atoi(strings.TrimPrefix(f.Field, "S")); err == nil && n < len(spec.sources) {
			col = spec.sources[n]
		}
		fmt.Fprintf(e.stderr, "envelope: cannot open: %s %s=%v column %s (owner %v): %s\n", spec.table, spec.pk, f.Row, col, f.Owner, strings.TrimPrefix(f.Err.Error(), "envelope: "))
	}
	if shown := min(len(res.Failures), show); res.Unreadable > shown {
		fmt.Fprintf(e.stderr, "envelope: ... and %d more\n", res.Unreadable-shown)
	}
	what := "1 value"
	if res.Unreadable > 1 {
		what = fmt.Sprintf("%d values", res.Unreadable)
	}
	fmt.Fprintf(e.stderr, "envelope: warning: %s of %s open under neither the owner's DEK nor an import key: left as they were\n", what, spec.table)
}

// resealError gives an error from package envelope the command's name in
// place of the package's, once.
func resealError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "envelope: ")
	if m, ok := strings.CutPrefix(msg, "Reseal: "); ok {
		msg = m
	} else {
		msg = strings.TrimPrefix(msg, "Reseal ")
	}
	if !strings.HasPrefix(msg, "reseal") {
		msg = "reseal: " + msg
	}
	return &commandError{msg: msg, err: err}
}
