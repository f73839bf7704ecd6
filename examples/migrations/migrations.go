package main

import (
	"context"

	"github.com/go-gormigrate/gormigrate/v2"
	"github.com/gorm-envelope/envelope"
	"gorm.io/gorm"
)

// Profile holds one row per user: that user's DEK, encrypted under the
// master key.
type Profile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

// User is the users table as it is after the last migration: the email
// encrypted under the user's own DEK (its id is its owner), found through
// a blind index.
type User struct {
	ID       uint    `envelope:"owner"`
	Name     string  // not secret
	Email    string  `gorm:"serializer:envelope"`
	EmailIdx *string `gorm:"size:80;uniqueIndex" envelope:"index:Email;scope:global;transform:trim,lower"`
}

// Each migration works on the table as it was then: its own struct types,
// named for the table, never the app's current model.

// userV1 is the table of the app before encryption: email in plaintext.
type userV1 struct {
	ID    uint
	Name  string
	Email string
}

func (userV1) TableName() string { return "users" }

// userV3 has the email encrypted, before its blind index existed.
type userV3 struct {
	ID    uint `envelope:"owner"`
	Name  string
	Email string `gorm:"serializer:envelope"`
}

func (userV3) TableName() string { return "users" }

// profileV2 is the Profile table as the plugin expects it.
type profileV2 = Profile

// migrations are the app's schema migrations, in order. The encryption
// steps are ordinary migrations: each one is resumable (EncryptExisting,
// Backfill and Reindex skip what is done), so one that was interrupted is
// simply run again.
func migrations(ctx context.Context) []*gormigrate.Migration {
	return []*gormigrate.Migration{
		{
			ID: "0001_users",
			Migrate: func(tx *gorm.DB) error {
				return tx.AutoMigrate(&userV1{})
			},
			Rollback: func(tx *gorm.DB) error { return tx.Migrator().DropTable("users") },
		},
		{
			// The plugin's Profile table, and a DEK for every user who has
			// a profile already (none here; an app adopting the plugin may
			// have profiles without DEKs).
			ID: "0002_profiles",
			Migrate: func(tx *gorm.DB) error {
				if err := tx.AutoMigrate(&profileV2{}); err != nil {
					return err
				}
				_, err := envelope.Backfill(ctx, tx, 500)
				return err
			},
			Rollback: func(tx *gorm.DB) error { return tx.Migrator().DropTable("profiles") },
		},
		{
			// Encrypt the email column in place, in batches: each user's
			// first value gives them a DEK.
			ID: "0003_encrypt_email",
			Migrate: func(tx *gorm.DB) error {
				_, err := envelope.EncryptExisting(ctx, tx, &userV3{}, envelope.MigrateOptions{})
				return err
			},
		},
		{
			// A blind index for finding users by email: the column, then
			// its values for the rows that exist.
			ID: "0004_email_index",
			Migrate: func(tx *gorm.DB) error {
				if err := tx.AutoMigrate(&User{}); err != nil {
					return err
				}
				_, err := envelope.Reindex(ctx, tx, &User{}, envelope.ReindexOptions{})
				return err
			},
			Rollback: func(tx *gorm.DB) error { return tx.Migrator().DropColumn(&User{}, "EmailIdx") },
		},
	}
}
