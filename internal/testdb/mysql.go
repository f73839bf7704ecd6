package testdb

import (
	"maps"
	"testing"
	"time"

	mysqldrv "github.com/go-sql-driver/mysql"
)

var my = &server{
	dialect: MySQL,
	env:     "ENVELOPE_TEST_MYSQL_DSN",
	def:     "root@tcp(127.0.0.1:3306)/test?parseTime=true",
	prepare: func(dsn string) (string, error) {
		cfg, err := mysqldrv.ParseDSN(dsn)
		if err != nil {
			return "", err
		}
		// Fail fast when the server is down, unless the DSN sets its own timeout.
		if cfg.Timeout == 0 {
			cfg.Timeout = 3 * time.Second
		}
		return cfg.FormatDSN(), nil
	},
}

// newMySQL creates a database private to t and returns a DSN naming it. The database is
// dropped when t ends.
func newMySQL(t testing.TB) string {
	t.Helper()
	admin, base := my.connect(t)
	name := uniqueName()
	if err := admin.Exec("CREATE DATABASE " + name + " CHARACTER SET utf8mb4").Error; err != nil {
		t.Fatalf("testdb: mysql: create database: %v", err)
	}
	t.Cleanup(func() {
		if err := admin.Exec("DROP DATABASE IF EXISTS " + name).Error; err != nil {
			t.Errorf("testdb: mysql: drop database %s: %v", name, err)
		}
	})
	cfg, err := mysqldrv.ParseDSN(base)
	if err != nil {
		t.Fatalf("testdb: mysql: %v", err)
	}
	cfg.DBName = name
	cfg.MultiStatements = false
	cfg.Params = maps.Clone(cfg.Params)
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	cfg.Params["charset"] = "utf8mb4"
	return cfg.FormatDSN()
}
