package bench

import (
	"context"
	"testing"
)

// TestRoundTrip checks every implementation reads back what it wrote,
// and that the per-row approach and envelope read each other's rows.
func TestRoundTrip(t *testing.T) {
	for _, dialect := range dialects {
		t.Run(dialect, func(t *testing.T) {
			ctx := context.Background()
			keys := newKeys(t)
			bare := setupDB(t, dialect, keys)
			env, _ := withPlugin(t, bare, keys)

			// envelope writes, per-row reads.
			secret := secretRows()[:nRows]
			must(t, env.CreateInBatches(&secret, batchSize).Error)
			got, err := perRowFind(ctx, bare, keys)
			must(t, err)
			for i, r := range got {
				if r.Password != password(int(r.ID)-1) || r.Token != token(int(r.ID)-1) {
					t.Fatalf("per-row read row %d wrong", i)
				}
			}

			// per-row writes, envelope reads.
			truncate(t, bare, "secret_rows")
			must(t, perRowCreate(ctx, bare, keys, plainRows()))
			var back []SecretRow
			must(t, env.Order("id").Find(&back).Error)
			if len(back) != nRows {
				t.Fatalf("envelope read %d rows", len(back))
			}
			for i, r := range back {
				if r.Password != password(i) || r.Token != token(i) {
					t.Fatalf("envelope read row %d wrong", i)
				}
			}

			gc := cryptoRows()
			must(t, bare.CreateInBatches(&gc, batchSize).Error)
			var gcBack []CryptoRow
			must(t, bare.Order("id").Find(&gcBack).Error)
			for i, r := range gcBack {
				if r.Password.Raw != password(i) || r.Token.Raw != token(i) {
					t.Fatalf("gorm-crypto row %d wrong", i)
				}
			}

			sc := crypterRows()
			must(t, bare.CreateInBatches(&sc, batchSize).Error)
			var scBack []CrypterRow
			must(t, bare.Order("id").Find(&scBack).Error)
			for i, r := range scBack {
				if r.Password.String() != password(i) || r.Token.String() != token(i) {
					t.Fatalf("sqlcrypter row %d wrong", i)
				}
			}
		})
	}
}
