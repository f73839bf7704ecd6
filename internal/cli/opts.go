package cli

import (
	"flag"
	"fmt"
	"strings"

	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	"gorm.io/gorm/schema"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/rotate"
)

// opts holds the global flags and those shared by several commands.
type opts struct {
	driver, dsn, kmsURL            string
	table, idCol, ownerCol, dekCol string
	batchSize                      int
	dryRun                         bool
	newKey, envFile                string
	resume                         bool
	bindDEKs                       bool
	rows, distinct                 uint64 // index-plan
	rx                             reindexFlags
	rs                             resealFlags
	rk                             rekeyFlags

	opened map[string]dek.Encrypter // KMS keys opened, by URL
}

// global registers the global flags on fs. Defaults are the values parsed so
// far, so flags given before the command survive their registration on the
// command's flag set.
func (o *opts) global(fs *flag.FlagSet, e *env) {
	if o.driver == "" {
		o.driver, _ = e.lookup("ENVELOPE_DRIVER")
	}
	if o.dsn == "" {
		o.dsn, _ = e.lookup("ENVELOPE_DSN")
	}
	if o.kmsURL == "" {
		o.kmsURL, _ = e.lookup("ENVELOPE_KMS_URL")
	}
	fs.StringVar(&o.driver, "driver", o.driver, "database `driver`: "+driverList+" (default $ENVELOPE_DRIVER)")
	// Help never prints these two values: a DSN may hold a password, and a
	// key URL (base64key://) key material.
	fs.Var(hidden{&o.dsn}, "dsn", "data source `name` for the driver: for sqlite, a database file that exists (default $ENVELOPE_DSN)")
	fs.Var(hidden{&o.kmsURL}, "kms-url", "master key held in a KMS, by `URL`: the primary key, with the configured keys as previous keys (default $ENVELOPE_KMS_URL)")
	fs.StringVar(&o.table, "table", orDefault(o.table, rotate.DefaultTable), "profile `table`")
	fs.StringVar(&o.idCol, "id-column", orDefault(o.idCol, rotate.DefaultIDColumn), "primary key `column` of the profile table")
	fs.StringVar(&o.ownerCol, "owner-column", orDefault(o.ownerCol, rotate.DefaultOwnerColumn), "owner `column`, named in reports (\"-\" for none)")
	fs.StringVar(&o.dekCol, "dek-column", orDefault(o.dekCol, rotate.DefaultDEKColumn), "encrypted DEK `column`")
}

// hidden is a string flag whose value help does not print.
type hidden struct{ p *string }

func (h hidden) String() string { return "" }

func (h hidden) Set(v string) error {
	*h.p = v
	return nil
}

func (o *opts) batchFlags(fs *flag.FlagSet) {
	fs.IntVar(&o.batchSize, "batch-size", rotate.DefaultBatchSize, "profiles per batch (one transaction each)")
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// driverList names the supported --driver values.
const driverList = "sqlite, postgres or mysql"

// checkDB checks the database flags: a driver this command knows, a DSN,
// and for SQLite a database file that exists. Commands that use the database call it before they read any key, so
// that a mistake in the flags is reported as such.
func (o *opts) checkDB() error {
	switch o.driver {
	case "sqlite", "postgres", "mysql", "":
	default:
		return usagef("unknown --driver %q: want %s", o.driver, driverList)
	}
	if o.dsn == "" {
		return usagef("no database: set --dsn (or ENVELOPE_DSN)")
	}
	if o.driver == "" {
		return usagef("no database driver: set --driver (or ENVELOPE_DRIVER) to %s", driverList)
	}
	if o.driver == "sqlite" {
		return checkSQLite(o.dsn)
	}
	return nil
}

// open connects to the database named by the global flags.
func (o *opts) open() (*gorm.DB, error) { return o.openWith(nil) }

// openWith is open with a naming strategy; nil is GORM's.
// openJob opens the database for a job over a model's table (reindex,
// reseal, rekey-all), with the profile table named by the flags.
func (o *opts) openJob() (*gorm.DB, error) {
	return o.openWith(profileNamer{
		Namer: schema.NamingStrategy{IdentifierMaxLength: 64}, // GORM's default
		table: o.table, id: o.idCol, owner: o.ownerCol, dek: o.dekCol,
	})
}

func (o *opts) openWith(namer schema.Namer) (*gorm.DB, error) {
	if err := o.checkDB(); err != nil {
		return nil, err
	}
	var d gorm.Dialector
	switch o.driver {
	case "sqlite":
		dsn := o.dsn
		if !strings.Contains(dsn, "_busy_timeout") {
			// Wait for the app's writers rather than failing with SQLITE_BUSY.
			if strings.Contains(dsn, "?") {
				dsn += "&_busy_timeout=10000"
			} else {
				dsn += "?_busy_timeout=10000"
			}
		}
		d = sqlite.Open(dsn)
	case "postgres":
		d = postgres.Open(o.dsn)
	default: // mysql: MySQL and MariaDB
		d = mysql.Open(o.dsn)
	}
	db, err := gorm.Open(d, &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true, NamingStrategy: namer})
	if err != nil {
		return nil, fmt.Errorf("connect to %s database: %w", o.driver, err)
	}
	sqlDB, err := db.DB()
	if err == nil {
		err = sqlDB.Ping()
	}
	if err != nil {
		return nil, fmt.Errorf("connect to %s database: %w", o.driver, err)
	}
	return db, nil
}

func closeDB(db *gorm.DB) {
	if sqlDB, err := db.DB(); err == nil {
		sqlDB.Close()
	}
}

// rotateOptions returns the rotate.Options for the table flags.
func (o *opts) rotateOptions(keys *dek.Keyring) rotate.Options {
	return rotate.Options{
		Keys:        keys,
		Table:       o.table,
		IDColumn:    o.idCol,
		DEKColumn:   o.dekCol,
		OwnerColumn: o.ownerCol,
		BatchSize:   o.batchSize,
		DryRun:      o.dryRun,
		BindDEKs:    o.bindDEKs,
	}
}
