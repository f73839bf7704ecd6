package envelope_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// MatchRow is found by email through a full and a 32-bit global index;
// MatchPlain is the same table with the email in clear, indexed.
type MatchRow struct {
	ID         uint
	UserID     uint    `gorm:"index" envelope:"owner"`
	Email      string  `gorm:"serializer:envelope"`
	EmailIdx   *string `gorm:"size:80;index" envelope:"index:Email;scope:global;transform:lower"`
	EmailIdx32 *string `gorm:"size:20;index" envelope:"index:Email;scope:global;bits:32;transform:lower;name:match_rows.email32"`
}

type MatchPlain struct {
	ID     uint
	UserID uint   `gorm:"index"`
	Email  string `gorm:"size:80;index"`
}

// IndexedRow is SecretRow with a per-owner index of Token.
type IndexedRow struct {
	ID       uint
	UserID   uint `gorm:"index" envelope:"owner"`
	Facility string
	Password string  `gorm:"serializer:envelope"`
	Token    string  `gorm:"serializer:envelope"`
	TokenIdx *string `gorm:"size:80;index" envelope:"index:Token"`
}

func matchTable(tb testing.TB, db *gorm.DB, n int) {
	tb.Helper()
	must(tb, db.AutoMigrate(&MatchRow{}, &MatchPlain{}))
	rows := make([]MatchRow, n)
	plain := make([]MatchPlain, n)
	for i := range rows {
		e := fmt.Sprintf("user%06d@example.org", i)
		rows[i] = MatchRow{UserID: uint(1 + i%1000), Email: e}
		plain[i] = MatchPlain{UserID: uint(1 + i%1000), Email: e}
	}
	must(tb, db.CreateInBatches(&rows, 2000).Error)
	must(tb, db.CreateInBatches(&plain, 2000).Error)
	must(tb, db.Exec("ANALYZE match_rows").Error)
	must(tb, db.Exec("ANALYZE match_plains").Error)
}

// The database answers a match from its index on the index column.
func TestMatchUsesDatabaseIndex(t *testing.T) {
	db := testdb.Open(t, testdb.Postgres)
	setup(t, db, newKeys(t))
	matchTable(t, db, 5000)
	for _, field := range []string{"Email", "EmailIdx32"} {
		stmt := db.Session(&gorm.Session{DryRun: true}).Where(envelope.Match(field, "user000042@example.org")).First(&MatchRow{}).Statement
		var plan []string
		must(t, db.Raw("EXPLAIN "+stmt.SQL.String(), stmt.Vars...).Scan(&plan).Error)
		text := strings.Join(plan, "\n")
		t.Logf("EXPLAIN %s\n%s", stmt.SQL.String(), text)
		if !strings.Contains(text, "Index") || !strings.Contains(text, "idx_match_rows_email_idx") {
			t.Errorf("match on %s does not use the index:\n%s", field, text)
		}
	}
}

// BenchmarkMatch finds one row of 100k by email on PostgreSQL: through a
// full and a 32-bit blind index, beside an equality lookup on a plain
// indexed column.
func BenchmarkMatch(b *testing.B) {
	db := testdb.Open(b, testdb.Postgres)
	setup(b, db, newKeys(b))
	const n = 100000
	matchTable(b, db, n)
	// Every owner's DEK cached, as in an app that serves them.
	var all []MatchRow
	must(b, db.Find(&all).Error)
	i := 0
	next := func() string { i = (i + 7919) % n; return fmt.Sprintf("user%06d@example.org", i) }
	b.Run("plain-indexed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r MatchPlain
			e := next()
			must(b, db.Where("email = ?", e).First(&r).Error)
			if r.Email != e {
				b.Fatal(r)
			}
		}
	})
	for _, field := range []string{"Email", "EmailIdx32"} {
		name := map[string]string{"Email": "match-256bit", "EmailIdx32": "match-32bit"}[field]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var r MatchRow
				e := next()
				must(b, db.Where(envelope.Match(field, e)).First(&r).Error)
				if r.Email != e {
					b.Fatal(r)
				}
			}
		})
	}
}

// BenchmarkCreateInBatchesIndexed is BenchmarkCreateInBatches with one
// indexed field, beside the same model without the index.
func BenchmarkCreateInBatchesIndexed(b *testing.B) {
	for _, d := range []testdb.Dialect{testdb.SQLite, testdb.Postgres} {
		b.Run(string(d), func(b *testing.B) {
			db := testdb.Open(b, d)
			must(b, db.Use(envelope.New(envelope.Config{Keys: newKeys(b), Profile: &Profile{}})))
			must(b, db.AutoMigrate(&Profile{}, &SecretRow{}, &IndexedRow{}))
			b.Run("envelope", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					rows := make([]SecretRow, benchRows)
					for i := range rows {
						rows[i] = SecretRow{UserID: uint(1 + i%benchOwners), Password: "password-abcdefghijkl", Token: fmt.Sprintf("api-token-%08d", i)}
					}
					must(b, db.CreateInBatches(&rows, 1000).Error)
				}
			})
			b.Run("envelope-indexed", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					rows := make([]IndexedRow, benchRows)
					for i := range rows {
						rows[i] = IndexedRow{UserID: uint(1 + i%benchOwners), Password: "password-abcdefghijkl", Token: fmt.Sprintf("api-token-%08d", i)}
					}
					must(b, db.CreateInBatches(&rows, 1000).Error)
				}
			})
		})
	}
}
