// Command basic shows gorm-envelope on an in-memory SQLite database: it
// stores two users' credentials, prints each stored column beside the value
// read back through GORM, logs a user in by an encrypted email through its
// blind index, and shows writes the plugin refuses.
//
//	go run ./examples/basic
//
// With DEK_ENCRYPTION_KEY unset it uses a throwaway master key.
package main

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Profile holds one row per user: that user's DEK, encrypted under the
// master key. The plugin creates the row on the user's first write.
type Profile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"` // must be unique
	EncryptedDEK []byte `envelope:"dek"`                      // column encrypted_dek
}

// Credential has three encrypted fields, each encrypted with its user's DEK.
type Credential struct {
	ID       uint
	UserID   uint `envelope:"owner"`
	Facility string
	Password string  `gorm:"serializer:envelope"`
	APIKey   *string `gorm:"serializer:envelope"` // nil <-> NULL
	Blob     []byte  `gorm:"serializer:envelope"`
}

// User encrypts its own email (its id is its owner), and finds users by
// email through a blind index: a keyed hash of the lower-cased address.
type User struct {
	ID       uint    `envelope:"owner"`
	Email    string  `gorm:"serializer:envelope"`
	EmailIdx *string `gorm:"size:80;uniqueIndex" envelope:"index:Email;scope:global;transform:trim,lower"`
}

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

	db, err := gorm.Open(sqlite.Open("file::memory:?cache=shared"), &gorm.Config{
		Logger: logger.Default.LogMode(logger.Silent),
	})
	if err != nil {
		return err
	}
	if err := db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})); err != nil {
		return err
	}
	if err := db.AutoMigrate(&Profile{}, &Credential{}, &User{}); err != nil {
		return err
	}

	// Two users. Each one's first write creates their Profile row and DEK.
	creds := []Credential{
		{UserID: 1, Facility: "lco", Password: "hunter2", APIKey: ptr("lco-key-1111"), Blob: []byte("cert")},
		{UserID: 1, Facility: "soar", Password: "correct horse battery staple"},
		{UserID: 2, Facility: "lco", Password: "s3cret", APIKey: ptr("lco-key-2222")},
	}
	if err := db.Create(&creds).Error; err != nil {
		return err
	}

	if err := printCredentials(db); err != nil {
		return err
	}
	if err := printProfiles(db); err != nil {
		return err
	}

	if err := login(db); err != nil {
		return err
	}

	fmt.Println("\nRefused writes (nothing is written):")
	alice := creds[0]
	err = db.Model(&alice).Update("password", gorm.Expr("facility")).Error
	fmt.Printf("  Update(\"password\", gorm.Expr(\"facility\")): ErrUnsafe=%v\n    %v\n", errors.Is(err, envelope.ErrUnsafe), err)
	err = db.Create(&Credential{Facility: "lco", Password: "whose?"}).Error
	fmt.Printf("  Create without UserID: ErrNoOwner=%v\n    %v\n", errors.Is(err, envelope.ErrNoOwner), err)
	var n int64
	var again Credential
	if err := db.Model(&Credential{}).Count(&n).Error; err != nil {
		return err
	}
	if err := db.First(&again, alice.ID).Error; err != nil {
		return err
	}
	fmt.Printf("  afterwards: %d credentials, row %d password still %q\n", n, again.ID, again.Password)

	// Copy user 2's stored password token into user 1's row, bypassing the
	// plugin. User 1's DEK does not open it.
	fmt.Println("\nUser 2's password token copied into user 1's row with raw SQL:")
	if err := db.Exec("UPDATE credentials SET password = (SELECT password FROM credentials WHERE id = ?) WHERE id = ?", creds[2].ID, alice.ID).Error; err != nil {
		return err
	}
	var got Credential
	err = db.First(&got, alice.ID).Error
	fmt.Printf("  First: ErrDecrypt=%v, Password=%q\n    %v\n", errors.Is(err, envelope.ErrDecrypt), got.Password, err)
	return nil
}

// login signs two users up and finds one by email, as a login form would.
func login(db *gorm.DB) error {
	fmt.Println("\nLogin by email, through the blind index email_idx:")
	for _, e := range []string{"Ada@Example.org", "grace@example.org"} {
		if err := db.Create(&User{Email: e}).Error; err != nil {
			return err
		}
	}
	var u User
	if err := db.Where(envelope.Match("Email", " ada@EXAMPLE.org")).First(&u).Error; err != nil {
		return err
	}
	var stored struct{ Email, EmailIdx string }
	if err := db.Raw("SELECT email, email_idx FROM users WHERE id = ?", u.ID).Scan(&stored).Error; err != nil {
		return err
	}
	fmt.Printf("  Match(\"Email\", \" ada@EXAMPLE.org\") finds user %d, email %q\n", u.ID, u.Email)
	fmt.Printf("    stored email %s, email_idx %s\n", short(sql.NullString{String: stored.Email, Valid: true}), stored.EmailIdx)
	err := db.Create(&User{Email: "ada@example.org"}).Error
	fmt.Printf("  sign-up with a taken address: ErrDuplicate=%v\n    %v\n", errors.Is(err, envelope.ErrDuplicate), err)
	return nil
}

// masterKeys reads DEK_ENCRYPTION_KEY, or makes a throwaway key if it is unset.
func masterKeys() (*dek.Keyring, error) {
	keys, err := dek.KeyringFromEnv()
	if !errors.Is(err, dek.ErrNoKey) {
		return keys, err
	}
	k, err := dek.GenerateKey()
	if err != nil {
		return nil, err
	}
	fmt.Printf(`%s is not set: using a throwaway master key for this run.
Data written under it cannot be read once the program exits. For real data,
make a key with "go run ./cmd/envelope keygen", keep it safe, and export it
as %s.

`, dek.EnvKey, dek.EnvKey)
	return dek.ParseKeyring(k)
}

// printCredentials prints each encrypted column as stored (read with raw
// SQL, which the plugin does not decrypt) beside the value GORM returns.
func printCredentials(db *gorm.DB) error {
	rows, err := db.Raw("SELECT id, password, api_key, blob FROM credentials ORDER BY id").Rows()
	if err != nil {
		return err
	}
	stored := map[uint][3]string{}
	for rows.Next() {
		var id uint
		var pw, key sql.NullString
		var blob []byte
		if err := rows.Scan(&id, &pw, &key, &blob); err != nil {
			rows.Close()
			return err
		}
		stored[id] = [3]string{short(pw), short(key), shortBytes(blob)}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}

	var creds []Credential
	if err := db.Order("id").Find(&creds).Error; err != nil {
		return err
	}
	fmt.Println("Credentials: the stored column (raw SQL) and the value read through GORM")
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  id\tuser\tfacility\tcolumn\tstored in the database\tread through GORM")
	for _, c := range creds {
		s := stored[c.ID]
		apiKey := "nil"
		if c.APIKey != nil {
			apiKey = fmt.Sprintf("%q", *c.APIKey)
		}
		blob := "nil"
		if c.Blob != nil {
			blob = fmt.Sprintf("[]byte(%q)", c.Blob)
		}
		fmt.Fprintf(w, "  %d\t%d\t%s\tpassword\t%s\t%q\n", c.ID, c.UserID, c.Facility, s[0], c.Password)
		fmt.Fprintf(w, "  \t\t\tapi_key\t%s\t%s\n", s[1], apiKey)
		fmt.Fprintf(w, "  \t\t\tblob\t%s\t%s\n", s[2], blob)
	}
	return w.Flush()
}

// printProfiles prints each user's encrypted DEK as stored.
func printProfiles(db *gorm.DB) error {
	rows, err := db.Raw("SELECT user_id, encrypted_dek FROM profiles ORDER BY user_id").Rows()
	if err != nil {
		return err
	}
	defer rows.Close()
	fmt.Println("\nProfiles: each user's DEK, encrypted under the master key")
	for rows.Next() {
		var user uint
		var enc []byte
		if err := rows.Scan(&user, &enc); err != nil {
			return err
		}
		fmt.Printf("  user %d  encrypted_dek %s\n", user, shortBytes(enc))
	}
	return rows.Err()
}

// short shows the start of a stored token and its length, or NULL.
func short(s sql.NullString) string {
	if !s.Valid {
		return "NULL"
	}
	if len(s.String) <= 12 {
		return fmt.Sprintf("%q", s.String)
	}
	return fmt.Sprintf("%s…(%d chars)", s.String[:8], len(s.String))
}

func shortBytes(b []byte) string {
	return short(sql.NullString{String: string(b), Valid: b != nil})
}

func ptr[T any](v T) *T { return &v }
