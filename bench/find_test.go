package bench

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/fernet/fernet-go"
	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"gorm.io/gorm"
)

// BenchmarkFind reads 10k rows with 2 encrypted fields (about 30 and 40
// bytes) over 100 owners, with each implementation beside the same model
// unencrypted. envelope-cold reads through a new plugin each time (empty
// DEK cache); envelope-warm through one whose cache holds every owner.
// raw-tokens reads the envelope table without decrypting, to separate the
// cost of the larger stored values from the cost of decryption.
// profiles-queries/op counts the statements that read the profiles table.
func BenchmarkFind(b *testing.B) {
	for _, dialect := range dialects {
		b.Run(dialect, func(b *testing.B) {
			keys := newKeys(b)
			bare := setupDB(b, dialect, keys)
			env, envQueries := withPlugin(b, bare, keys)
			secret := secretRows()
			must(b, env.CreateInBatches(&secret, batchSize).Error)
			envB, envBQueries := withFormat(b, bare, keys, envelope.FormatBound)
			bnd := boundRows()
			must(b, envB.CreateInBatches(&bnd, batchSize).Error)
			plain := plainRows()
			must(b, bare.CreateInBatches(&plain, batchSize).Error)
			gc := cryptoRows()
			must(b, bare.CreateInBatches(&gc, batchSize).Error)
			sc := crypterRows()
			must(b, bare.CreateInBatches(&sc, batchSize).Error)

			b.Run("plain", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					var out []PlainRow
					must(b, bare.Find(&out).Error)
					checkRead(b, len(out), out[len(out)-1].ID, out[len(out)-1].Token)
				}
			})
			b.Run("raw-tokens", func(b *testing.B) {
				// The envelope rows without decryption: what reading the
				// larger Fernet tokens alone costs.
				b.ReportAllocs()
				for b.Loop() {
					var out []TokenRow
					must(b, bare.Find(&out).Error)
					if len(out) != nRows || len(out[0].Token) < 100 {
						b.Fatal("bad read")
					}
				}
			})
			b.Run("envelope-warm", func(b *testing.B) { findWarm(b, env, envQueries, lastSecret) })
			b.Run("envelope-cold", func(b *testing.B) { findCold(b, bare, keys, envelope.FormatFernet, lastSecret) })
			b.Run("bound-warm", func(b *testing.B) { findWarm(b, envB, envBQueries, lastBound) })
			b.Run("bound-cold", func(b *testing.B) { findCold(b, bare, keys, envelope.FormatBound, lastBound) })
			b.Run("gorm-crypto", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					var out []CryptoRow
					must(b, bare.Find(&out).Error)
					last := out[len(out)-1]
					tok, _ := last.Token.Raw.(string)
					checkRead(b, len(out), last.ID, tok)
				}
			})
			b.Run("sqlcrypter", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					var out []CrypterRow
					must(b, bare.Find(&out).Error)
					last := out[len(out)-1]
					checkRead(b, len(out), last.ID, last.Token.String())
				}
			})
			b.Run("per-row", func(b *testing.B) {
				n := countProfileQueries(b, bare)
				start := n.Load()
				ctx := context.Background()
				b.ReportAllocs()
				for b.Loop() {
					out, err := perRowFind(ctx, bare, keys)
					must(b, err)
					checkRead(b, len(out), out[len(out)-1].ID, out[len(out)-1].Token)
				}
				b.ReportMetric(float64(n.Load()-start)/float64(b.N), "profiles-queries/op")
			})
		})
	}
}

func lastSecret(out []SecretRow) (uint, string) { l := out[len(out)-1]; return l.ID, l.Token }
func lastBound(out []BoundRow) (uint, string)   { l := out[len(out)-1]; return l.ID, l.Token }

// findWarm reads every row through db, whose plugin's cache holds every
// owner (the first read fills it); queries counts its profiles queries.
func findWarm[T any](b *testing.B, db *gorm.DB, queries *atomic.Int64, last func([]T) (uint, string)) {
	var warm []T
	must(b, db.Find(&warm).Error) // fills the cache
	start := queries.Load()
	b.ReportAllocs()
	for b.Loop() {
		var out []T
		must(b, db.Find(&out).Error)
		id, tok := last(out)
		checkRead(b, len(out), id, tok)
	}
	b.ReportMetric(float64(queries.Load()-start)/float64(b.N), "profiles-queries/op")
}

// findCold reads every row through a new plugin writing format each time
// (an empty DEK cache).
func findCold[T any](b *testing.B, bare *gorm.DB, keys *dek.Keyring, format envelope.Format, last func([]T) (uint, string)) {
	var queries int64
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		db, n := withFormat(b, bare, keys, format)
		// Parse the model outside the timer: a query that
		// finds no rows needs no DEK.
		var none []T
		must(b, db.Where("1 = 0").Find(&none).Error)
		start := n.Load()
		b.StartTimer()

		var out []T
		must(b, db.Find(&out).Error)

		b.StopTimer()
		queries += n.Load() - start
		id, tok := last(out)
		checkRead(b, len(out), id, tok)
		b.StartTimer()
	}
	b.ReportMetric(float64(queries)/float64(b.N), "profiles-queries/op")
}

// perRowFind reads the way the system we reproduce does: the tokens, then
// for every row its owner's profile, that DEK opened with the master key,
// and the row's fields decrypted with fernet-go.
func perRowFind(ctx context.Context, db *gorm.DB, keys *dek.Keyring) ([]PlainRow, error) {
	var rows []TokenRow
	if err := db.Find(&rows).Error; err != nil {
		return nil, err
	}
	out := make([]PlainRow, len(rows))
	for i, r := range rows {
		k, err := perRowKey(ctx, db, keys, r.UserID)
		if err != nil {
			return nil, err
		}
		ks := []*fernet.Key{k}
		pw := fernet.VerifyAndDecrypt([]byte(r.Password), 0, ks)
		tok := fernet.VerifyAndDecrypt([]byte(r.Token), 0, ks)
		if pw == nil || tok == nil {
			return nil, errors.New("per-row: fernet-go rejected a token")
		}
		out[i] = PlainRow{ID: r.ID, UserID: r.UserID, Facility: r.Facility, Password: string(pw), Token: string(tok)}
	}
	return out, nil
}

// checkRead checks a result has every row and the last one in plaintext.
func checkRead(b *testing.B, n int, lastID uint, lastToken string) {
	b.Helper()
	if n != nRows {
		b.Fatalf("read %d rows, want %d", n, nRows)
	}
	if want := token(int(lastID) - 1); lastToken != want {
		b.Fatalf("row %d: token %q, want %q", lastID, lastToken, want)
	}
}
