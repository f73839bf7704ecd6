package testdb

import (
	"net/url"
	"regexp"
	"strings"
	"testing"
)

var pg = &server{
	dialect: Postgres,
	env:     "ENVELOPE_TEST_POSTGRES_DSN",
	def:     "host=127.0.0.1 user=postgres dbname=test sslmode=disable",
	prepare: func(dsn string) (string, error) {
		// Fail fast when the server is down, unless the DSN sets its own timeout.
		return pgParam(dsn, "connect_timeout", "3", false)
	},
}

// newPostgres creates a schema private to t and returns a DSN whose every connection
// has it as search_path. The schema is dropped, with its contents, when t ends.
func newPostgres(t testing.TB) string {
	t.Helper()
	admin, base := pg.connect(t)
	name := uniqueName()
	if err := admin.Exec("CREATE SCHEMA " + name).Error; err != nil {
		t.Fatalf("testdb: postgres: create schema: %v", err)
	}
	t.Cleanup(func() {
		if err := admin.Exec("DROP SCHEMA IF EXISTS " + name + " CASCADE").Error; err != nil {
			t.Errorf("testdb: postgres: drop schema %s: %v", name, err)
		}
	})
	dsn, err := pgParam(base, "search_path", name, true)
	if err != nil {
		t.Fatalf("testdb: postgres: %v", err)
	}
	return dsn
}

// pgParam sets a connection parameter in a PostgreSQL DSN, in URL or keyword/value form.
// Unless replace is set, a parameter the DSN already has is kept. val must need no quoting.
func pgParam(dsn, key, val string, replace bool) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", err
		}
		q := u.Query()
		if replace || !q.Has(key) {
			q.Set(key, val)
		}
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	if !replace && regexp.MustCompile(`(^|\s)`+regexp.QuoteMeta(key)+`\s*=`).MatchString(dsn) {
		return dsn, nil
	}
	// In keyword/value form a later setting overrides an earlier one.
	return strings.TrimSpace(dsn) + " " + key + "=" + val, nil
}
