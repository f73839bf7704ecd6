package otelmetric_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/otelmetric"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

type Profile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

type Credential struct {
	ID       uint
	UserID   uint `envelope:"owner"`
	Facility string
	Password string  `gorm:"serializer:envelope"`
	APIKey   *string `gorm:"serializer:envelope"`
}

// open returns an in-memory SQLite database with the plugin on it,
// observed through a MeterProvider with a manual reader.
func open(t *testing.T, name string, keys *dek.Keyring) (*gorm.DB, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	obs, err := otelmetric.New(mp)
	if err != nil {
		t.Fatal(err)
	}
	db, err := gorm.Open(sqlite.Open("file:"+name+"?mode=memory&cache=shared"), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	sqlDB.SetMaxOpenConns(1)
	t.Cleanup(func() { sqlDB.Close() })
	if err := db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Observer: obs})); err != nil {
		t.Fatal(err)
	}
	if err := db.AutoMigrate(&Profile{}, &Credential{}); err != nil {
		t.Fatal(err)
	}
	return db, reader
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// point is one data point: its instrument, attributes and value (the
// count, for a histogram).
type point struct {
	name, attrs string
	value       int64
}

// collect reads every data point, checking each instrument's unit, that
// the sums are monotonic, and that no attribute value holds a secret.
func collect(t *testing.T, reader *sdkmetric.ManualReader, secrets ...string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	must(t, reader.Collect(context.Background(), &rm))
	units := map[string]string{
		"envelope.values.encrypted":    "{value}",
		"envelope.values.decrypted":    "{value}",
		"envelope.value.errors":        "{error}",
		"envelope.dek.cache.events":    "{event}",
		"envelope.master_key.duration": "s",
	}
	out := map[string]int64{}
	add := func(name string, set attribute.Set, v int64) {
		var parts []string
		for _, kv := range set.ToSlice() {
			val := kv.Value.Emit()
			for _, s := range secrets {
				if strings.Contains(val, s) {
					t.Errorf("%s: attribute %s=%q holds %q", name, kv.Key, val, s)
				}
			}
			parts = append(parts, string(kv.Key)+"="+val)
		}
		out[name+"{"+strings.Join(parts, ",")+"}"] += v
	}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != otelmetric.ScopeName {
			t.Errorf("scope %q, want %q", sm.Scope.Name, otelmetric.ScopeName)
		}
		for _, m := range sm.Metrics {
			if want, ok := units[m.Name]; !ok || m.Unit != want {
				t.Errorf("instrument %s: unit %q, want %q", m.Name, m.Unit, want)
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				if !d.IsMonotonic {
					t.Errorf("%s is not monotonic", m.Name)
				}
				for _, dp := range d.DataPoints {
					add(m.Name, dp.Attributes, dp.Value)
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					if dp.Sum < 0 {
						t.Errorf("%s: negative sum", m.Name)
					}
					add(m.Name, dp.Attributes, int64(dp.Count))
				}
			default:
				t.Errorf("%s: unexpected data %T", m.Name, m.Data)
			}
		}
	}
	return out
}

func expect(t *testing.T, got map[string]int64, want map[string]int64) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected %s = %d", k, got[k])
		}
	}
}

func TestMetrics(t *testing.T) {
	keys, err := dek.ParseKeyring(mustKey(t))
	must(t, err)
	db, reader := open(t, "metrics", keys)

	// Owner 4242's first write: a miss, a new DEK, one encrypt call.
	apiKey := "secret-api-key"
	rows := []Credential{
		{UserID: 4242, Password: "secret-password-1", APIKey: &apiKey},
		{UserID: 4242, Password: "secret-password-2"},
	}
	must(t, db.Create(&rows).Error)
	var got []Credential
	must(t, db.Find(&got).Error) // warm: a hit

	// A tampered value: ErrDecrypt.
	var stored string
	must(t, db.Table("credentials").Select("password").Where("id = ?", rows[1].ID).Row().Scan(&stored))
	b := []byte(stored)
	b[len(b)/2] ^= 1
	must(t, db.Exec("UPDATE credentials SET password = ? WHERE id = ?", string(b), rows[1].ID).Error)
	if err := db.First(&Credential{}, rows[1].ID).Error; !errors.Is(err, envelope.ErrDecrypt) {
		t.Fatalf("tampered read: %v, want ErrDecrypt", err)
	}
	// A shredded owner: ErrShredded.
	must(t, envelope.Shred(db, uint(4242)))
	if err := db.First(&Credential{}, rows[0].ID).Error; !errors.Is(err, envelope.ErrShredded) {
		t.Fatalf("read after shred: %v, want ErrShredded", err)
	}

	// Attributes are listed in key order, as the SDK sorts them.
	const (
		dec  = "envelope.values.decrypted{envelope.field="
		enc  = "envelope.values.encrypted{envelope.field="
		errs = "envelope.value.errors{envelope.field="
		cred = ",envelope.model=Credential"
	)
	expect(t, collect(t, reader, "secret", "4242"), map[string]int64{
		enc + "Password" + cred + "}":                      2,
		enc + "APIKey" + cred + "}":                        1,
		dec + "Password" + cred + "}":                      2,
		dec + "APIKey" + cred + "}":                        1,
		errs + "Password" + cred + ",error.type=decrypt}":  1,
		errs + "Password" + cred + ",error.type=shredded}": 1,
		errs + "APIKey" + cred + ",error.type=shredded}":   1,
		// The first write; the warm and the tampered read, whose failed
		// value reloads the owner's DEK once (a miss and a load, opened from
		// the store's cache of opened DEKs: no master-key call); the read
		// after Shred, which loads the tombstone.
		"envelope.dek.cache.events{envelope.dek.cache.event=create}":          1,
		"envelope.dek.cache.events{envelope.dek.cache.event=hit}":             2,
		"envelope.dek.cache.events{envelope.dek.cache.event=miss}":            3,
		"envelope.dek.cache.events{envelope.dek.cache.event=load}":            2,
		"envelope.master_key.duration{envelope.master_key.operation=encrypt}": 1,
	})
}

// TestMetricsKeyErrors: a process whose master key opens none of the
// stored DEKs records failed decrypt calls, and reads without a key are
// counted as no_key errors.
func TestMetricsKeyErrors(t *testing.T) {
	keys, err := dek.ParseKeyring(mustKey(t))
	must(t, err)
	db, _ := open(t, "keyerrors", keys)
	must(t, db.Create(&Credential{UserID: 7, Password: "secret-7"}).Error)

	// The same database, another process: a new master key, then none.
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	obs, err := otelmetric.New(mp)
	must(t, err)
	other, err := gorm.Open(sqlite.Open("file:keyerrors?mode=memory&cache=shared"), &gorm.Config{Logger: logger.Discard})
	must(t, err)
	wrong, err := dek.ParseKeyring(mustKey(t))
	must(t, err)
	if err := other.Use(envelope.New(envelope.Config{Keys: wrong, Profile: &Profile{}, Observer: obs})); !errors.Is(err, envelope.ErrDecrypt) {
		t.Fatalf("db.Use with the wrong key: %v, want ErrDecrypt", err)
	}
	nokey, err := gorm.Open(sqlite.Open("file:keyerrors?mode=memory&cache=shared"), &gorm.Config{Logger: logger.Discard})
	must(t, err)
	must(t, nokey.Use(envelope.New(envelope.Config{Profile: &Profile{}, Observer: obs})))
	if err := nokey.Find(&[]Credential{}).Error; !errors.Is(err, envelope.ErrNoKey) {
		t.Fatalf("read without a key: %v, want ErrNoKey", err)
	}
	expect(t, collect(t, reader, "secret"), map[string]int64{
		"envelope.master_key.duration{envelope.master_key.operation=decrypt,error.type=decrypt}":     1,
		"envelope.value.errors{envelope.field=Password,envelope.model=Credential,error.type=no_key}": 1,
	})
}

// TestNewNil: New refuses a nil MeterProvider.
func TestNewNil(t *testing.T) {
	if _, err := otelmetric.New(nil); err == nil {
		t.Fatal("New(nil): no error")
	}
}

func mustKey(t *testing.T) string {
	t.Helper()
	k, err := dek.GenerateKey()
	must(t, err)
	return k
}

// Example shows the observer given to the plugin and one metric read
// through the SDK.
func Example() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	obs, err := otelmetric.New(mp) // in an app: otel.GetMeterProvider()
	if err != nil {
		panic(err)
	}
	key, _ := dek.GenerateKey()
	keys, _ := dek.ParseKeyring(key)
	db, _ := gorm.Open(sqlite.Open("file:example?mode=memory&cache=shared"), &gorm.Config{Logger: logger.Discard})
	if err := db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Observer: obs})); err != nil {
		panic(err)
	}
	_ = db.AutoMigrate(&Profile{}, &Credential{})
	_ = db.Create(&Credential{UserID: 1, Password: "hunter2"}).Error

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(context.Background(), &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name == "envelope.values.encrypted" {
			dp := m.Data.(metricdata.Sum[int64]).DataPoints[0]
			model, _ := dp.Attributes.Value(otelmetric.ModelKey)
			field, _ := dp.Attributes.Value(otelmetric.FieldKey)
			fmt.Println(m.Name, model.AsString(), field.AsString(), dp.Value)
		}
	}
	// Output: envelope.values.encrypted Credential Password 1
}
