package envelope_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// Profiles that predate the plugin get DEKs from Backfill, and keep them.
func TestBackfill(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		must(t, db.AutoMigrate(&Profile{}))
		for u := 1; u <= 25; u++ {
			must(t, db.Exec("INSERT INTO profiles (user_id, nickname) VALUES (?, ?)", u, fmt.Sprint("n", u)).Error)
		}
		keys := newKeys(t)
		setup(t, db, keys)
		n, err := envelope.Backfill(context.Background(), db, 10)
		if err != nil || n != 25 {
			t.Fatalf("Backfill = %d, %v; want 25", n, err)
		}
		var before []Profile
		must(t, db.Order("id").Find(&before).Error)
		for _, p := range before {
			if _, _, err := keys.Open(context.Background(), p.EncryptedDEK); err != nil {
				t.Fatalf("profile %d: %v", p.UserID, err)
			}
		}
		if n, err := envelope.Backfill(context.Background(), db, 10); err != nil || n != 0 {
			t.Fatalf("second Backfill = %d, %v; want 0", n, err)
		}
		var after []Profile
		must(t, db.Order("id").Find(&after).Error)
		for i := range after {
			if string(after[i].EncryptedDEK) != string(before[i].EncryptedDEK) {
				t.Fatalf("profile %d: DEK replaced", after[i].UserID)
			}
		}
		must(t, db.Create(&Credential{UserID: 3, Password: "after-backfill"}).Error)

		nokey := testdb.Reopen(t, db)
		must(t, nokey.Use(envelope.New(envelope.Config{Profile: &Profile{}, Logger: slogLogger(&slogCapture{})})))
		if _, err := envelope.Backfill(context.Background(), nokey, 0); !errors.Is(err, envelope.ErrNoKey) {
			t.Fatalf("without key: %v", err)
		}
	})
}

// A profile row that exists without a DEK gets one on the owner's first
// write, written into that row's DEK column only.
func TestFirstWriteFillsExistingProfile(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		must(t, db.AutoMigrate(&Profile{}))
		must(t, db.Exec("INSERT INTO profiles (user_id, nickname) VALUES (5, 'keep-me')").Error)
		setup(t, db, newKeys(t))
		must(t, db.Create(&Credential{UserID: 5, Password: "p"}).Error)
		var p Profile
		must(t, db.Where("user_id = 5").First(&p).Error)
		if p.Nickname != "keep-me" || len(p.EncryptedDEK) == 0 {
			t.Fatalf("profile after first write: %q, %d-byte DEK", p.Nickname, len(p.EncryptedDEK))
		}
		var n int64
		must(t, db.Model(&Profile{}).Count(&n).Error)
		if n != 1 {
			t.Fatalf("%d profiles, want 1", n)
		}
	})
}
