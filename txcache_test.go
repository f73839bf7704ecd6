package envelope_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// A cold CreateInBatches of several batches, which runs in a transaction
// of its own, looks the owners' DEKs up once, not once per batch; so does
// a caller's transaction of several statements.
func TestTransactionLooksOwnersUpOnce(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys)
		for u := 1; u <= 20; u++ {
			must(t, db.Create(&Profile{UserID: uint(u)}).Error)
		}
		log := newSQLLog()
		cold := testdb.Reopen(t, db, testdb.Options{Logger: log})
		plugin := envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})
		if err := cold.Use(plugin); err != nil {
			t.Fatal(err)
		}
		rows := make([]Credential, 900)
		for i := range rows {
			rows[i] = Credential{UserID: uint(1 + i%20), Password: fmt.Sprint("pw-", i)}
		}
		log.Reset()
		must(t, cold.CreateInBatches(&rows, 300).Error)
		if n := log.count("SELECT", "profiles"); n != 1 {
			t.Fatalf("CreateInBatches of 3 batches made %d profiles queries, want 1", n)
		}
		envelope.PurgeCacheForTest(plugin)
		log.Reset()
		must(t, cold.Transaction(func(tx *gorm.DB) error {
			for i := range 3 {
				if err := tx.Create(&Credential{UserID: 3, Password: fmt.Sprint("tx-", i)}).Error; err != nil {
					return err
				}
			}
			return nil
		}))
		if n := log.count("SELECT", "profiles"); n != 1 {
			t.Fatalf("3 writes in one transaction made %d profiles queries, want 1", n)
		}
		// With prepared statements the transaction is GORM's wrapper of it.
		envelope.PurgeCacheForTest(plugin)
		log.Reset()
		more := make([]Credential, 600)
		for i := range more {
			more[i] = Credential{UserID: uint(1 + i%20), Password: fmt.Sprint("prep-", i)}
		}
		must(t, cold.Session(&gorm.Session{PrepareStmt: true}).CreateInBatches(&more, 300).Error)
		if n := log.count("SELECT", "profiles"); n != 1 {
			t.Fatalf("CreateInBatches with prepared statements made %d profiles queries, want 1", n)
		}
		var got []Credential
		must(t, db.Order("id").Find(&got).Error)
		if len(got) != 1503 || got[899].Password != "pw-899" || got[902].Password != "tx-2" || got[1502].Password != "prep-599" {
			t.Fatalf("read back %d rows", len(got))
		}
	})
}

// A DEK created inside a savepoint that rolls back is not reused by the
// rest of the transaction: the next write for the owner creates a new DEK,
// and everything committed reads back; whether the plugin created the DEK
// or the app created the profile through GORM.
func TestSavepointRollbackForgetsCreatedDEK(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys)
		undo := errors.New("roll back to the savepoint")
		inSavepoint := func(owner uint, withProfile bool) {
			t.Helper()
			must(t, db.Transaction(func(tx *gorm.DB) error {
				err := tx.Transaction(func(sp *gorm.DB) error {
					if withProfile {
						if err := sp.Create(&Profile{UserID: owner}).Error; err != nil {
							return err
						}
					}
					for _, pw := range []string{"lost", "lost too"} {
						if err := sp.Create(&Credential{UserID: owner, Password: pw}).Error; err != nil {
							return err
						}
					}
					return undo
				})
				if !errors.Is(err, undo) {
					return fmt.Errorf("savepoint: %v", err)
				}
				return tx.Create(&Credential{UserID: owner, Password: fmt.Sprint("kept ", owner)}).Error
			}))
		}
		inSavepoint(500, false) // the plugin creates the DEK in the savepoint
		inSavepoint(600, true)  // GORM creates the profile in the savepoint
		fresh := testdb.Reopen(t, db, testdb.Options{})
		if err := fresh.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})); err != nil {
			t.Fatal(err)
		}
		var got []Credential
		must(t, fresh.Order("id").Find(&got).Error)
		if len(got) != 2 || got[0].Password != "kept 500" || got[1].Password != "kept 600" {
			t.Fatalf("read back %+v", got)
		}
	})
}

// A shred inside a transaction applies at once to the transaction's later
// writes, although it had loaded the DEK.
func TestShredInTransaction(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.Create(&Profile{UserID: 7}).Error)
		err := db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Create(&Credential{UserID: 7, Password: "before"}).Error; err != nil {
				return err
			}
			if err := envelope.Shred(tx, uint(7)); err != nil {
				return err
			}
			return tx.Create(&Credential{UserID: 7, Password: "after"}).Error
		})
		if !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("write after a shred in the same transaction: %v, want ErrShredded", err)
		}
	})
}

// A shred committed while another transaction holds the owner's DEK
// applies to that transaction's later writes too. PostgreSQL only: SQLite
// would serialize the two writers, and MySQL's REPEATABLE READ shows the
// open transaction its snapshot, from before the shred, whatever the
// plugin caches.
func TestShredReachesOpenTransactions(t *testing.T) {
	for _, d := range []testdb.Dialect{testdb.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			db := testdb.Open(t, d)
			setup(t, db, newKeys(t))
			must(t, db.Create(&Profile{UserID: 7}).Error)
			tx := db.Begin()
			must(t, tx.Error)
			defer tx.Rollback()
			must(t, tx.Create(&Credential{UserID: 7, Password: "before"}).Error)
			must(t, envelope.Shred(db, uint(7)))
			if err := tx.Create(&Credential{UserID: 7, Password: "after"}).Error; !errors.Is(err, envelope.ErrShredded) {
				t.Fatalf("write after a shred elsewhere: %v, want ErrShredded", err)
			}
		})
	}
}

// A transaction is one cache entry however GORM wraps it: a profile write
// through the plain transaction stops the DEKs loaded through a prepared
// statement session of it from being served.
func TestPreparedSessionSharesTransactionEntry(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.Create(&Profile{UserID: 7}).Error)
		must(t, db.Transaction(func(tx *gorm.DB) error {
			prep := tx.Session(&gorm.Session{PrepareStmt: true})
			if err := prep.Create(&Credential{UserID: 7, Password: "before"}).Error; err != nil {
				return err
			}
			// The profile and its DEK go; the next write makes new ones.
			if err := tx.Where("user_id = ?", 7).Delete(&Profile{}).Error; err != nil {
				return err
			}
			return prep.Create(&Credential{UserID: 7, Password: "after"}).Error
		}))
		var got Credential
		if err := db.Where("password <> ? AND user_id = ?", "", 7).Order("id DESC").First(&got).Error; err != nil {
			t.Fatalf("the write after the profile's deletion does not read back: %v", err)
		}
		if got.Password != "after" {
			t.Fatalf("read %q, want %q", got.Password, "after")
		}
	})
}
