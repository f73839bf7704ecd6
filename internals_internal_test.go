package envelope

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope/internal/keystore"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// Tripwires: each test fails if GORM, database/sql or a driver changes
// something internals.go relies on.

// probe is a driver.Valuer that records whether convertingArgs sees
// database/sql's argument conversion above it.
type probe struct {
	mu   *sync.Mutex
	seen *[]bool
}

func (p probe) Value() (driver.Value, error) {
	p.mu.Lock()
	*p.seen = append(*p.seen, convertingArgs())
	p.mu.Unlock()
	return "x", nil
}

func TestTripwireConvertingArgs(t *testing.T) {
	want := map[testdb.Dialect]bool{testdb.SQLite: true, testdb.MySQL: true, testdb.Postgres: false}
	for _, d := range testdb.Default {
		t.Run(string(d), func(t *testing.T) {
			db := testdb.Open(t, d)
			sqlDB, err := db.DB()
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var seen []bool
			var out string
			if err := sqlDB.QueryRow("SELECT ?", probe{&mu, &seen}).Scan(&out); d != testdb.Postgres && err != nil {
				t.Fatal(err)
			}
			if d == testdb.Postgres {
				if err := sqlDB.QueryRow("SELECT $1::text", probe{&mu, &seen}).Scan(&out); err != nil {
					t.Fatal(err)
				}
			}
			if len(seen) == 0 {
				t.Fatal("Value was not called")
			}
			for _, s := range seen {
				if s != want[d] {
					t.Fatalf("convertingArgs() = %v under %s, want %v: database/sql's or the driver's call path changed; see internals.go", s, d, want[d])
				}
			}
		})
	}
}

// GORM's begin_transaction callback marks the statement it began a
// transaction for.
func TestTripwireStartedTransaction(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	type row struct{ ID uint }
	if err := db.AutoMigrate(&row{}); err != nil {
		t.Fatal(err)
	}
	var seen bool
	err := db.Callback().Create().After("gorm:begin_transaction").Before("gorm:create").Register("tripwire", func(db *gorm.DB) {
		seen = startedTx(db)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Create(&row{}).Error; err != nil {
		t.Fatal(err)
	}
	if !seen {
		t.Fatalf("GORM no longer sets %q on the statements it begins a transaction for", gormStartedTx)
	}
}

// GORM's Association.Replace is found on the stack of the statements it
// runs.
func TestTripwireAssociationReplace(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	type child struct {
		ID       uint
		ParentID uint
	}
	type parent struct {
		ID       uint
		Children []child `gorm:"foreignKey:ParentID"`
	}
	if err := db.AutoMigrate(&parent{}, &child{}); err != nil {
		t.Fatal(err)
	}
	p := &parent{}
	if err := db.Create(p).Error; err != nil {
		t.Fatal(err)
	}
	var seen bool
	err := db.Callback().Create().Before("gorm:create").Register("tripwire", func(db *gorm.DB) {
		if db.Statement.Table == "children" {
			seen = inAssociationReplace()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Model(p).Association("Children").Replace(&child{}); err != nil {
		t.Fatal(err)
	}
	if !seen {
		t.Fatal("gorm.io/gorm.(*Association).Replace is no longer on the stack of its statements: see internals.go")
	}
}

// GORM's serializer wrapper still has the fields gormSerializer reads.
func TestTripwireSerializerWrapper(t *testing.T) {
	type m struct {
		ID     uint
		Secret string `gorm:"serializer:envelope"`
	}
	schema.RegisterSerializer(SerializerName, Serializer{})
	s, err := schema.Parse(&m{}, &sync.Map{}, schema.NamingStrategy{})
	if err != nil {
		t.Fatal(err)
	}
	f := s.LookUpField("Secret")
	v := reflect.ValueOf(&m{Secret: "x"}).Elem()
	wrapped, _ := f.ValueOf(context.Background(), v)
	dest, got, ok := gormSerializer(wrapped)
	if !ok || got != f || dest.Type() != v.Type() {
		t.Fatalf("GORM's serializer wrapper changed (%T): see internals.go", wrapped)
	}
}

// The drivers' deadlock and serialization errors still carry the codes
// keystore.ConflictErr reads.
func TestTripwireConflictCodes(t *testing.T) {
	for _, d := range []testdb.Dialect{testdb.Postgres, testdb.MySQL} {
		t.Run(string(d), func(t *testing.T) {
			db := testdb.Open(t, d)
			type cell struct {
				ID int
				N  int
			}
			if err := db.AutoMigrate(&cell{}); err != nil {
				t.Fatal(err)
			}
			if err := db.Create(&[]cell{{ID: 1}, {ID: 2}}).Error; err != nil {
				t.Fatal(err)
			}
			// Two transactions lock the rows in opposite orders.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			a := db.WithContext(ctx).Begin()
			b := db.WithContext(ctx).Begin()
			defer a.Rollback()
			defer b.Rollback()
			lock := func(tx *gorm.DB, id int) error {
				return tx.Exec("UPDATE cells SET n = n + 1 WHERE id = ?", id).Error
			}
			if err := lock(a, 1); err != nil {
				t.Fatal(err)
			}
			if err := lock(b, 2); err != nil {
				t.Fatal(err)
			}
			errs := make(chan error, 2)
			go func() { errs <- lock(a, 2) }()
			go func() { errs <- lock(b, 1) }()
			var deadlock error
			for range 2 {
				if err := <-errs; err != nil {
					deadlock = err
					a.Rollback()
					b.Rollback()
				}
			}
			if deadlock == nil {
				t.Fatal("no deadlock")
			}
			if !errors.Is(keystore.ConflictErr(deadlock), ErrConflict) {
				t.Fatalf("conflictErr does not recognise %q: see internal/keystore/sql.go", deadlock)
			}
			if keystore.ConflictErr(sql.ErrNoRows) != sql.ErrNoRows {
				t.Fatal("conflictErr wrapped an unrelated error")
			}
		})
	}
}

// GORM marks a step through an embedded pointer with a negative index.
func TestTripwireEmbeddedPointerIndex(t *testing.T) {
	type Inner struct{ Secret string }
	type outer struct {
		ID uint
		*Inner
	}
	s, err := schema.Parse(&outer{}, &sync.Map{}, schema.NamingStrategy{})
	if err != nil {
		t.Fatal(err)
	}
	idx := s.LookUpField("Secret").StructField.Index
	if len(idx) != 2 {
		t.Fatalf("index %v", idx)
	}
	if f, viaPtr := structIndex(idx[0]); !viaPtr || f != 1 {
		t.Fatalf("GORM no longer marks the embedded pointer in %v: see internals.go", idx)
	}
}
