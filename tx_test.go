package envelope_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// A transaction on SQLite with one connection creates a Profile and a
// credential and reads them back without deadlock.
func TestSQLiteOneConnectionTransaction(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	setup(t, db, newKeys(t))
	sqlDB, err := db.DB()
	must(t, err)
	sqlDB.SetMaxOpenConns(1)
	done := make(chan error, 1)
	go func() {
		done <- db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Create(&Profile{UserID: 1}).Error; err != nil {
				return err
			}
			if err := tx.Create(&Credential{UserID: 1, Password: "in-tx"}).Error; err != nil {
				return err
			}
			if err := tx.Create(&Credential{UserID: 2, Password: "new-owner-in-tx"}).Error; err != nil {
				return err
			}
			var got []Credential
			if err := tx.Order("id").Find(&got).Error; err != nil {
				return err
			}
			if len(got) != 2 || got[0].Password != "in-tx" || got[1].Password != "new-owner-in-tx" {
				return fmt.Errorf("read back %+v", got)
			}
			return nil
		})
	}()
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("deadlock: transaction did not finish in 20s")
	}
}

// 16 concurrent writers on separate handles, for owners with no DEK yet:
// every write succeeds, each owner ends with one DEK, every row decrypts.
func TestConcurrentFirstWriters(t *testing.T) {
	for _, d := range []testdb.Dialect{testdb.Postgres, testdb.SQLite, testdb.MySQL} {
		t.Run(string(d), func(t *testing.T) {
			base := testdb.Open(t, d)
			keys := newKeys(t)
			setup(t, base, keys)
			const writers, owners = 16, 8
			handles := make([]*gorm.DB, writers)
			for i := range handles {
				handles[i] = testdb.Reopen(t, base)
				must(t, handles[i].Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})))
			}
			var wg sync.WaitGroup
			errs := make(chan error, writers*owners)
			start := make(chan struct{})
			for w, h := range handles {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					for o := 1; o <= owners; o++ {
						c := &Credential{UserID: uint(o), Facility: fmt.Sprint("w", w), Password: fmt.Sprintf("w%d-o%d", w, o)}
						if err := h.Create(c).Error; err != nil {
							errs <- fmt.Errorf("writer %d owner %d: %w", w, o, err)
						}
					}
				}()
			}
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			var profiles []Profile
			must(t, base.Find(&profiles).Error)
			if len(profiles) != owners {
				t.Fatalf("%d profiles, want %d", len(profiles), owners)
			}
			for _, p := range profiles {
				if len(p.EncryptedDEK) == 0 {
					t.Fatalf("owner %d has no DEK", p.UserID)
				}
			}
			fresh := testdb.Reopen(t, base)
			must(t, fresh.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})))
			var got []Credential
			must(t, fresh.Find(&got).Error)
			if len(got) != writers*owners {
				t.Fatalf("%d rows, want %d", len(got), writers*owners)
			}
			for _, c := range got {
				if c.Password != fmt.Sprintf("%s-o%d", c.Facility, c.UserID) {
					t.Fatalf("row %d decrypted to %q", c.ID, c.Password)
				}
			}
		})
	}
}

// A DEK created inside a transaction that rolls back is never served from
// the cache afterwards: the next write creates and stores a new one.
func TestRolledBackDEKNotCached(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		p := setup(t, db, keys)
		rollback := errors.New("roll back")
		err := db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Create(&Credential{UserID: 42, Password: "gone"}).Error; err != nil {
				return err
			}
			return rollback
		})
		if !errors.Is(err, rollback) {
			t.Fatal(err)
		}
		if n := p.CacheStats().Entries; n != 0 {
			t.Fatalf("%d cached DEKs after rollback, want 0", n)
		}
		// The default transaction of a single Create that fails also rolls back.
		err = db.Create(&[]Credential{{UserID: 43, Password: "ok"}, {ID: 1 << 30, UserID: 43, Password: "dup"}, {ID: 1 << 30, UserID: 43, Password: "dup"}}).Error
		if err == nil {
			t.Fatal("duplicate primary key did not fail")
		}
		if n := p.CacheStats().Entries; n != 0 {
			t.Fatalf("%d cached DEKs after a failed create, want 0", n)
		}
		must(t, db.Create(&Credential{UserID: 42, Password: "kept"}).Error)
		must(t, db.Create(&Credential{UserID: 43, Password: "kept"}).Error)
		fresh := testdb.Reopen(t, db)
		must(t, fresh.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})))
		var got []Credential
		must(t, fresh.Find(&got).Error)
		if len(got) != 2 || got[0].Password != "kept" || got[1].Password != "kept" {
			t.Fatalf("got %+v", got)
		}
		if n := p.CacheStats().Entries; n != 2 {
			t.Fatalf("%d cached DEKs after committed writes, want 2", n)
		}
	})
}
