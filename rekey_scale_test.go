package envelope_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// ScaleRow is one owner's row of the scale test: 2 encrypted values, and
// the owner column indexed, as an app's would be (each owner's rows are
// looked up by it).
type ScaleRow struct {
	ID     uint
	UserID uint   `gorm:"index" envelope:"owner"`
	A      string `gorm:"serializer:envelope"`
	B      string `gorm:"serializer:envelope"`
}

// TestRekeyAllScale measures RekeyAll on PostgreSQL: ENVELOPE_REKEY_SCALE
// owners, each with one row holding 2 encrypted values. It is
// skipped unless ENVELOPE_REKEY_SCALE is set; it logs the rate and the peak
// heap (sampled every 50 ms) and the process's peak RSS.
//
//	ENVELOPE_REKEY_SCALE=100000 go test -run TestRekeyAllScale -timeout 60m -v .
func TestRekeyAllScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("ENVELOPE_REKEY_SCALE"))
	if n <= 0 {
		t.Skip("set ENVELOPE_REKEY_SCALE to the number of owners")
	}
	db := testdb.Open(t, testdb.Postgres)
	setup(t, db, newKeys(t))
	must(t, db.AutoMigrate(&ScaleRow{}))
	start := time.Now()
	const batch = 1000
	for lo := 0; lo < n; lo += batch {
		rows := make([]ScaleRow, 0, batch)
		for i := lo; i < min(lo+batch, n); i++ {
			rows = append(rows, ScaleRow{UserID: uint(i + 1), A: fmt.Sprint("password-", i), B: fmt.Sprint("api-key-", i)})
		}
		must(t, db.CreateInBatches(&rows, batch).Error)
	}
	t.Logf("set up %d owners with 2 values each in %v", n, time.Since(start).Round(time.Millisecond))

	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	start = time.Now()
	res, err := envelope.RekeyAll(context.Background(), db, []any{&ScaleRow{}}, envelope.RekeyOptions{Settle: -1})
	elapsed := time.Since(start)
	close(stop)
	<-done
	must(t, err)
	if res.Owners != n || res.Values != 2*n {
		t.Fatalf("rekeyed %d owners and %d values, want %d and %d", res.Owners, res.Values, n, 2*n)
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	t.Logf("RekeyAll: %d owners, %d values in %v: %.0f owners/s, %.0f values/s; peak heap %.1f MiB; peak RSS of the test process %.1f MiB",
		res.Owners, res.Values, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), float64(res.Values)/elapsed.Seconds(),
		float64(peak.Load())/(1<<20), float64(ru.Maxrss)/1024)
	var r ScaleRow
	must(t, db.First(&r, "user_id = ?", n).Error)
	if r.A != fmt.Sprint("password-", n-1) || r.B != fmt.Sprint("api-key-", n-1) {
		t.Fatalf("after the rekey: %q %q", r.A, r.B)
	}
}
