package envelope_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/rotate"
	"gorm.io/gorm"
)

// instance is one app process: its own *gorm.DB, connection pool, plugin
// and DEK cache, on the shared database.
type instance struct {
	name string
	db   *gorm.DB
}

func startInstance(t *testing.T, db *gorm.DB, name string, keys *dek.Keyring, cfg envelope.Config) instance {
	t.Helper()
	h := testdb.Reopen(t, db)
	cfg.Keys, cfg.Profile = keys, &Profile{}
	if err := h.Use(envelope.New(cfg)); err != nil {
		t.Fatalf("%s: db.Use: %v", name, err)
	}
	return instance{name: name, db: h}
}

func mustKeyring(t testing.TB, primary string, previous ...string) *dek.Keyring {
	t.Helper()
	r, err := dek.ParseKeyring(primary, previous...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// ledger records every credential written, by id, as its password.
type ledger struct {
	mu   sync.Mutex
	want map[uint]string
}

func (l *ledger) add(c Credential) {
	l.mu.Lock()
	l.want[c.ID] = c.Password
	l.mu.Unlock()
}

// check reads every credential through db and compares it with the ledger.
func (l *ledger) check(t *testing.T, name string, db *gorm.DB) {
	t.Helper()
	var got []Credential
	if err := db.Order("id").Find(&got).Error; err != nil {
		t.Fatalf("%s: read all: %v", name, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(got) != len(l.want) {
		t.Fatalf("%s: %d credentials, want %d", name, len(got), len(l.want))
	}
	for _, c := range got {
		if c.Password != l.want[c.ID] || c.Password != c.Facility {
			t.Fatalf("%s: credential %d of owner %d: %q, want %q", name, c.ID, c.UserID, c.Password, l.want[c.ID])
		}
	}
}

// Several app instances during a rolling rotation: instances still on the
// old primary (holding the new key as previous, as the runbook's first
// deploy gives them) and instances on the new primary (old as previous)
// write and read concurrently, new owners appearing throughout, and a
// rotation runs meanwhile. Every read succeeds. Once the last old instance
// is gone, one more rotation leaves no DEK under the old key, and the new
// key alone reads every row.
func TestMultiInstanceRollingRotation(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		oldText, _ := dek.GenerateKey()
		newText, _ := dek.GenerateKey()
		oldOnly := mustKeyring(t, oldText)
		oldFirst := mustKeyring(t, oldText, newText)
		newFirst := mustKeyring(t, newText, oldText)
		newOnly := mustKeyring(t, newText)
		setup(t, db, oldOnly)

		l := &ledger{want: map[uint]string{}}
		write := func(in instance, owner uint, tag string) error {
			pw := fmt.Sprintf("%s-owner%d-%s", in.name, owner, tag)
			c := Credential{UserID: owner, Facility: pw, Password: pw}
			if err := in.db.Create(&c).Error; err != nil {
				return fmt.Errorf("%s: write for owner %d: %w", in.name, owner, err)
			}
			l.add(c)
			return nil
		}
		// Before the roll: owners 1..20 under the old key.
		seed := instance{name: "seed", db: db}
		for u := uint(1); u <= 20; u++ {
			if err := write(seed, u, "before"); err != nil {
				t.Fatal(err)
			}
		}

		// ttl keeps each instance's cache short, so reads keep going back
		// to the database while DEKs change under the instances.
		cfg := envelope.Config{CacheTTL: 50 * time.Millisecond}
		instances := []instance{
			startInstance(t, db, "old1", oldFirst, cfg),
			startInstance(t, db, "old2", oldFirst, cfg),
			startInstance(t, db, "new1", newFirst, cfg),
			startInstance(t, db, "new2", newFirst, cfg),
		}

		const rounds = 25
		var wg sync.WaitGroup
		errs := make(chan error, len(instances)*rounds*3+1)
		for n, in := range instances {
			wg.Go(func() {
				for i := range rounds {
					// A new owner of this instance, and an existing owner
					// whose DEK another instance (or the seed) made.
					fresh := uint(1000*(n+1) + i)
					if err := write(in, fresh, "new"); err != nil {
						errs <- err
						return
					}
					if err := write(in, uint(1+(i*7+n)%20), fmt.Sprint("r", i)); err != nil {
						errs <- err
						return
					}
					// Read owners made by every instance so far.
					owners := []uint{uint(1 + i%20)}
					for m := range instances {
						if i > 0 {
							owners = append(owners, uint(1000*(m+1)+i-1))
						}
					}
					var got []Credential
					if err := in.db.Where("user_id IN ?", owners).Find(&got).Error; err != nil {
						errs <- fmt.Errorf("%s: read owners %v during the roll: %w", in.name, owners, err)
						return
					}
					for _, c := range got {
						if c.Password != c.Facility {
							errs <- fmt.Errorf("%s: credential %d: %q, want %q", in.name, c.ID, c.Password, c.Facility)
							return
						}
					}
				}
			})
		}
		// The operator rotates while the fleet runs (some DEKs are made
		// under the old key after it, by the old instances).
		var during rotate.Result
		wg.Go(func() {
			time.Sleep(20 * time.Millisecond)
			var err error
			if during, err = rotate.Run(ctx, db, rotate.Options{Keys: newFirst, Profile: &Profile{}}); err != nil || during.Failed != 0 {
				errs <- fmt.Errorf("rotate during the roll: %+v, %v", during, err)
			}
		})
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for _, in := range instances {
			l.check(t, in.name, in.db)
		}

		// An instance that skipped the runbook's first deploy (old key
		// only) cannot open DEKs the new instances made: it fails closed.
		stale := testdb.Reopen(t, db)
		if err := stale.Use(envelope.New(envelope.Config{Keys: oldOnly, Profile: &Profile{}})); err == nil {
			err = stale.Where("user_id = ?", 3000).Find(&[]Credential{}).Error
			if !errors.Is(err, envelope.ErrDecrypt) {
				t.Fatalf("old key only, owner made by a new instance: %v, want ErrDecrypt", err)
			}
		} else if !errors.Is(err, envelope.ErrDecrypt) {
			t.Fatalf("old key only: db.Use: %v", err)
		}

		// The old instances are gone: one more rotation.
		res, err := rotate.Run(ctx, db, rotate.Options{Keys: newFirst, Profile: &Profile{}})
		if err != nil || res.Failed != 0 || res.Skipped != 0 {
			t.Fatalf("final rotate: %+v, %v", res, err)
		}
		st, err := rotate.Status(ctx, db, rotate.Options{Keys: newFirst, Profile: &Profile{}})
		if err != nil {
			t.Fatal(err)
		}
		if st.Keys[1].Count != 0 || st.Undecryptable != 0 || !st.Current() {
			t.Fatalf("status after the final rotate: %+v; want no DEK under the old key", st)
		}
		wantOwners := 20 + len(instances)*rounds
		if st.Keys[0].Count != wantOwners {
			t.Fatalf("status: %d DEKs under the new key, want %d", st.Keys[0].Count, wantOwners)
		}
		after := startInstance(t, db, "new-key-only", newOnly, envelope.Config{})
		l.check(t, after.name, after.db)
		t.Logf("%d owners, %d credentials; rotate during the roll moved %d DEKs, the final one %d",
			wantOwners, len(l.want), during.Rotated, res.Rotated)
	})
}

// A shred on one instance reaches another instance that cached the DEK
// within that instance's CacheTTL.
func TestMultiInstanceShredWithinCacheTTL(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		const ttl = 200 * time.Millisecond
		keys := newKeys(t)
		setup(t, db, keys)
		a := startInstance(t, db, "a", keys, envelope.Config{CacheTTL: ttl})
		b := startInstance(t, db, "b", keys, envelope.Config{CacheTTL: ttl})
		for u := uint(1); u <= 2; u++ {
			must(t, a.db.Create(&Credential{UserID: u, Password: fmt.Sprint("secret-", u)}).Error)
		}
		var warm []Credential
		must(t, b.db.Find(&warm).Error) // b caches both DEKs
		if len(warm) != 2 {
			t.Fatalf("b read %d credentials", len(warm))
		}

		must(t, envelope.Shred(a.db, uint(1)))
		shredded := time.Now()
		if err := a.db.Where("user_id = 1").First(&Credential{}).Error; !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("shredding instance: %v, want ErrShredded at once", err)
		}

		time.Sleep(ttl - time.Since(shredded) + 50*time.Millisecond)
		var c Credential
		if err := b.db.Where("user_id = 1").First(&c).Error; !errors.Is(err, envelope.ErrShredded) || c.Password != "" {
			t.Fatalf("other instance after its CacheTTL: %v, %q; want ErrShredded", err, c.Password)
		}
		if err := b.db.Create(&Credential{UserID: 1, Password: "again"}).Error; !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("other instance writing after its CacheTTL: %v, want ErrShredded", err)
		}
		var other Credential
		must(t, b.db.Where("user_id = 2").First(&other).Error)
		if other.Password != "secret-2" {
			t.Fatalf("owner 2 on b: %q", other.Password)
		}
	})
}
