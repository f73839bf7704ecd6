package envelope

import (
	"log/slog"
	"reflect"
	"runtime"
	"strings"
	"sync"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// What the plugin relies on that GORM, database/sql or a driver does not
// promise. Each has a tripwire test in internals_test.go that fails if an
// upgrade changes it.

// gormStartedTx is the instance key GORM's begin_transaction callback sets
// on a statement for which it began a transaction.
const gormStartedTx = "gorm:started_transaction"

// startedTx reports whether a transaction was begun for this statement
// alone, by GORM or by the plugin.
func startedTx(db *gorm.DB) bool {
	if _, ok := db.InstanceGet(gormStartedTx); ok {
		return true
	}
	ss := stateOf(db)
	return ss != nil && ss.started
}

// convertingArgs reports whether the serializer's Value is being called by
// database/sql's conversion of a statement's arguments
// (driverArgsConnLocked), which reports a failed conversion by the
// argument's position only. Any other caller — a driver that takes
// driver.Valuer arguments itself, as pgx does — may print the argument,
// and with it GORM's serializer wrapper holding the plaintext.
func convertingArgs() bool {
	return onStack(32, func(fn string) (found, stop bool) {
		return fn == "database/sql.driverArgsConnLocked", strings.HasPrefix(fn, "github.com/jackc/pgx/")
	})
}

var refusalLogged sync.Map // error text -> struct{}

// logRefusal logs, once per message, a write refused on a *gorm.DB without
// the plugin: its error may only reach the app as a driver's error.
func logRefusal(err error) {
	msg := err.Error()
	if _, dup := refusalLogged.LoadOrStore(msg, struct{}{}); dup {
		return
	}
	slog.Default().Error("envelope: write refused", "err", msg)
}

// inAssociationReplace reports whether the statement runs inside GORM's
// Association.Replace, which first upserts the new rows (setting their
// foreign key) and then nulls the foreign key of the others: where that
// key is an owner, the second step is refused, and the first must be
// refused with it so that Replace changes nothing.
func inAssociationReplace() bool {
	return onStack(128, func(fn string) (found, stop bool) {
		return fn == "gorm.io/gorm.(*Association).Replace", false
	})
}

// onStack walks at most depth frames of its caller's callers, asking
// match of each function's name whether it is the one looked for, or one
// below which it cannot be.
func onStack(depth int, match func(fn string) (found, stop bool)) bool {
	pcs := make([]uintptr, depth)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(3, pcs)])
	for {
		f, more := frames.Next()
		found, stop := match(f.Function)
		if found || stop || !more {
			return found
		}
	}
}

// gormSerializer returns the struct and field of GORM's serializer wrapper
// (*schema.serializer, unexported), which FirstOrCreate(...).Assign(struct)
// passes as an assignment's value.
func gormSerializer(v any) (dest reflect.Value, f *schema.Field, ok bool) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return reflect.Value{}, nil, false
	}
	e := rv.Elem()
	if e.Kind() != reflect.Struct || e.Type().Name() != "serializer" || e.Type().PkgPath() != "gorm.io/gorm/schema" {
		return reflect.Value{}, nil, false
	}
	dest, _ = e.FieldByName("Destination").Interface().(reflect.Value)
	f, _ = e.FieldByName("Field").Interface().(*schema.Field)
	return dest, f, f != nil && dest.IsValid()
}

// structIndex reads one step of a schema.Field's StructField.Index: GORM
// marks a step through an embedded pointer as -i-1.
func structIndex(i int) (field int, viaPtr bool) {
	if i < 0 {
		return -i - 1, true
	}
	return i, false
}

// parseIndexesMu serializes the plugin's calls of Schema.ParseIndexes,
// which writes to the schema's fields (Field.UniqueIndex) each time it
// runs: two models parsed at once on one schema would race.
var parseIndexesMu sync.Mutex

// schemaIndexes returns s.ParseIndexes(), one call at a time.
func schemaIndexes(s *schema.Schema) []*schema.Index {
	parseIndexesMu.Lock()
	defer parseIndexesMu.Unlock()
	return s.ParseIndexes()
}
