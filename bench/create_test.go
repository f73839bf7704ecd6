package bench

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/fernet/fernet-go"
	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"gorm.io/gorm"
)

// BenchmarkCreateInBatches writes 10k rows with 2 encrypted fields in
// batches of 1000, into an emptied table each time, beside the same model
// unencrypted. raw-tokens writes rows encrypted beforehand, to separate
// the cost of the larger stored values from the cost of encryption. The profiles and their DEKs exist already: this measures
// encryption and key lookup, not DEK creation. Building the rows and
// emptying the table are outside the timer.
func BenchmarkCreateInBatches(b *testing.B) {
	for _, dialect := range dialects {
		b.Run(dialect, func(b *testing.B) {
			keys := newKeys(b)
			bare := setupDB(b, dialect, keys)
			env, envQueries := withPlugin(b, bare, keys)

			b.Run("plain", func(b *testing.B) {
				createLoop(b, bare, "plain_rows", plainRows, func(rows []PlainRow) error {
					return bare.CreateInBatches(&rows, batchSize).Error
				})
			})
			b.Run("raw-tokens", func(b *testing.B) {
				// Tokens made before the timer starts: what writing the
				// larger Fernet tokens alone costs.
				tokens := tokenRows(b, bare, keys)
				createLoop(b, bare, "secret_rows", func() []TokenRow { return slices.Clone(tokens) }, func(rows []TokenRow) error {
					return bare.CreateInBatches(&rows, batchSize).Error
				})
			})
			b.Run("envelope-warm", func(b *testing.B) {
				createWarm(b, bare, env, envQueries, "secret_rows", secretRows)
			})
			b.Run("envelope-cold", func(b *testing.B) {
				createCold(b, bare, keys, envelope.FormatFernet, "secret_rows", secretRows, func(r []SecretRow) uint { return r[len(r)-1].ID })
			})
			b.Run("bound-warm", func(b *testing.B) {
				envB, n := withFormat(b, bare, keys, envelope.FormatBound)
				createWarm(b, bare, envB, n, "bound_rows", boundRows)
			})
			b.Run("bound-cold", func(b *testing.B) {
				createCold(b, bare, keys, envelope.FormatBound, "bound_rows", boundRows, func(r []BoundRow) uint { return r[len(r)-1].ID })
			})
			b.Run("gorm-crypto", func(b *testing.B) {
				createLoop(b, bare, "crypto_rows", cryptoRows, func(rows []CryptoRow) error {
					return bare.CreateInBatches(&rows, batchSize).Error
				})
			})
			b.Run("sqlcrypter", func(b *testing.B) {
				createLoop(b, bare, "crypter_rows", crypterRows, func(rows []CrypterRow) error {
					return bare.CreateInBatches(&rows, batchSize).Error
				})
			})
			b.Run("per-row", func(b *testing.B) {
				ctx := context.Background()
				n := countProfileQueries(b, bare)
				start := n.Load()
				createLoop(b, bare, "secret_rows", plainRows, func(rows []PlainRow) error {
					return perRowCreate(ctx, bare, keys, rows)
				})
				b.ReportMetric(float64(n.Load()-start)/float64(b.N), "profiles-queries/op")
			})
		})
	}
}

// createWarm times CreateInBatches through db, whose plugin's cache holds
// every owner; queries counts its profiles queries.
func createWarm[T any](b *testing.B, bare, db *gorm.DB, queries *atomic.Int64, table string, build func() []T) {
	// Fill the cache with every owner. CreateInBatches of more than one
	// batch runs in a transaction of its own, and keys loaded inside a
	// transaction are not cached: a read does it.
	first := build()
	must(b, db.CreateInBatches(&first, batchSize).Error)
	var warm []T
	must(b, db.Find(&warm).Error)
	start := queries.Load()
	createLoop(b, bare, table, build, func(rows []T) error {
		return db.CreateInBatches(&rows, batchSize).Error
	})
	b.ReportMetric(float64(queries.Load()-start)/float64(b.N), "profiles-queries/op")
}

// createCold times CreateInBatches through a new plugin writing format
// each time (an empty DEK cache), into an emptied table.
func createCold[T any](b *testing.B, bare *gorm.DB, keys *dek.Keyring, format envelope.Format, table string, build func() []T, lastID func([]T) uint) {
	var queries int64
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		truncate(b, bare, table)
		rows := build()
		db, n := withFormat(b, bare, keys, format)
		var none []T
		must(b, db.Where("1 = 0").Find(&none).Error)
		start := n.Load()
		b.StartTimer()

		must(b, db.CreateInBatches(&rows, batchSize).Error)

		b.StopTimer()
		queries += n.Load() - start
		checkWrite(b, lastID(rows))
		b.StartTimer()
	}
	b.ReportMetric(float64(queries)/float64(b.N), "profiles-queries/op")
}

// createLoop times write(rows) with fresh rows into an emptied table.
func createLoop[T any](b *testing.B, bare *gorm.DB, table string, build func() []T, write func([]T) error) {
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		truncate(b, bare, table)
		rows := build()
		b.StartTimer()

		must(b, write(rows))

		b.StopTimer()
		var n int64
		must(b, bare.Table(table).Count(&n).Error)
		if n != nRows {
			b.Fatalf("%s has %d rows, want %d", table, n, nRows)
		}
		b.StartTimer()
	}
}

func checkWrite(b *testing.B, lastID uint) {
	b.Helper()
	if lastID == 0 {
		b.Fatal("rows were not written")
	}
}

// perRowCreate writes the way the system we reproduce does: for every row
// its owner's profile, that DEK opened with the master key, the fields
// encrypted with fernet-go; then the rows inserted in batches.
func perRowCreate(ctx context.Context, db *gorm.DB, keys *dek.Keyring, rows []PlainRow) error {
	out := make([]TokenRow, len(rows))
	for i, r := range rows {
		k, err := perRowKey(ctx, db, keys, r.UserID)
		if err != nil {
			return err
		}
		pw, err := fernet.EncryptAndSign([]byte(r.Password), k)
		if err != nil {
			return err
		}
		tok, err := fernet.EncryptAndSign([]byte(r.Token), k)
		if err != nil {
			return err
		}
		out[i] = TokenRow{UserID: r.UserID, Facility: r.Facility, Password: string(pw), Token: string(tok)}
	}
	return db.CreateInBatches(&out, batchSize).Error
}

// tokenRows returns the rows of plainRows with their fields already
// encrypted under their owners' DEKs.
func tokenRows(b *testing.B, db *gorm.DB, keys *dek.Keyring) []TokenRow {
	b.Helper()
	ctx := context.Background()
	fkeys := map[uint]*fernet.Key{}
	rows := plainRows()
	out := make([]TokenRow, len(rows))
	for i, r := range rows {
		k := fkeys[r.UserID]
		if k == nil {
			var err error
			k, err = perRowKey(ctx, db, keys, r.UserID)
			must(b, err)
			fkeys[r.UserID] = k
		}
		pw, err := fernet.EncryptAndSign([]byte(r.Password), k)
		must(b, err)
		tok, err := fernet.EncryptAndSign([]byte(r.Token), k)
		must(b, err)
		out[i] = TokenRow{UserID: r.UserID, Facility: r.Facility, Password: string(pw), Token: string(tok)}
	}
	return out
}
