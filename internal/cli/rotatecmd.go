package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/keystore"
	"github.com/gorm-envelope/envelope/rotate"
)

var cmdRotate = &command{
	name:  "rotate",
	args:  "[--new-key KEY | --kms-url URL | --resume] [--env-file PATH] [--bind-deks] [--batch-size N] [--dry-run]",
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
the app's data is not touched. Exits 1 if any DEK could not be rotated.

The blind-index keys in the table envelope_index_keys, when there is one, are
checked and rewrapped under the new key in the same steps. The keys
themselves do not change, and so neither does any index value.

With --kms-url (or ENVELOPE_KMS_URL; a build with KMS support), the new key
is the one the KMS holds at that URL: no key is made and --new-key does not
apply. Step 2 records DEK_ENCRYPTION_KEY=<the key URL> and
DEK_ENCRYPTION_KEY_PREVIOUS=<the old keys> (in --env-file, or printed), so
the app and later runs reach the KMS key through the URL; step 1 also
accepts DEKs already under the KMS key. Where the recorded primary already is
that URL, nothing is recorded and what is left is re-encrypted under it.

With --bind-deks, step 3 also seals every DEK still in TOM Toolkit's legacy
layout bound to its owner and the profile table (--table names it as the app's
plugin does), including DEKs already under the new key: a DEK copied into
another owner's profile row then no longer opens there. DEKs already bound
stay bound with or without it. TOM Toolkit cannot open a bound DEK; see
docs/key-management.md. "envelope rotate --resume --bind-deks" upgrades
without a new key.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		o.batchFlags(fs)
		fs.StringVar(&o.newKey, "new-key", "", "the new master `key` (default: make one)")
		fs.StringVar(&o.envFile, "env-file", "", "read the current keys from this env file and write the new ones into it")
		fs.BoolVar(&o.dryRun, "dry-run", false, "check and count what would be rotated; write nothing")
		fs.BoolVar(&o.resume, "resume", false, "make no new key: re-encrypt what is left under the current primary")
		fs.BoolVar(&o.bindDEKs, "bind-deks", false, "also seal DEKs in the legacy layout bound to their profile row")
	},
	run:      runRotate,
	database: true,
}

// rotatePasses bounds the extra passes made when DEKs appear under an old
// key while rotating (an app instance still running with the old primary).
const rotatePasses = 3

func runRotate(ctx context.Context, e *env, o *opts) error {
	if o.resume && o.newKey != "" {
		return usagef("rotate: --resume and --new-key exclude each other")
	}
	kms, toKMS := o.kmsRef()
	if toKMS && o.newKey != "" {
		return usagef("rotate: --kms-url and --new-key exclude each other: with --kms-url the new key is the KMS key")
	}
	cur, err := o.currentKeys(e)
	if err != nil {
		return err
	}
	if cur.primary == "" && !toKMS {
		return cur.noKey()
	}
	newKey := strings.TrimSpace(o.newKey)
	switch {
	case toKMS:
		newKey = kms.text
		if o.resume && newKey != cur.primary {
			return usagef("rotate: --resume finishes a rotation to the recorded primary key, and --kms-url names another: leave out --resume to rotate to the KMS key")
		}
	case o.resume:
		newKey = cur.primary
	case newKey == "":
		if newKey, err = dek.GenerateKey(); err != nil {
			return err
		}
	case isURL(newKey):
		return usagef("rotate: --new-key takes a Fernet key; for a key held in a KMS use --kms-url")
	default:
		if _, err := o.openKey(ctx, e, keyRef{newKey, "--new-key"}); err != nil {
			return err
		}
	}
	// The current keys open every DEK before anything changes. With
	// --kms-url they include the KMS key: DEKs already under it (a rotation
	// to it that was interrupted, or apps that have it as primary) are fine.
	curRefs := dedupe(cur.refs())
	if toKMS {
		curRefs = dedupe(append(curRefs, kms))
	}
	curRing, err := o.openRing(ctx, e, curRefs)
	if err != nil {
		return err
	}
	newRef := keyRef{newKey, "--new-key"}
	if toKMS {
		newRef = kms
	}
	refs := withPrimary(newRef, cur.refs())
	var previous []string
	for _, r := range refs[1:] {
		previous = append(previous, r.text)
	}
	ring, err := o.openRing(ctx, e, refs)
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
		return named("rotate", err)
	}
	if st.Undecryptable > 0 || st.IndexUndecryptable > 0 {
		printFailures(e.stderr, "cannot open DEK", st.Failures, st.Undecryptable)
		printFailures(e.stderr, "cannot open", st.IndexFailures, st.IndexUndecryptable)
		return fmt.Errorf("rotate: refused: %s cannot be opened with the current keys; nothing was changed", unopened(st.Undecryptable, st.IndexUndecryptable))
	}
	// rotate.Run refuses too, but only after step 2 would have changed the
	// env file.
	if n, err := keystore.RetiredPending(db.WithContext(ctx)); err != nil {
		return named("rotate", err)
	} else if n > 0 && !o.dryRun {
		return fmt.Errorf("rotate: refused: a rekey is not finished (%d retired DEKs in %s): run it again to completion (envelope rekey-all), then rotate; nothing was changed", n, keystore.RetiredTable)
	}

	if o.dryRun {
		ro := o.rotateOptions(ring)
		res, err := rotate.Run(ctx, db, ro)
		if err != nil {
			return named("rotate", err)
		}
		index := ""
		if n := res.IndexKeys + res.IndexKeysCurrent; n > 0 {
			index = fmt.Sprintf(" and rewrap %d blind-index keys (%d already current)", res.IndexKeys, res.IndexKeysCurrent)
		}
		upgrade := ""
		if o.bindDEKs {
			upgrade = fmt.Sprintf(", bind %d legacy DEKs to their profile rows", res.Upgraded)
		}
		fmt.Fprintf(e.stdout, "dry run: would rotate %d DEKs (%d already current, %d empty, %d shredded)%s%s; nothing was changed\n",
			res.Rotated, res.AlreadyCurrent, res.Empty, res.Shredded, upgrade, index)
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
	left, leftIndex := 0, 0
	for pass := 1; pass <= rotatePasses; pass++ {
		p := newProgress(e, "rotating")
		ro.Progress = p.update
		res, err := rotate.Run(ctx, db, ro)
		p.finish()
		total.Rotated += res.Rotated
		total.Skipped = res.Skipped
		total.IndexKeys += res.IndexKeys
		total.Upgraded += res.Upgraded
		if err != nil {
			printFailures(e.stderr, "cannot rotate DEK", res.Failures, res.Failed)
			printFailures(e.stderr, "cannot rewrap", res.IndexFailures, res.IndexKeysFailed)
			fmt.Fprintf(out, "rotated %d DEKs%s to %s before the error\n", total.Rotated, andIndexKeys(total.IndexKeys), newID)
			var fe *rotate.FailedError
			if errors.As(err, &fe) {
				return err
			}
			return stopped(named("rotate", err))
		}
		ro.Progress = nil
		if st, err = rotate.Status(ctx, db, ro); err != nil {
			return stopped(named("rotate", err))
		}
		left, leftIndex = 0, 0
		for _, k := range st.Keys[1:] {
			left += k.Count
		}
		for _, k := range st.IndexKeys[1:] {
			leftIndex += k.Count
		}
		if left == 0 && leftIndex == 0 && st.Undecryptable == 0 && st.IndexUndecryptable == 0 {
			break
		}
	}
	fmt.Fprintf(out, "rotated %d DEKs to %s: %d under it, %d empty, %d shredded\n",
		total.Rotated, newID, st.Keys[0].Count, st.Empty, st.Shredded)
	if st.IndexTotal > 0 {
		fmt.Fprintf(out, "rewrapped %d blind-index keys to %s: %d under it; no key and no index value changed\n",
			total.IndexKeys, newID, st.IndexKeys[0].Count)
	}
	if o.bindDEKs {
		fmt.Fprintf(out, "upgraded %d DEKs to the bound layout; %d still in the legacy layout\n", total.Upgraded, st.Legacy)
	}
	if st.Undecryptable > 0 || st.IndexUndecryptable > 0 {
		return fmt.Errorf("rotate: %s open under no configured key (changed during the rotation?): run envelope verify", unopened(st.Undecryptable, st.IndexUndecryptable))
	}
	if left > 0 || leftIndex > 0 {
		return fmt.Errorf("rotate: %s still under a previous key (is an app instance writing with the old primary?): once every instance has the new key, run %s", stillUnder(left, leftIndex), finish)
	}
	if st.Empty > 0 {
		fmt.Fprintf(out, "%d profiles have no DEK yet: envelope backfill gives them one\n", st.Empty)
	}
	if o.bindDEKs && st.Legacy > 0 {
		fmt.Fprintf(out, "legacy DEKs appeared during the rotation (does an app instance run without Config.BindDEKs?): run envelope rotate --resume --bind-deks once every instance binds\n")
	}
	return nil
}

// unopened says how many DEKs and blind-index keys, as in "3 DEKs",
// "1 blind-index key" or "3 DEKs and 1 blind-index key"; with no index
// key, DEKs are named whatever their count.
func unopened(deks, indexKeys int) string {
	i := "1 blind-index key"
	if indexKeys != 1 {
		i = fmt.Sprintf("%d blind-index keys", indexKeys)
	}
	switch {
	case indexKeys == 0:
		return fmt.Sprintf("%d DEKs", deks)
	case deks == 0:
		return i
	}
	return fmt.Sprintf("%d DEKs and %s", deks, i)
}

// stillUnder is unopened with its verb: "3 DEKs are", "1 blind-index key is".
func stillUnder(deks, indexKeys int) string {
	if deks == 0 && indexKeys == 1 {
		return unopened(deks, indexKeys) + " is"
	}
	return unopened(deks, indexKeys) + " are"
}

// andIndexKeys is " and N blind-index keys" when n > 0.
func andIndexKeys(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" and %d blind-index keys", n)
}
