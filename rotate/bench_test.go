package rotate

import (
	"context"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// BenchmarkRotate rotates every DEK of a profile table, on PostgreSQL and
// on MySQL/MariaDB, back and forth between two master keys: with Run
// ("bulk": the dialect's fastest writer), with Run forced to its per-row
// writer ("run-per-row": one prepared compare-and-swap UPDATE per row in
// each batch's transaction), and with the loop an app would write by hand
// ("per-row": load every profile, decrypt, encrypt, one GORM Update each).
// 100,000 profiles; 5,000 under -short.
//
//	go test -run '^$' -bench 'BenchmarkRotate/(postgres|mysql)/bulk' -benchmem -benchtime 3x ./rotate/
func BenchmarkRotate(b *testing.B) {
	for _, d := range []testdb.Dialect{testdb.Postgres, testdb.MySQL} {
		b.Run(string(d), func(b *testing.B) { benchRotate(b, d) })
	}
}

func benchRotate(b *testing.B, d testdb.Dialect) {
	n := 100_000
	if testing.Short() {
		n = 5_000
	}
	ctx := context.Background()
	db := testdb.Open(b, d)
	keys := [2]string{newKey(b), newKey(b)}
	seedProfiles(b, db, keyring(b, keys[0]), n)
	cur := 0 // index of the key every DEK is under

	next := func() *dek.Keyring {
		r := keyring(b, keys[1-cur], keys[cur])
		cur = 1 - cur
		return r
	}
	run := func(perRow bool) func(b *testing.B) {
		return func(b *testing.B) {
			b.ReportAllocs()
			peak := watchHeap()
			for range b.N {
				res, err := Run(ctx, db, Options{Keys: next(), Profile: &Profile{}, perRow: perRow})
				if err != nil || res.Rotated != n {
					b.Fatalf("%+v, %v", res, err)
				}
			}
			report(b, n, peak())
		}
	}
	b.Run("bulk", run(false))
	b.Run("run-per-row", run(true))
	b.Run("per-row", func(b *testing.B) {
		b.ReportAllocs()
		peak := watchHeap()
		for range b.N {
			keys := next()
			var ps []Profile
			if err := db.Find(&ps).Error; err != nil {
				b.Fatal(err)
			}
			for _, p := range ps {
				d, _, err := keys.Open(ctx, p.EncryptedDEK)
				if err != nil {
					b.Fatal(err)
				}
				sealed, err := keys.Seal(ctx, d)
				if err != nil {
					b.Fatal(err)
				}
				if err := db.Model(&Profile{}).Where("id = ?", p.ID).Update("encrypted_dek", sealed).Error; err != nil {
					b.Fatal(err)
				}
			}
		}
		report(b, n, peak())
	})
}

func report(b *testing.B, n int, peak uint64) {
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "DEKs/s")
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
}

// watchHeap samples the live heap until the returned function is called,
// which returns the peak seen.
func watchHeap() func() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var (
		mu   sync.Mutex
		peak uint64
		stop = make(chan struct{})
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			mu.Lock()
			peak = max(peak, s[0].Value.Uint64())
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 {
		close(stop)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}

// seedProfiles inserts n profiles with DEKs sealed by keys.
func seedProfiles(b *testing.B, db *gorm.DB, keys *dek.Keyring, n int) {
	b.Helper()
	if err := db.AutoMigrate(&Profile{}); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	batch := make([]Profile, 0, 1000)
	for i := 1; i <= n; i++ {
		d, err := dek.NewDEK()
		if err != nil {
			b.Fatal(err)
		}
		sealed, err := keys.Seal(ctx, d)
		if err != nil {
			b.Fatal(err)
		}
		batch = append(batch, Profile{UserID: uint(i), EncryptedDEK: sealed})
		if len(batch) == cap(batch) || i == n {
			if err := db.Create(&batch).Error; err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}
