package rotate_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"strings"
	"testing"

	mysqldrv "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/rotate"
)

// Credential is app data with encrypted fields of every kind.
type Credential struct {
	ID       uint
	UserID   uint `envelope:"owner"`
	Facility string
	Password string  `gorm:"serializer:envelope"`
	APIKey   *string `gorm:"serializer:envelope"`
	Blob     []byte  `gorm:"serializer:envelope"`
}

// strictMySQL opens a MySQL/MariaDB test database in MySQL 8's default
// sql_mode, which is strict: a value too long for its column, or a string
// not valid in the column's character set, is an error instead of being
// cut or mangled.
func strictMySQL(t *testing.T) (*gorm.DB, string) {
	t.Helper()
	cfg, err := mysqldrv.ParseDSN(testdb.DSN(t, testdb.Open(t, testdb.MySQL)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Params["sql_mode"] = "'ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'"
	dsn := cfg.FormatDSN()
	db := openMySQL(t, dsn)
	var mode string
	if err := db.Raw("SELECT @@SESSION.sql_mode").Scan(&mode).Error; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(mode, "STRICT_TRANS_TABLES") {
		t.Fatalf("sql_mode %q is not strict", mode)
	}
	return db, dsn
}

// openMySQL opens a handle of its own (its own pool, and for the plugin its
// own DEK cache) on dsn, closed when t ends.
func openMySQL(t *testing.T, dsn string) *gorm.DB {
	t.Helper()
	db, err := gorm.Open(mysql.Open(dsn), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sqlDB.Close() })
	return db
}

// columnType returns the DATA_TYPE of a column of the current database.
func columnType(t *testing.T, db *gorm.DB, table, column string) string {
	t.Helper()
	var ty string
	err := db.Raw("SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?", table, column).Scan(&ty).Error
	if err != nil || ty == "" {
		t.Fatalf("type of %s.%s: %q, %v", table, column, ty, err)
	}
	return ty
}

// In strict mode, AutoMigrate gives the DEK a binary column and encrypted
// fields text columns; DEKs of any bytes round-trip exactly, tokens of
// 5 KB values fit, and rotating leaves every value readable.
func TestMySQLStrictColumns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, dsn := strictMySQL(t)
	oldKey, newKey := genKey(t), genKey(t)
	oldRing := ring(t, oldKey)
	app := openMySQL(t, dsn)
	if err := app.Use(envelope.New(envelope.Config{Keys: oldRing, Profile: &Profile{}})); err != nil {
		t.Fatal(err)
	}
	if err := app.AutoMigrate(&Profile{}, &Credential{}); err != nil {
		t.Fatal(err)
	}
	if ty := columnType(t, db, "profiles", "encrypted_dek"); ty != "longblob" {
		t.Errorf("profiles.encrypted_dek is %s, want longblob", ty)
	}
	for _, col := range []string{"password", "api_key", "blob"} {
		if ty := columnType(t, db, "credentials", col); !strings.HasSuffix(ty, "text") {
			t.Errorf("credentials.%s is %s, want a text type", col, ty)
		}
	}

	// Every byte value, not valid UTF-8, stored and read back exactly.
	raw := make([]byte, 256)
	for i := range raw {
		raw[i] = byte(i)
	}
	if err := db.Create(&Profile{UserID: 1000, EncryptedDEK: raw}).Error; err != nil {
		t.Fatal(err)
	}
	var p Profile
	if err := db.Where("user_id = ?", 1000).First(&p).Error; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.EncryptedDEK, raw) {
		t.Fatalf("DEK column changed the bytes: got %d bytes %q", len(p.EncryptedDEK), p.EncryptedDEK)
	}
	if err := db.Delete(&p).Error; err != nil {
		t.Fatal(err)
	}

	long := strings.Repeat("é123456789", 500) // 5,500 bytes of UTF-8
	api := long + "-api"
	blob := bytes.Repeat([]byte{0, 0xff, 0x80}, 5000/3+1)[:5000]
	for owner := uint(1); owner <= 3; owner++ {
		c := Credential{UserID: owner, Facility: "lco", Password: long, APIKey: &api, Blob: blob}
		if err := app.Create(&c).Error; err != nil {
			t.Fatal(err)
		}
	}
	// A Fernet token: version, time, IV, the padded ciphertext and the
	// HMAC, in URL-safe base64.
	want := base64.URLEncoding.EncodedLen(1 + 8 + 16 + (len(long)/16+1)*16 + 32)
	var n int64
	if err := db.Raw("SELECT min(length(password)) FROM credentials").Scan(&n).Error; err != nil {
		t.Fatal(err)
	}
	if n != int64(want) {
		t.Errorf("stored token is %d bytes, want %d", n, want)
	}
	read := func(keys *dek.Keyring) {
		t.Helper()
		reader := openMySQL(t, dsn)
		if err := reader.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})); err != nil {
			t.Fatal(err)
		}
		var cs []Credential
		if err := reader.Order("id").Find(&cs).Error; err != nil {
			t.Fatal(err)
		}
		if len(cs) != 3 {
			t.Fatalf("read %d credentials, want 3", len(cs))
		}
		for _, c := range cs {
			if c.Password != long || c.APIKey == nil || *c.APIKey != api || !bytes.Equal(c.Blob, blob) {
				t.Errorf("owner %d: values changed in the round trip", c.UserID)
			}
		}
	}
	read(oldRing)

	// Rotate (through the bulk writer) and read with the new key alone.
	res, err := rotate.Run(ctx, db, rotate.Options{Keys: ring(t, newKey, oldKey), Profile: &Profile{}})
	if err != nil || res.Rotated != 3 {
		t.Fatalf("rotate: %+v, %v", res, err)
	}
	newRing := ring(t, newKey)
	if _, err := rotate.Verify(ctx, db, rotate.Options{Keys: newRing, Profile: &Profile{}}); err != nil {
		t.Fatal(err)
	}
	read(newRing)
}

func genKey(t *testing.T) string {
	t.Helper()
	k, err := dek.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ring(t *testing.T, primary string, previous ...string) *dek.Keyring {
	t.Helper()
	r, err := dek.ParseKeyring(primary, previous...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
