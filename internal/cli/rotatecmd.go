package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/rotate"
)

var cmdRotate = &command{
	name:  "rotate",
	args:  "[--new-key KEY | --resume] [--env-file PATH] [--batch-size N] [--dry-run]",
	short: "re-encrypt every DEK under a new master key",
	long: `Re-encrypts every DEK under a new master key, in this order:

 1. checks that every DEK opens under the current keys, and stops without
    changing anything if one does not;
 2. makes the new key (unless --new-key gives it) and records it before any
    DEK is rewritten: with --env-file, rewrites that file atomically (mode
    0600, other lines kept) to DEK_ENCRYPTION_KEY=<new key> and
    DEK_ENCRYPTION_KEY_PREVIOUS=<the old keys>; without it, prints those two
    lines on stdout, to be set before the app restarts;
 3. re-encrypts, batch by batch, every DEK not yet under the new key.

A rotation that is interrupted leaves every DEK readable with the recorded
keys; "envelope rotate --resume" finishes it. Only the DEK column is written;
the app's data is not touched. Exits 1 if any DEK could not be rotated.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		o.batchFlags(fs)
		fs.StringVar(&o.newKey, "new-key", "", "the new master `key` (default: make one)")
		fs.StringVar(&o.envFile, "env-file", "", "read the current keys from this env file and write the new ones into it")
		fs.BoolVar(&o.dryRun, "dry-run", false, "check and count what would be rotated; write nothing")
		fs.BoolVar(&o.resume, "resume", false, "make no new key: re-encrypt what is left under the current primary")
	},
	run: runRotate,
}

// rotatePasses bounds the extra passes made when DEKs appear under an old
// key while rotating (an app instance still running with the old primary).
const rotatePasses = 3

func runRotate(ctx context.Context, e *env, o *opts) error {
	if o.resume && o.newKey != "" {
		return usagef("rotate: --resume and --new-key exclude each other")
	}
	cur, err := o.currentKeys(e)
	if err != nil {
		return err
	}
	curRing, err := cur.ring()
	if err != nil {
		return err
	}
	newKey := strings.TrimSpace(o.newKey)
	switch {
	case o.resume:
		newKey = cur.primary
	case newKey == "":
		if newKey, err = dek.GenerateKey(); err != nil {
			return err
		}
	default:
		if err := checkKey("--new-key", newKey); err != nil {
			return err
		}
	}
	var previous []string
	for _, k := range cur.all() {
		if k != newKey && !contains(previous, k) {
			previous = append(previous, k)
		}
	}
	ring, err := dek.ParseKeyring(newKey, previous...)
	if err != nil {
		return err
	}
	newID := dek.KeyID(ring.Primary())

	db, err := o.open()
	if err != nil {
		return err
	}
	defer closeDB(db)

	// 1. Every DEK must open under the current keys before anything changes.
	ro := o.rotateOptions(curRing)
	p := newProgress(e, "checking")
	ro.Progress = p.update
	st, err := rotate.Status(ctx, db, ro)
	p.finish()
	if err != nil {
		return err
	}
	if st.Undecryptable > 0 {
		printFailures(e.stderr, "cannot open DEK", st.Failures, st.Undecryptable)
		return fmt.Errorf("rotate: refused: %d DEKs cannot be opened with the current keys; nothing was changed", st.Undecryptable)
	}

	if o.dryRun {
		ro := o.rotateOptions(ring)
		res, err := rotate.Run(ctx, db, ro)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "dry run: would rotate %d DEKs (%d already current, %d empty, %d shredded); nothing was changed\n",
			res.Rotated, res.AlreadyCurrent, res.Empty, res.Shredded)
		return nil
	}

	// 2. Record the new key durably before the first DEK is rewritten.
	out := e.stdout
	if newKey != cur.primary {
		if o.envFile != "" {
			err := rewriteEnvFile(o.envFile, [][2]string{
				{dek.EnvKey, newKey},
				{dek.EnvKeyPrevious, strings.Join(previous, ",")},
			})
			if err != nil {
				return fmt.Errorf("rotate: nothing was changed: %w", err)
			}
			fmt.Fprintf(out, "%s: %s is the new key %s; the old keys are in %s\n", o.envFile, dek.EnvKey, newID, dek.EnvKeyPrevious)
		} else {
			// stdout carries exactly the two lines; everything else goes to stderr.
			fmt.Fprintf(e.stdout, "%s=%s\n%s=%s\n", dek.EnvKey, newKey, dek.EnvKeyPrevious, strings.Join(previous, ","))
			out = e.stderr
			fmt.Fprintf(out, "set the two lines above in the app's environment; rotating to %s\n", newID)
		}
	}

	// 3. Rotate; pass again if DEKs under an old key appeared meanwhile.
	ro = o.rotateOptions(ring)
	// After an error from here on, every DEK still opens with the recorded
	// keys: say how to finish.
	finish := "envelope rotate --resume"
	if o.envFile != "" {
		finish = "envelope rotate --env-file " + o.envFile + " --resume"
	} else if newKey != cur.primary {
		finish = "set the two printed lines, then " + finish
	}
	stopped := func(err error) error {
		return fmt.Errorf("%w (every DEK still opens with the recorded keys; to finish: %s)", err, finish)
	}
	var total rotate.Result
	left := 0
	for pass := 1; pass <= rotatePasses; pass++ {
		p := newProgress(e, "rotating")
		ro.Progress = p.update
		res, err := rotate.Run(ctx, db, ro)
		p.finish()
		total.Rotated += res.Rotated
		total.Skipped = res.Skipped
		if err != nil {
			printFailures(e.stderr, "cannot rotate DEK", res.Failures, res.Failed)
			fmt.Fprintf(out, "rotated %d DEKs to %s before the error\n", total.Rotated, newID)
			var fe *rotate.FailedError
			if errors.As(err, &fe) {
				return err
			}
			return stopped(err)
		}
		ro.Progress = nil
		if st, err = rotate.Status(ctx, db, ro); err != nil {
			return stopped(err)
		}
		left = 0
		for _, k := range st.Keys[1:] {
			left += k.Count
		}
		if left == 0 && st.Undecryptable == 0 {
			break
		}
	}
	fmt.Fprintf(out, "rotated %d DEKs to %s: %d under it, %d empty, %d shredded\n",
		total.Rotated, newID, st.Keys[0].Count, st.Empty, st.Shredded)
	if st.Undecryptable > 0 {
		return fmt.Errorf("rotate: %d DEKs open under no configured key (changed during the rotation?): run envelope verify", st.Undecryptable)
	}
	if left > 0 {
		return fmt.Errorf("rotate: %d DEKs are still under a previous key (is an app instance writing with the old primary?): once every instance has the new key, run %s", left, finish)
	}
	if st.Empty > 0 {
		fmt.Fprintf(out, "%d profiles have no DEK yet: envelope backfill gives them one\n", st.Empty)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
