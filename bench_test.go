package envelope_test

import (
	"fmt"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// SecretRow has two encrypted fields; PlainRow is the same model unencrypted.
type SecretRow struct {
	ID       uint
	UserID   uint `gorm:"index" envelope:"owner"`
	Facility string
	Password string `gorm:"serializer:envelope"`
	Token    string `gorm:"serializer:envelope"`
}

type PlainRow struct {
	ID       uint
	UserID   uint `gorm:"index"`
	Facility string
	Password string
	Token    string
}

const (
	benchRows   = 10000
	benchOwners = 100
)

// BenchmarkFind reads 10k rows x 2 encrypted fields over 100 owners beside
// the same model unencrypted, on SQLite and PostgreSQL. "cold" empties the
// DEK cache before each read (one profiles query per Find); "warm" does not.
func BenchmarkFind(b *testing.B) {
	for _, d := range []testdb.Dialect{testdb.SQLite, testdb.Postgres} {
		b.Run(string(d), func(b *testing.B) {
			db := testdb.Open(b, d)
			p := envelope.New(envelope.Config{Keys: newKeys(b), Profile: &Profile{}})
			must(b, db.Use(p))
			must(b, db.AutoMigrate(&Profile{}, &SecretRow{}, &PlainRow{}))
			secret := make([]SecretRow, benchRows)
			plain := make([]PlainRow, benchRows)
			for i := range secret {
				u := uint(1 + i%benchOwners)
				pw, tok := fmt.Sprintf("password-%08d-abcdefghijkl", i), fmt.Sprintf("api-token-%08d-0123456789abcdef", i)
				secret[i] = SecretRow{UserID: u, Facility: "lco", Password: pw, Token: tok}
				plain[i] = PlainRow{UserID: u, Facility: "lco", Password: pw, Token: tok}
			}
			must(b, db.CreateInBatches(&secret, 1000).Error)
			must(b, db.CreateInBatches(&plain, 1000).Error)

			b.Run("plain", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					var out []PlainRow
					must(b, db.Find(&out).Error)
					if len(out) != benchRows {
						b.Fatal(len(out))
					}
				}
			})
			for _, mode := range []string{"warm", "cold"} {
				b.Run("envelope-"+mode, func(b *testing.B) {
					b.ReportAllocs()
					for b.Loop() {
						if mode == "cold" {
							envelope.PurgeCacheForTest(p)
						}
						var out []SecretRow
						must(b, db.Find(&out).Error)
						if len(out) != benchRows || out[0].Password == "" {
							b.Fatal("bad read")
						}
					}
				})
			}
		})
	}
}

// BenchmarkCreateInBatches writes 10k rows in batches of 1000.
func BenchmarkCreateInBatches(b *testing.B) {
	for _, d := range []testdb.Dialect{testdb.SQLite, testdb.Postgres} {
		b.Run(string(d), func(b *testing.B) {
			db := testdb.Open(b, d)
			must(b, db.Use(envelope.New(envelope.Config{Keys: newKeys(b), Profile: &Profile{}})))
			must(b, db.AutoMigrate(&Profile{}, &SecretRow{}, &PlainRow{}))
			b.Run("plain", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					rows := make([]PlainRow, benchRows)
					for i := range rows {
						rows[i] = PlainRow{UserID: uint(1 + i%benchOwners), Password: "password-abcdefghijkl", Token: "api-token-0123456789abcdef"}
					}
					must(b, db.CreateInBatches(&rows, 1000).Error)
				}
			})
			b.Run("envelope", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					rows := make([]SecretRow, benchRows)
					for i := range rows {
						rows[i] = SecretRow{UserID: uint(1 + i%benchOwners), Password: "password-abcdefghijkl", Token: "api-token-0123456789abcdef"}
					}
					must(b, db.CreateInBatches(&rows, 1000).Error)
				}
			})
		})
	}
}
