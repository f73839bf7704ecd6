package envelope_test

import (
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// A large Find is decrypted partly while it is scanned (for owners whose
// DEK is cached). The values and the error are exactly those of a read
// without that pipeline: with bad tokens, a shredded owner, NULLs, every
// field type, []T and []*T, cold and warm and mixed caches.
func TestPipelinedFindMatchesSerial(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("the pipeline needs two cores")
	}
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		p := setup(t, db, keys)
		const n = 1500
		rows := make([]Credential, n)
		for i := range rows {
			rows[i] = Credential{UserID: uint(1 + i%41), Facility: fmt.Sprint(i), Password: fmt.Sprint("pw-", i), Blob: []byte(fmt.Sprint("b", i))}
			if i%3 == 0 {
				rows[i].APIKey = ptr(fmt.Sprint("k", i))
			}
		}
		must(t, db.CreateInBatches(&rows, 500).Error)
		raw := db.Session(&gorm.Session{NewDB: true})
		must(t, raw.Exec("UPDATE credentials SET password = ? WHERE id = ?", "not-a-token", rows[10].ID).Error)
		other, ok := rawColumn(t, db, "credentials", "password", rows[701].ID) // owner 4's token
		if !ok {
			t.Fatal("no token")
		}
		must(t, raw.Exec("UPDATE credentials SET password = ? WHERE id = ?", other, rows[700].ID).Error) // under owner 3
		must(t, envelope.Shred(db, uint(7)))

		want := func(i int) (string, string) {
			if rows[i].UserID == 7 || i == 10 || i == 700 {
				return "", ""
			}
			k := ""
			if rows[i].APIKey != nil && rows[i].UserID != 7 {
				k = *rows[i].APIKey
			}
			return rows[i].Password, k
		}
		read := func(pipeline bool) ([]Credential, error) {
			defer envelope.SetPipelineForTest(pipeline)()
			var out []Credential
			err := db.Order("id").Find(&out).Error
			return out, err
		}
		check := func(name string, got []Credential, err error, serial error) {
			t.Helper()
			if !errors.Is(err, envelope.ErrDecrypt) || !errors.Is(err, envelope.ErrShredded) || err.Error() != serial.Error() {
				t.Fatalf("%s: errors differ:\npipelined: %v\nserial:    %v", name, err, serial)
			}
			if len(got) != n {
				t.Fatalf("%s: %d rows", name, len(got))
			}
			for i := range got {
				pw, k := want(i)
				gk := ""
				if got[i].APIKey != nil {
					gk = *got[i].APIKey
				}
				if got[i].Password != pw || gk != k {
					t.Fatalf("%s: row %d: %q %q, want %q %q", name, i, got[i].Password, gk, pw, k)
				}
				if pw != "" && string(got[i].Blob) != fmt.Sprint("b", i) {
					t.Fatalf("%s: row %d blob %q", name, i, got[i].Blob)
				}
			}
		}

		_, serialErr := read(false)
		envelope.PurgeCacheForTest(p)
		before := envelope.PipelinedForTest(p)
		got, err := read(true)
		check("cold", got, err, serialErr)
		if d := envelope.PipelinedForTest(p) - before; d != 0 {
			t.Fatalf("cold read took %d values from the pipeline", d)
		}

		before = envelope.PipelinedForTest(p)
		got, err = read(true)
		check("warm", got, err, serialErr)
		// 40 owners of 41 are readable; most of their 3 or so values per
		// row are opened while scanning (the last partial batch is not).
		if d := envelope.PipelinedForTest(p) - before; d < 2000 {
			t.Fatalf("warm read took only %d values from the pipeline", d)
		}

		// Mixed: some owners cached, the rest looked up after the scan.
		envelope.PurgeCacheForTest(p)
		var some []Credential
		if err := db.Where("user_id <= ?", 20).Find(&some).Error; !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("owner 7 is shredded: %v", err)
		}
		before = envelope.PipelinedForTest(p)
		got, err = read(true)
		check("mixed", got, err, serialErr)
		if d := envelope.PipelinedForTest(p) - before; d == 0 {
			t.Fatal("mixed read took no values from the pipeline")
		}

		var ptrs []*Credential
		err = db.Order("id").Find(&ptrs).Error
		vals := make([]Credential, len(ptrs))
		for i, c := range ptrs {
			vals[i] = *c
		}
		check("[]*T", vals, err, serialErr)

		// A slice that already holds rows is scanned in place: no pipeline.
		before = envelope.PipelinedForTest(p)
		err = db.Order("id").Find(&got).Error
		check("refill", got, err, serialErr)
		if d := envelope.PipelinedForTest(p) - before; d != 0 {
			t.Fatalf("in-place scan took %d values from the pipeline", d)
		}
	})
}

// The pipeline leaves the statement's context as it found it, and no
// worker goroutine behind, also when the query fails.
func TestPipelineCleansUp(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("the pipeline needs two cores")
	}
	db := testdb.Open(t, testdb.SQLite)
	setup(t, db, newKeys(t))
	rows := make([]Credential, 1200)
	for i := range rows {
		rows[i] = Credential{UserID: uint(1 + i%5), Password: fmt.Sprint("pw-", i)}
	}
	must(t, db.CreateInBatches(&rows, 400).Error)
	var out []Credential
	must(t, db.Find(&out).Error) // warm
	base := runtime.NumGoroutine()
	for range 5 {
		var out []Credential
		res := db.Find(&out)
		must(t, res.Error)
		if envelope.PipelineInContext(res.Statement.Context) {
			t.Fatal("the pipeline stayed in the statement's context")
		}
		if out[1199].Password != "pw-1199" {
			t.Fatalf("last row: %q", out[1199].Password)
		}
	}
	var bad []Credential
	if err := db.Where("no_such_column = 1").Find(&bad).Error; err == nil {
		t.Fatal("query on a missing column succeeded")
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > base {
		t.Fatalf("%d goroutines after the reads, %d before", g, base)
	}
}

// Concurrent large reads on one handle each get their own pipeline and
// the right values (run with -race).
func TestPipelineConcurrentReads(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		rows := make([]Credential, 1100)
		for i := range rows {
			rows[i] = Credential{UserID: uint(1 + i%13), Facility: fmt.Sprint(i), Password: fmt.Sprint("pw-", i)}
		}
		must(t, db.CreateInBatches(&rows, 550).Error)
		var warm []Credential
		must(t, db.Find(&warm).Error)
		errs := make(chan error, 8)
		for g := range 8 {
			go func() {
				for range 3 {
					var out []*Credential
					if err := db.Order("id").Find(&out).Error; err != nil {
						errs <- err
						return
					}
					for i, c := range out {
						if c.Password != fmt.Sprint("pw-", i) {
							errs <- fmt.Errorf("goroutine %d row %d: %q", g, i, c.Password)
							return
						}
					}
				}
				errs <- nil
			}()
		}
		for range 8 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	})
}

// A partial Select reads the same with and without the pipeline: without
// the owner column every token is refused, with it every value opens.
func TestPipelinePartialSelect(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	setup(t, db, newKeys(t))
	rows := make([]Credential, 700)
	for i := range rows {
		rows[i] = Credential{UserID: uint(1 + i%3), Password: fmt.Sprint("pw-", i), APIKey: ptr("k")}
	}
	must(t, db.CreateInBatches(&rows, 350).Error)
	var warm []Credential
	must(t, db.Find(&warm).Error)
	read := func(pipeline bool, cols ...string) ([]Credential, error) {
		defer envelope.SetPipelineForTest(pipeline)()
		var out []Credential
		err := db.Select(cols).Order("id").Find(&out).Error
		return out, err
	}
	for _, cols := range [][]string{{"id", "password"}, {"id", "user_id", "password"}} {
		got, err := read(true, cols...)
		want, werr := read(false, cols...)
		if fmt.Sprint(err) != fmt.Sprint(werr) {
			t.Fatalf("%v: errors differ:\npipelined: %v\nserial:    %v", cols, err, werr)
		}
		for i := range want {
			if got[i].Password != want[i].Password || got[i].APIKey != nil {
				t.Fatalf("%v row %d: %q, want %q", cols, i, got[i].Password, want[i].Password)
			}
		}
		if len(cols) == 3 && (err != nil || got[699].Password != "pw-699") {
			t.Fatalf("%v: %v, last %q", cols, err, got[699].Password)
		}
		if len(cols) == 2 && !errors.Is(err, envelope.ErrNoOwner) {
			t.Fatalf("%v: %v, want ErrNoOwner", cols, err)
		}
	}
}

// When the owners' lookup fails after a pipelined scan, no row keeps a
// token or a value: the rows opened while scanning are emptied like the
// others, as in a read without the pipeline.
func TestPipelineLookupFailureLeavesNothing(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("the pipeline needs two cores")
	}
	db := testdb.Open(t, testdb.SQLite)
	p := setup(t, db, newKeys(t))
	rows := make([]Credential, 1500)
	for i := range rows {
		rows[i] = Credential{UserID: uint(1 + i%41), Password: fmt.Sprint("pw-", i), APIKey: ptr(fmt.Sprint("k", i)), Blob: []byte("b")}
	}
	must(t, db.CreateInBatches(&rows, 500).Error)
	boom := errors.New("profiles unreachable")
	fail := false
	failProfiles := func(tx *gorm.DB) {
		if fail && tx.Statement.Table == "profiles" {
			tx.AddError(boom)
		}
	}
	must(t, db.Callback().Query().Before("gorm:query").Register("test:fail_profiles", failProfiles))
	must(t, db.Callback().Row().Before("gorm:row").Register("test:fail_profiles_row", failProfiles))
	for _, pipeline := range []bool{false, true} {
		// Owners 1..20 cached, so the pipeline opens their rows while
		// scanning; the others need the lookup that fails.
		envelope.PurgeCacheForTest(p)
		var some []Credential
		must(t, db.Where("user_id <= ?", 20).Find(&some).Error)
		restore := envelope.SetPipelineForTest(pipeline)
		fail = true
		var out []Credential
		err := db.Order("id").Find(&out).Error
		fail = false
		restore()
		if !errors.Is(err, boom) {
			t.Fatalf("pipeline %v: error %v, want %v", pipeline, err, boom)
		}
		for i, c := range out {
			if c.Password != "" || c.APIKey != nil || c.Blob != nil {
				t.Fatalf("pipeline %v: row %d kept %q %v %q", pipeline, i, c.Password, c.APIKey, c.Blob)
			}
		}
	}
}
