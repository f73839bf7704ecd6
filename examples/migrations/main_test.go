package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/go-gormigrate/gormigrate/v2"
	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// The migrations take a plaintext users table to encrypted emails with a
// filled blind index, on every database, and running them again changes
// nothing.
func TestMigrations(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		k, err := dek.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys, err := dek.ParseKeyring(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		all := migrations(ctx)
		if err := gormigrate.New(db, gormigrate.DefaultOptions, all[:1]).Migrate(); err != nil {
			t.Fatal(err)
		}
		const n = 1200 // more than one batch of each job
		legacy := make([]userV1, n)
		for i := range legacy {
			legacy[i] = userV1{Name: fmt.Sprint("user-", i), Email: fmt.Sprintf("User%d@Example.org", i)}
		}
		if err := db.CreateInBatches(&legacy, 500).Error; err != nil {
			t.Fatal(err)
		}
		for round := range 2 {
			if err := gormigrate.New(db, gormigrate.DefaultOptions, all).Migrate(); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			var plain, noIndex int64
			if err := db.Table("users").Where("email LIKE ?", "%example%").Or("email LIKE ?", "%Example%").Count(&plain).Error; err != nil {
				t.Fatal(err)
			}
			if err := db.Table("users").Where("email_idx IS NULL").Count(&noIndex).Error; err != nil {
				t.Fatal(err)
			}
			if plain != 0 || noIndex != 0 {
				t.Fatalf("round %d: %d emails in plaintext, %d without an index value", round, plain, noIndex)
			}
			for _, i := range []int{0, n / 2, n - 1} {
				var u User
				if err := db.Where(envelope.Match("Email", strings.ToLower(legacy[i].Email))).Take(&u).Error; err != nil {
					t.Fatalf("round %d: Match user %d: %v", round, i, err)
				}
				if u.ID != legacy[i].ID || u.Email != legacy[i].Email || u.Name != legacy[i].Name {
					t.Fatalf("round %d: found %+v for %+v", round, u, legacy[i])
				}
			}
		}
		var profiles int64
		if err := db.Model(&Profile{}).Count(&profiles).Error; err != nil || profiles != n {
			t.Fatalf("%d profiles, %v; want one per user", profiles, err)
		}
	})
}
