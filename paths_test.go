package envelope_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// A dry run (ToSQL, DryRun sessions) shows tokens, writes no DEK and
// caches none.
func TestDryRunWritesNothing(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		p := setup(t, db, newKeys(t))
		sql := db.ToSQL(func(tx *gorm.DB) *gorm.DB {
			return tx.Create(&Credential{UserID: 1, Password: "dry-run-secret"})
		})
		if strings.Contains(sql, "dry-run-secret") || !sealedIn(sql) {
			t.Fatalf("ToSQL: %s", sql)
		}
		var n int64
		must(t, db.Model(&Profile{}).Count(&n).Error)
		if n != 0 || p.CacheStats().Entries != 0 {
			t.Fatalf("dry run left %d profiles and %d cached DEKs", n, p.CacheStats().Entries)
		}
	})
}

// With SkipDefaultTransaction the write paths still encrypt.
func TestSkipDefaultTransaction(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, base *gorm.DB) {
		db := testdb.Open(t, testdb.DialectOf(base), testdb.Options{SkipDefaultTransaction: true})
		setup(t, db, newKeys(t))
		c := &Credential{UserID: 1, Password: "no-default-tx"}
		must(t, db.Create(c).Error)
		must(t, db.Model(c).Update("password", "updated-no-tx").Error)
		stored, _ := rawColumn(t, db, "credentials", "password", c.ID)
		if !sealedText(stored) {
			t.Fatalf("stored %q", stored)
		}
		var got Credential
		must(t, db.First(&got, c.ID).Error)
		if got.Password != "updated-no-tx" {
			t.Fatalf("read %q", got.Password)
		}
	})
}

// Associations created with their parent are encrypted under the owner
// GORM copies into them.
func TestAssociationsEncrypted(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&Account{}))
		a := &Account{UserID: 9, Email: "nested@example.org", Credentials: []Credential{{Password: "child-1"}, {Password: "child-2"}}}
		must(t, db.Create(a).Error)
		for _, c := range a.Credentials {
			stored, _ := rawColumn(t, db, "credentials", "password", c.ID)
			if !sealedText(stored) || c.UserID != 9 {
				t.Fatalf("child %d: owner %d, stored %q", c.ID, c.UserID, stored)
			}
		}
		var got Account
		must(t, db.Preload("Credentials").First(&got, a.ID).Error)
		if got.Email != "nested@example.org" || got.Credentials[1].Password != "child-2" {
			t.Fatalf("read %+v", got)
		}
	})
}

// A query that finds nothing leaves the destination alone and returns
// gorm.ErrRecordNotFound that errors.Is still matches.
func TestNotFoundUntouched(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	setup(t, db, newKeys(t))
	c := Credential{Password: "caller's own value"}
	err := db.Where("id = 12345").First(&c).Error
	if !errors.Is(err, gorm.ErrRecordNotFound) || c.Password != "caller's own value" {
		t.Fatalf("got %v, %q", err, c.Password)
	}
}
