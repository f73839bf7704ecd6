package envelope_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

func TestShred(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		audit := &slogCapture{}
		setup(t, db, keys, envelope.Config{Logger: slogLogger(audit)})
		stale := testdb.Reopen(t, db)
		must(t, stale.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, CacheTTL: 200 * time.Millisecond})))
		for u := uint(1); u <= 2; u++ {
			must(t, db.Create(&Credential{UserID: u, Password: fmt.Sprint("secret-", u)}).Error)
		}
		var warm []Credential
		must(t, stale.Find(&warm).Error) // caches both DEKs in the other process

		must(t, envelope.Shred(db, uint(1)))
		lines := audit.Lines()
		if len(lines) != 1 || !strings.Contains(lines[0], "owner=1") || strings.Contains(lines[0], "secret") {
			t.Fatalf("audit lines %q", lines)
		}
		var c1, c2 Credential
		err := db.Where("user_id = 1").First(&c1).Error
		if !errors.Is(err, envelope.ErrShredded) || errors.Is(err, envelope.ErrDecrypt) || c1.Password != "" {
			t.Fatalf("read after shred: %v, %q; want ErrShredded and zero value", err, c1.Password)
		}
		must(t, db.Where("user_id = 2").First(&c2).Error)
		if c2.Password != "secret-2" {
			t.Fatalf("other owner: %q", c2.Password)
		}
		if err := db.Create(&Credential{UserID: 1, Password: "again"}).Error; !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("write after shred: %v, want ErrShredded", err)
		}
		fresh := testdb.Reopen(t, db)
		must(t, fresh.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})))
		if err := fresh.Where("user_id = 1").First(&Credential{}).Error; !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("another process: %v, want ErrShredded", err)
		}
		// A process that cached the DEK sees the shred within its cache lifetime.
		time.Sleep(250 * time.Millisecond)
		if err := stale.Where("user_id = 1").First(&Credential{}).Error; !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("stale process after CacheTTL: %v, want ErrShredded", err)
		}
		// Shredding an owner with no profile leaves a tombstone too.
		must(t, envelope.Shred(db, 77))
		if err := db.Create(&Credential{UserID: 77, Password: "x"}).Error; !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("write for an owner shredded before any data: %v", err)
		}
		// Inside a transaction that rolls back, nothing is shredded.
		rollback := errors.New("rollback")
		err = db.Transaction(func(tx *gorm.DB) error {
			if err := envelope.Shred(tx, uint(2)); err != nil {
				return err
			}
			if err := tx.Where("user_id = 2").First(&Credential{}).Error; !errors.Is(err, envelope.ErrShredded) {
				t.Errorf("inside the transaction: %v, want ErrShredded", err)
			}
			return rollback
		})
		if !errors.Is(err, rollback) {
			t.Fatal(err)
		}
		must(t, db.Where("user_id = 2").First(&c2).Error)
		if c2.Password != "secret-2" {
			t.Fatalf("after rollback: %q", c2.Password)
		}
		if err := envelope.Shred(db, 0); !errors.Is(err, envelope.ErrNoOwner) {
			t.Fatalf("Shred(0): %v", err)
		}
	})
}
