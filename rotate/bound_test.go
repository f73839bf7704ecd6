package rotate

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// bindingOf is the binding of owner's row in the test's profile table.
func bindingOf(owner uint) dek.Binding {
	return dek.Binding{Table: "profiles", Owner: strconv.FormatUint(uint64(owner), 10)}
}

// seedBound is seed with the DEKs sealed bound to their rows.
func (w *world) seedBound(t testing.TB, keys *dek.Keyring, first, n int) {
	t.Helper()
	w.seed(t, keys, first, n)
	for o := uint(first); o < uint(first+n); o++ {
		sealed, err := keys.SealBound(context.Background(), w.deks[o], bindingOf(o))
		if err != nil {
			t.Fatal(err)
		}
		w.setDEK(t, o, sealed)
	}
}

// layouts opens every seeded DEK with its row's binding under keys, checks
// it is still the seeded DEK under key wantIdx, and returns how many are
// bound and how many legacy.
func (w *world) layouts(t testing.TB, keys *dek.Keyring, wantIdx int) (bound, legacy int) {
	t.Helper()
	var ps []Profile
	if err := w.db.Order("id").Find(&ps).Error; err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		want, ok := w.deks[p.UserID]
		if !ok {
			continue
		}
		d, idx, isBound, err := keys.OpenBound(context.Background(), p.EncryptedDEK, bindingOf(p.UserID))
		switch {
		case err != nil:
			t.Fatalf("owner %d: %v", p.UserID, err)
		case d != want:
			t.Fatalf("owner %d: DEK changed", p.UserID)
		case idx != wantIdx:
			t.Fatalf("owner %d: opened under key %d, want %d", p.UserID, idx, wantIdx)
		}
		if isBound {
			bound++
		} else {
			legacy++
		}
	}
	return bound, legacy
}

// A rotation keeps each DEK's layout; with BindDEKs it seals the legacy
// ones bound, under an old key or the primary alike, and counts them.
func TestRunKeepsAndUpgradesLayouts(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		k0, k1, k2 := newKey(t), newKey(t), newKey(t)
		w := newWorld(t, db)
		w.seed(t, keyring(t, k0), 1, 30)        // legacy, old key
		w.seedBound(t, keyring(t, k0), 100, 20) // bound, old key
		w.seed(t, keyring(t, k1), 200, 5)       // legacy, the primary
		notesBefore := w.notes(t)

		keys := keyring(t, k1, k0)
		opts := Options{Keys: keys, Profile: &Profile{}, BatchSize: 16}
		st, err := Status(ctx, db, opts)
		if err != nil || st.Legacy != 35 || st.Keys[0].Count != 5 || st.Keys[1].Count != 50 {
			t.Fatalf("status before: %+v, %v", st, err)
		}

		res, err := Run(ctx, db, opts)
		if err != nil {
			t.Fatal(err)
		}
		if want := (Result{Rotated: 50, AlreadyCurrent: 5}); !sameCounts(res, want) {
			t.Fatalf("without BindDEKs: got %+v, want %+v", res, want)
		}
		if b, l := w.layouts(t, keyring(t, k1), 0); b != 20 || l != 35 {
			t.Fatalf("without BindDEKs: %d bound, %d legacy; want 20 and 35", b, l)
		}

		// Rotate again to k2, upgrading: the legacy DEKs are under an old
		// key now; the dry run writes nothing and counts the same.
		keys = keyring(t, k2, k1)
		opts = Options{Keys: keys, Profile: &Profile{}, BatchSize: 16, BindDEKs: true}
		before := w.dekColumn(t, 3)
		dry := opts
		dry.DryRun = true
		res, err = Run(ctx, db, dry)
		if want := (Result{Rotated: 55, Upgraded: 35}); err != nil || !sameCounts(res, want) {
			t.Fatalf("dry run: got %+v, %v; want %+v", res, err, want)
		}
		if !bytes.Equal(before, w.dekColumn(t, 3)) {
			t.Fatal("dry run wrote")
		}
		var calls []Progress
		opts.Progress = func(p Progress) { calls = append(calls, p) }
		res, err = Run(ctx, db, opts)
		if want := (Result{Rotated: 55, Upgraded: 35}); err != nil || !sameCounts(res, want) {
			t.Fatalf("with BindDEKs: got %+v, %v; want %+v", res, err, want)
		}
		if len(calls) == 0 || calls[len(calls)-1].Upgraded != 35 {
			t.Errorf("progress calls: %+v", calls)
		}
		if b, l := w.layouts(t, keyring(t, k2), 0); b != 55 || l != 0 {
			t.Fatalf("with BindDEKs: %d bound, %d legacy; want 55 and 0", b, l)
		}
		opts.Progress = nil
		if st, err := Status(ctx, db, opts); err != nil || st.Legacy != 0 || st.Keys[0].Count != 55 {
			t.Fatalf("status after: %+v, %v", st, err)
		}

		// Legacy DEKs already under the primary are upgraded in place.
		w.seed(t, keys, 300, 4)
		res, err = Run(ctx, db, opts)
		if want := (Result{AlreadyCurrent: 59, Upgraded: 4}); err != nil || !sameCounts(res, want) {
			t.Fatalf("upgrade under the primary: got %+v, %v; want %+v", res, err, want)
		}
		if b, l := w.layouts(t, keyring(t, k2), 0); b != 59 || l != 0 {
			t.Fatalf("after the upgrade: %d bound, %d legacy", b, l)
		}
		res, err = Run(ctx, db, opts)
		if want := (Result{AlreadyCurrent: 59}); err != nil || !sameCounts(res, want) {
			t.Fatalf("rerun: got %+v, %v; want %+v", res, err, want)
		}
		// The data was never touched; layouts checked the DEKs are the
		// seeded ones, so every note still opens with its owner's DEK.
		notesAfter := w.notes(t)
		for id, body := range notesBefore {
			if !bytes.Equal(body, notesAfter[id]) {
				t.Fatalf("note %d changed", id)
			}
		}
	})
}

// A bound DEK copied into another owner's row is a failure of the rotation,
// like a DEK no key opens, and is left as it is; the others are rotated.
func TestRunRefusesCopiedBoundDEK(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		oldKey, newK := newKey(t), newKey(t)
		w := newWorld(t, db)
		w.seedBound(t, keyring(t, oldKey), 1, 10)
		copied := w.dekColumn(t, 1)
		w.setDEK(t, 2, copied)

		keys := keyring(t, newK, oldKey)
		for _, bind := range []bool{false, true} {
			opts := Options{Keys: keys, Profile: &Profile{}, BatchSize: 4, BindDEKs: bind}
			st, err := Status(ctx, db, opts)
			if err != nil || st.Undecryptable != 1 || len(st.Failures) != 1 || st.Failures[0].Owner != "2" {
				t.Fatalf("status: %+v, %v", st, err)
			}
			res, err := Run(ctx, db, opts)
			var fe *FailedError
			if !errors.As(err, &fe) || fe.Count != 1 || !errors.Is(err, dek.ErrDecrypt) {
				t.Fatalf("BindDEKs %v: err = %v, want a FailedError for 1 DEK", bind, err)
			}
			if res.Failed != 1 || len(res.Failures) != 1 || res.Failures[0].Owner != "2" || res.Upgraded != 0 {
				t.Fatalf("BindDEKs %v: got %+v", bind, res)
			}
			if r := res.Failures[0].Reason; !strings.Contains(r, "bound to another profile row") {
				t.Errorf("reason %q", r)
			}
			if got := w.dekColumn(t, 2); !bytes.Equal(got, copied) {
				t.Fatal("the copied DEK was rewritten")
			}
		}
		delete(w.deks, 2)
		if b, l := w.layouts(t, keyring(t, newK), 0); b != 9 || l != 0 {
			t.Fatalf("%d bound, %d legacy; want 9 and 0", b, l)
		}
	})
}

// Backfill with BindDEKs gives bound DEKs; OwnerColumn "-" cannot bind.
func TestBackfillBound(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		keys := keyring(t, newKey(t))
		w := newWorld(t, db)
		for o := uint(1); o <= 5; o++ {
			if err := db.Create(&Profile{UserID: o}).Error; err != nil {
				t.Fatal(err)
			}
		}
		opts := Options{Keys: keys, Profile: &Profile{}, BindDEKs: true}
		if n, err := Backfill(ctx, db, opts); n != 5 || err != nil {
			t.Fatalf("backfill: %d, %v", n, err)
		}
		for o := uint(1); o <= 5; o++ {
			_, _, bound, err := keys.OpenBound(ctx, w.dekColumn(t, o), bindingOf(o))
			if err != nil || !bound {
				t.Fatalf("owner %d: bound %v, %v", o, bound, err)
			}
		}
		st, err := Status(ctx, db, opts)
		if err != nil || st.Legacy != 0 || st.Keys[0].Count != 5 {
			t.Fatalf("status: %+v, %v", st, err)
		}
		_, err = Run(ctx, db, Options{Keys: keys, Table: "profiles", OwnerColumn: "-", BindDEKs: true})
		if err == nil || !strings.Contains(err.Error(), "BindDEKs needs the owner column") {
			t.Fatalf("OwnerColumn \"-\" with BindDEKs: %v", err)
		}
	})
}
