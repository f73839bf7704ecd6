// Command migrations takes an app's users table from plaintext to
// encrypted emails with a blind index, as ordinary schema migrations
// (github.com/go-gormigrate/gormigrate): create the table and fill it as
// the app did before encryption, add the Profile table and backfill DEKs,
// encrypt the existing email column in place, then add a blind index and
// fill it. It runs on in-memory SQLite:
//
//	go run ./examples/migrations
//
// With DEK_ENCRYPTION_KEY unset it uses a throwaway master key.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/go-gormigrate/gormigrate/v2"
	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run() error {
	keys, err := masterKeys()
	if err != nil {
		return err
	}
	db, err := gorm.Open(sqlite.Open("file::memory:?cache=shared"), &gorm.Config{Logger: logger.Default.LogMode(logger.Silent)})
	if err != nil {
		return err
	}
	if err := db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})); err != nil {
		return err
	}
	ctx := context.Background()
	all := migrations(ctx)

	// The app as it was: the users table, written in plaintext.
	if err := gormigrate.New(db, gormigrate.DefaultOptions, all[:1]).Migrate(); err != nil {
		return err
	}
	for _, u := range []userV1{{Name: "Ada", Email: "Ada@example.org"}, {Name: "Grace", Email: "grace@example.org"}} {
		if err := db.Create(&u).Error; err != nil {
			return err
		}
	}
	if err := show(db, "before the encryption migrations"); err != nil {
		return err
	}

	// The new release runs every migration not yet applied.
	if err := gormigrate.New(db, gormigrate.DefaultOptions, all).Migrate(); err != nil {
		return err
	}
	if err := show(db, "after them"); err != nil {
		return err
	}
	var u User
	if err := db.Where(envelope.Match("Email", "ADA@example.org")).Take(&u).Error; err != nil {
		return err
	}
	fmt.Printf("\nfound by email through the blind index: user %d, %s <%s>\n", u.ID, u.Name, u.Email)
	return nil
}

// show prints the stored users table (raw SQL, which the plugin does not
// decrypt).
func show(db *gorm.DB, when string) error {
	fmt.Printf("users table %s:\n", when)
	rows, err := db.Raw("SELECT * FROM users ORDER BY id").Rows()
	if err != nil {
		return err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return err
	}
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		for i, c := range cols {
			v := fmt.Sprint(vals[i])
			if b, ok := vals[i].([]byte); ok {
				v = string(b)
			}
			if len(v) > 40 {
				v = v[:40] + "…"
			}
			fmt.Printf("  %s=%s", c, v)
		}
		fmt.Println()
	}
	return rows.Err()
}

func masterKeys() (*dek.Keyring, error) {
	keys, err := dek.KeyringFromEnv()
	if !errors.Is(err, dek.ErrNoKey) {
		return keys, err
	}
	k, err := dek.GenerateKey()
	if err != nil {
		return nil, err
	}
	fmt.Printf("%s is not set: using a throwaway master key for this run.\n\n", dek.EnvKey)
	return dek.ParseKeyring(k)
}
