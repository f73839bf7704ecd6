package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// The service end to end over HTTP, on every database: registration and a
// duplicate, login by email through the blind index, secrets kept apart per
// user and stored encrypted, and "delete my data".
func TestWebappEndToEnd(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		k, err := dek.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys, err := dek.ParseKeyring(k)
		if err != nil {
			t.Fatal(err)
		}
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		if err := db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Format: envelope.FormatBound, Logger: log, Models: Models})); err != nil {
			t.Fatal(err)
		}
		if err := db.AutoMigrate(Models...); err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(newServer(db, log))
		defer srv.Close()

		call := func(method, path, user, body string, wantStatus int, out any) {
			t.Helper()
			req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if user != "" {
				req.Header.Set("X-User", user)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != wantStatus {
				t.Fatalf("%s %s %s: %d %s, want %d", method, path, body, resp.StatusCode, b, wantStatus)
			}
			if out != nil {
				if err := json.Unmarshal(b, out); err != nil {
					t.Fatalf("%s %s: %q: %v", method, path, b, err)
				}
			}
		}
		var ada, grace userJSON
		call("POST", "/users", "", `{"email":"Ada@example.org","name":"Ada"}`, 201, &ada)
		call("POST", "/users", "", `{"email":"grace@example.org","name":"Grace"}`, 201, &grace)
		call("POST", "/users", "", `{"email":"  ada@EXAMPLE.ORG ","name":"again"}`, 409, nil)
		call("POST", "/users", "", `{"name":"no email"}`, 400, nil)

		var who userJSON
		call("POST", "/login", "", `{"email":"ADA@example.org"}`, 200, &who)
		if who.ID != ada.ID || who.Email != "Ada@example.org" || who.Name != "Ada" {
			t.Fatalf("login: %+v, want %+v", who, ada)
		}
		call("POST", "/login", "", `{"email":"nobody@example.org"}`, 404, nil)

		id := func(u userJSON) string { return itoa(u.ID) }
		call("POST", "/secrets", id(ada), `{"label":"lco","value":"hunter2"}`, 201, nil)
		call("POST", "/secrets", id(grace), `{"label":"soar","value":"correct horse"}`, 201, nil)
		call("GET", "/secrets", "", "", 401, nil)
		var mine []Secret
		call("GET", "/secrets", id(ada), "", 200, &mine)
		if len(mine) != 1 || mine[0].Value != "hunter2" || mine[0].Label != "lco" {
			t.Fatalf("ada's secrets: %+v", mine)
		}
		var me userJSON
		call("GET", "/me", id(grace), "", 200, &me)
		if me.Email != "grace@example.org" || me.Name != "Grace" {
			t.Fatalf("/me: %+v", me)
		}

		// Stored encrypted: no plaintext in the columns.
		for _, q := range []string{"SELECT email FROM users", "SELECT name FROM users", "SELECT value FROM secrets"} {
			rows, err := db.Raw(q).Rows()
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var v string
				if err := rows.Scan(&v); err != nil {
					t.Fatal(err)
				}
				for _, p := range []string{"example.org", "Ada", "Grace", "hunter2", "horse"} {
					if strings.Contains(v, p) {
						t.Fatalf("%s: stored %q holds plaintext", q, v)
					}
				}
			}
			rows.Close()
		}

		call("DELETE", "/me", id(ada), "", 204, nil)
		call("POST", "/login", "", `{"email":"ada@example.org"}`, 404, nil)
		call("GET", "/me", id(ada), "", 404, nil)
		mine = nil
		call("GET", "/secrets", id(ada), "", 200, &mine)
		if len(mine) != 0 {
			t.Fatalf("secrets after delete: %+v", mine)
		}
		var left int64
		if err := db.Table("profiles").Where("user_id = ?", ada.ID).Count(&left).Error; err != nil || left != 0 {
			t.Fatalf("profile rows left for the deleted user: %d, %v", left, err)
		}
		// The other user is untouched.
		call("POST", "/login", "", `{"email":"grace@example.org"}`, 200, &who)
		var theirs []Secret
		call("GET", "/secrets", id(grace), "", 200, &theirs)
		if who.ID != grace.ID || len(theirs) != 1 || theirs[0].Value != "correct horse" {
			t.Fatalf("grace after ada's deletion: %+v %+v", who, theirs)
		}
	})
}

func itoa(n uint) string { return strconv.FormatUint(uint64(n), 10) }
