package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	sqlcrypter "github.com/bincyber/go-sqlcrypter"
	"github.com/bincyber/go-sqlcrypter/providers/aesgcm"
	"github.com/fernet/fernet-go"
	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	gormcrypto "github.com/pkasila/gorm-crypto"
	"github.com/pkasila/gorm-crypto/algorithms"
	"github.com/pkasila/gorm-crypto/serialization"
	"gorm.io/gorm"
)

const (
	nRows     = 10000
	nOwners   = 100
	batchSize = 1000
)

// Profile is the app's profile model: one row per owner with its DEK.
type Profile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

// PlainRow is the baseline: the same fields, unencrypted.
type PlainRow struct {
	ID       uint
	UserID   uint `gorm:"index"`
	Facility string
	Password string
	Token    string
}

// SecretRow is the envelope model: two fields under the owner's DEK.
type SecretRow struct {
	ID       uint
	UserID   uint `gorm:"index" envelope:"owner"`
	Facility string
	Password string `gorm:"serializer:envelope"`
	Token    string `gorm:"serializer:envelope"`
}

// BoundRow is SecretRow written in the bound format (its own table, so
// the two formats are read separately).
type BoundRow struct {
	ID       uint
	UserID   uint `gorm:"index" envelope:"owner"`
	Facility string
	Password string `gorm:"serializer:envelope"`
	Token    string `gorm:"serializer:envelope"`
}

func boundRows() []BoundRow {
	rows := make([]BoundRow, nRows)
	for i := range rows {
		rows[i] = BoundRow{UserID: owner(i), Facility: "lco", Password: password(i), Token: token(i)}
	}
	return rows
}

// TokenRow is secret_rows as the per-row approach sees it: Fernet tokens
// it decrypts itself.
type TokenRow struct {
	ID       uint
	UserID   uint `gorm:"index"`
	Facility string
	Password string
	Token    string
}

func (TokenRow) TableName() string { return "secret_rows" }

// CryptoRow uses github.com/pkasila/gorm-crypto (AES-256-GCM, JSON, one key).
type CryptoRow struct {
	ID       uint
	UserID   uint `gorm:"index"`
	Facility string
	Password gormcrypto.EncryptedValue `gorm:"type:bytes"`
	Token    gormcrypto.EncryptedValue `gorm:"type:bytes"`
}

// CrypterRow uses github.com/bincyber/go-sqlcrypter (AES-256-GCM, one key).
type CrypterRow struct {
	ID       uint
	UserID   uint `gorm:"index"`
	Facility string
	Password sqlcrypter.EncryptedBytes
	Token    sqlcrypter.EncryptedBytes
}

// allModels are migrated in every benchmark database.
var allModels = []any{&Profile{}, &PlainRow{}, &SecretRow{}, &BoundRow{}, &CryptoRow{}, &CrypterRow{}}

// password and token are about 30 and 40 bytes.
func password(i int) string { return fmt.Sprintf("password-%08d-abcdefghijkl", i) }
func token(i int) string    { return fmt.Sprintf("api-token-%08d-0123456789abcdef0123456", i) }
func owner(i int) uint      { return uint(1 + i%nOwners) }

func plainRows() []PlainRow {
	rows := make([]PlainRow, nRows)
	for i := range rows {
		rows[i] = PlainRow{UserID: owner(i), Facility: "lco", Password: password(i), Token: token(i)}
	}
	return rows
}

func secretRows() []SecretRow {
	rows := make([]SecretRow, nRows)
	for i := range rows {
		rows[i] = SecretRow{UserID: owner(i), Facility: "lco", Password: password(i), Token: token(i)}
	}
	return rows
}

func cryptoRows() []CryptoRow {
	rows := make([]CryptoRow, nRows)
	for i := range rows {
		rows[i] = CryptoRow{UserID: owner(i), Facility: "lco",
			Password: gormcrypto.EncryptedValue{Raw: password(i)}, Token: gormcrypto.EncryptedValue{Raw: token(i)}}
	}
	return rows
}

func crypterRows() []CrypterRow {
	rows := make([]CrypterRow, nRows)
	for i := range rows {
		rows[i] = CrypterRow{UserID: owner(i), Facility: "lco",
			Password: sqlcrypter.NewEncryptedBytes(password(i)), Token: sqlcrypter.NewEncryptedBytes(token(i))}
	}
	return rows
}

var peersOnce sync.Once

// initPeers sets the peers' process-global keys (each takes exactly one).
func initPeers(b testing.TB) {
	b.Helper()
	peersOnce.Do(func() {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			panic(err)
		}
		gcm, err := algorithms.NewAES256GCM(key)
		if err != nil {
			panic(err)
		}
		gormcrypto.Init(gcm, serialization.NewJSON())

		key2 := make([]byte, 32)
		if _, err := rand.Read(key2); err != nil {
			panic(err)
		}
		c, err := aesgcm.New(key2, nil)
		if err != nil {
			panic(err)
		}
		sqlcrypter.Init(c)
	})
}

func newKeys(b testing.TB) *dek.Keyring {
	b.Helper()
	k, err := dek.GenerateKey()
	must(b, err)
	r, err := dek.ParseKeyring(k)
	must(b, err)
	return r
}

// withPlugin returns a new *gorm.DB on bare's pool with a new envelope
// plugin (so an empty DEK cache), and a counter of its profiles queries.
func withPlugin(b testing.TB, bare *gorm.DB, keys *dek.Keyring) (*gorm.DB, *atomic.Int64) {
	return withFormat(b, bare, keys, envelope.FormatFernet)
}

// withFormat is withPlugin with a plugin writing format.
func withFormat(b testing.TB, bare *gorm.DB, keys *dek.Keyring, format envelope.Format) (*gorm.DB, *atomic.Int64) {
	b.Helper()
	db := reopen(b, bare)
	must(b, db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Format: format})))
	return db, countProfileQueries(b, db)
}

// countProfileQueries counts the statements db runs against profiles.
func countProfileQueries(b testing.TB, db *gorm.DB) *atomic.Int64 {
	b.Helper()
	n := new(atomic.Int64)
	f := func(tx *gorm.DB) {
		if tx.Statement.Table == "profiles" {
			n.Add(1)
		}
	}
	cb := db.Callback()
	must(b, cb.Query().Before("gorm:query").Register("bench:count_profiles", f))
	must(b, cb.Row().Before("gorm:row").Register("bench:count_profiles_row", f))
	return n
}

// setupDB opens a fresh database of dialect, migrates every model and
// creates the owners' profiles, each with a DEK under keys.
func setupDB(b testing.TB, dialect string, keys *dek.Keyring) *gorm.DB {
	b.Helper()
	initPeers(b)
	bare := openFresh(b, dialect)
	// The plugin registers the envelope serializer, which migration needs.
	env, _ := withPlugin(b, bare, keys)
	must(b, bare.AutoMigrate(allModels...))
	profiles := make([]Profile, nOwners)
	for i := range profiles {
		profiles[i] = Profile{UserID: uint(i + 1)}
	}
	must(b, env.Create(&profiles).Error)
	var missing int64
	must(b, bare.Model(&Profile{}).Where("encrypted_dek IS NULL").Count(&missing).Error)
	if missing != 0 {
		b.Fatalf("%d profiles have no DEK", missing)
	}
	return bare
}

// perRowKey is the per-row approach's key step: one query for the owner's
// profile, then the DEK decrypted with the master key.
func perRowKey(ctx context.Context, db *gorm.DB, keys *dek.Keyring, userID uint) (*fernet.Key, error) {
	var p Profile
	if err := db.Where("user_id = ?", userID).Take(&p).Error; err != nil {
		return nil, err
	}
	d, _, err := keys.Open(ctx, p.EncryptedDEK)
	if err != nil {
		return nil, err
	}
	k := fernet.Key(d)
	return &k, nil
}
