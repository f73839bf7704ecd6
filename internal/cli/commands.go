package cli

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/rotate"
)

var cmdKeygen = &command{
	name:  "keygen",
	short: "print a new master key",
	long: `Prints a new random master key (a Fernet key: 44 characters of URL-safe
base64) on stdout. Store it as DEK_ENCRYPTION_KEY, in a secret store, and
back it up: without it the encrypted data cannot be read.`,
	run: func(_ context.Context, e *env, _ *opts) error {
		k, err := dek.GenerateKey()
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(e.stdout, k)
		return err
	},
	offline: true,
}

var cmdStatus = &command{
	name:  "status",
	args:  "[--env-file PATH] [--batch-size N]",
	short: "count the DEKs each configured key opens",
	long: `Opens every DEK and prints how many each configured key opens (the primary,
then each previous key by fingerprint), how many no key opens, and how many
profiles have no DEK or a shredded one. A previous key that opens no DEK can
be removed from DEK_ENCRYPTION_KEY_PREVIOUS once every app instance runs with
the current primary. The "legacy layout" line counts the DEKs, among those
the keys open, that are in TOM Toolkit's layout rather than bound to their
profile row (envelope rotate --bind-deks binds them). Writes nothing.

When the database has blind-index keys (the table envelope_index_keys), a
second column counts them the same way: a previous key can be removed once it
opens neither DEKs nor index keys.

Status is a report: it exits 0 even when some DEKs open under no configured
key, counting them and warning on stderr; envelope verify is the check that
exits 1 then. Status exits 1 only when it cannot count (the database or a
key cannot be opened), and 2 on a bad command line.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		o.batchFlags(fs)
		fs.StringVar(&o.envFile, "env-file", "", "read the keys from this env file instead of the environment")
	},
	run: func(ctx context.Context, e *env, o *opts) error {
		st, err := scanKeys(ctx, e, o, "status")
		if err != nil {
			return err
		}
		printStatus(e.stdout, st)
		if n := st.Undecryptable; n == 1 {
			fmt.Fprintln(e.stderr, "envelope: warning: 1 DEK opens under no configured key; envelope verify names it and exits 1")
		} else if n > 1 {
			fmt.Fprintf(e.stderr, "envelope: warning: %d DEKs open under no configured key; envelope verify names them and exits 1\n", n)
		}
		if n := st.IndexUndecryptable; n == 1 {
			fmt.Fprintln(e.stderr, "envelope: warning: 1 blind-index key opens under no configured key; envelope verify names it and exits 1")
		} else if n > 1 {
			fmt.Fprintf(e.stderr, "envelope: warning: %d blind-index keys open under no configured key; envelope verify names them and exits 1\n", n)
		}
		return nil
	},
	database: true,
}

var cmdVerify = &command{
	name:  "verify",
	args:  "[--env-file PATH] [--batch-size N]",
	short: "open every DEK; fail if any cannot be opened",
	long: `Opens every DEK with the configured keys. Exits 0 if all open (or are empty or
shredded), 1 if any cannot be opened, naming each such profile (id and owner)
on stderr. Blind-index keys (the table envelope_index_keys), when there are
any, are opened too, and one that cannot be is named by index and version.
Writes nothing.`,
	flags: cmdStatus.flags,
	run: func(ctx context.Context, e *env, o *opts) error {
		st, err := scanKeys(ctx, e, o, "verify")
		if err != nil {
			return err
		}
		if st.Undecryptable > 0 || st.IndexUndecryptable > 0 {
			printFailures(e.stderr, "cannot open DEK", st.Failures, st.Undecryptable)
			printFailures(e.stderr, "cannot open", st.IndexFailures, st.IndexUndecryptable)
			return &rotate.FailedError{Op: "verify", Count: st.Undecryptable, IndexKeys: st.IndexUndecryptable}
		}
		fmt.Fprintf(e.stdout, "verified %d profiles: every DEK opens (%d empty, %d shredded)\n", st.Total, st.Empty, st.Shredded)
		if st.IndexTotal > 0 {
			fmt.Fprintf(e.stdout, "verified %d blind-index keys: every one opens\n", st.IndexTotal)
		}
		return nil
	},
	database: true,
}

var cmdBackfill = &command{
	name:  "backfill",
	args:  "[--env-file PATH] [--bind-deks] [--batch-size N] [--dry-run]",
	short: "give a DEK to every profile without one",
	long: `Gives a new DEK, encrypted under the primary key, to every profile whose DEK
column is NULL or empty. Only the DEK column is written, and only where it is
still empty, so it is safe while the app runs. With --bind-deks the DEKs are
bound to their owner and the profile table, as the plugin makes them under
Config.BindDEKs.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		cmdStatus.flags(fs, o)
		fs.BoolVar(&o.dryRun, "dry-run", false, "only count the profiles without a DEK")
		fs.BoolVar(&o.bindDEKs, "bind-deks", false, "bind the new DEKs to their profile rows")
	},
	run: func(ctx context.Context, e *env, o *opts) error {
		ring, err := o.keyring(ctx, e)
		if err != nil {
			return err
		}
		db, err := o.open()
		if err != nil {
			return err
		}
		defer closeDB(db)
		ro := o.rotateOptions(ring)
		p := newProgress(e, "backfill")
		ro.Progress = p.update
		n, err := rotate.Backfill(ctx, db, ro)
		p.finish()
		if err != nil {
			return named("backfill", err)
		}
		if o.dryRun {
			fmt.Fprintf(e.stdout, "dry run: %d profiles have no DEK\n", n)
		} else {
			fmt.Fprintf(e.stdout, "gave a new DEK to %d profiles\n", n)
		}
		return nil
	},
	database: true,
}

// scanKeys runs rotate.Status with the current keys for the command label.
func scanKeys(ctx context.Context, e *env, o *opts, label string) (rotate.StatusResult, error) {
	ring, err := o.keyring(ctx, e)
	if err != nil {
		return rotate.StatusResult{}, err
	}
	db, err := o.open()
	if err != nil {
		return rotate.StatusResult{}, err
	}
	defer closeDB(db)
	ro := o.rotateOptions(ring)
	p := newProgress(e, label)
	ro.Progress = p.update
	st, err := rotate.Status(ctx, db, ro)
	p.finish()
	return st, named(label, err)
}

// named gives an error from package rotate the command's name in place of
// the package's: the operator ran "envelope status", not package rotate.
func named(command string, err error) error {
	if re, ok := err.(*rotate.Error); ok {
		return fmt.Errorf("%s: %w", command, re.Err)
	}
	return err
}

// printStatus prints the counts per key; a column of blind-index keys
// when the database has any.
func printStatus(w io.Writer, st rotate.StatusResult) {
	index := st.IndexTotal > 0
	row := func(name, id string, n any, ix any) {
		if !index || ix == "" {
			fmt.Fprintf(w, "%-21s %-16s %8v\n", name, id, n)
		} else {
			fmt.Fprintf(w, "%-21s %-16s %8v %11v\n", name, id, n, ix)
		}
	}
	row("key", "fingerprint", "DEKs", "index keys")
	for i, k := range st.Keys {
		name := "primary"
		if k.Index > 0 {
			name = fmt.Sprintf("previous %d", k.Index)
		}
		row(name, k.ID, k.Count, st.IndexKeys[i].Count)
	}
	row("none (undecryptable)", "", st.Undecryptable, st.IndexUndecryptable)
	row("empty", "", st.Empty, "")
	row("shredded", "", st.Shredded, "")
	row("total", "", st.Total, st.IndexTotal)
	row("legacy layout", "", st.Legacy, "")
	for i, k := range st.Keys[1:] {
		switch ix := st.IndexKeys[i+1].Count; {
		case k.Count == 0 && ix == 0 && index:
			fmt.Fprintf(w, "previous key %d (%s) opens no DEK and no blind-index key: it can be retired once every app instance runs with the primary\n", k.Index, k.ID)
		case k.Count == 0 && ix == 0:
			fmt.Fprintf(w, "previous key %d (%s) opens no DEK: it can be retired once every app instance runs with the primary\n", k.Index, k.ID)
		case k.Count == 0:
			fmt.Fprintf(w, "previous key %d (%s) opens no DEK but %d blind-index keys: envelope rotate --resume rewraps them\n", k.Index, k.ID, ix)
		}
	}
}

// printFailures prints one line per failure, at most 20, on w.
func printFailures(w io.Writer, what string, fs []rotate.Failure, count int) {
	const show = 20
	for i, f := range fs {
		if i == show {
			break
		}
		fmt.Fprintf(w, "envelope: %s: %s\n", what, f)
	}
	if count > min(len(fs), show) {
		fmt.Fprintf(w, "envelope: ... and %d more\n", count-min(len(fs), show))
	}
}
