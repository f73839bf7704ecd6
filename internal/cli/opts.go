package cli

import (
	"errors"
	"flag"
	"fmt"
	"strings"

	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/rotate"
)

// opts holds the global flags and those shared by several commands.
type opts struct {
	driver, dsn                    string
	table, idCol, ownerCol, dekCol string
	batchSize                      int
	dryRun                         bool
	newKey, envFile                string
	resume                         bool
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
	fs.StringVar(&o.driver, "driver", o.driver, "database `driver`: "+driverList+" (default $ENVELOPE_DRIVER)")
	fs.StringVar(&o.dsn, "dsn", o.dsn, "data source `name` for the driver (default $ENVELOPE_DSN)")
	fs.StringVar(&o.table, "table", orDefault(o.table, rotate.DefaultTable), "profile `table`")
	fs.StringVar(&o.idCol, "id-column", orDefault(o.idCol, rotate.DefaultIDColumn), "primary key `column` of the profile table")
	fs.StringVar(&o.ownerCol, "owner-column", orDefault(o.ownerCol, rotate.DefaultOwnerColumn), "owner `column`, named in reports (\"-\" for none)")
	fs.StringVar(&o.dekCol, "dek-column", orDefault(o.dekCol, rotate.DefaultDEKColumn), "encrypted DEK `column`")
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

// open connects to the database named by the global flags.
func (o *opts) open() (*gorm.DB, error) {
	if o.dsn == "" {
		return nil, usagef("no database: set --dsn (or ENVELOPE_DSN)")
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
	case "mysql": // MySQL and MariaDB
		d = mysql.Open(o.dsn)
	case "":
		return nil, usagef("no database driver: set --driver (or ENVELOPE_DRIVER) to %s", driverList)
	default:
		return nil, usagef("unknown --driver %q: want %s", o.driver, driverList)
	}
	db, err := gorm.Open(d, &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
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
	}
}

// keyset is master keys as text, primary first, with where they came from.
type keyset struct {
	source   string // "the environment" or the env file's path
	primary  string
	previous []string
}

// keysFrom reads DEK_ENCRYPTION_KEY and DEK_ENCRYPTION_KEY_PREVIOUS through
// lookup.
func keysFrom(source string, lookup func(string) (string, bool)) keyset {
	k := keyset{source: source}
	k.primary, _ = lookup(dek.EnvKey)
	k.primary = strings.TrimSpace(k.primary)
	prev, _ := lookup(dek.EnvKeyPrevious)
	for _, s := range strings.Split(prev, ",") {
		if s = strings.TrimSpace(s); s != "" {
			k.previous = append(k.previous, s)
		}
	}
	return k
}

// all returns the keys, primary first.
func (k keyset) all() []string { return append([]string{k.primary}, k.previous...) }

// ring parses the keys. An invalid key is named by variable (and entry),
// never printed.
func (k keyset) ring() (*dek.Keyring, error) {
	if k.primary == "" {
		if k.source == "the environment" {
			return nil, dek.ErrNoKey
		}
		return nil, fmt.Errorf("no %s in %s: %w", dek.EnvKey, k.source, dek.ErrNoKey)
	}
	where := ""
	if k.source != "the environment" {
		where = k.source + ": "
	}
	if err := checkKey(where+dek.EnvKey, k.primary); err != nil {
		return nil, err
	}
	for i, p := range k.previous {
		if err := checkKey(fmt.Sprintf("%s%s (entry %d)", where, dek.EnvKeyPrevious, i+1), p); err != nil {
			return nil, err
		}
	}
	return dek.ParseKeyring(k.primary, k.previous...)
}

func checkKey(source, text string) error {
	_, err := dek.ParseKey(text)
	var ke *dek.KeyError
	if errors.As(err, &ke) {
		return &dek.KeyError{Source: source, Reason: ke.Reason}
	}
	return err
}
