// Command webapp is a small JSON service on gorm-envelope: users whose
// email and name are encrypted under their own DEK, login by email through
// a blind index, per-user secrets, and a "delete my data" endpoint that
// shreds the user's DEK.
//
//	go run ./examples/webapp                  # a scripted session against itself, then exit
//	go run ./examples/webapp -listen :8080    # serve until interrupted
//
// The database is an in-memory SQLite one unless -db names a file. With
// DEK_ENCRYPTION_KEY unset it uses a throwaway master key.
//
// Endpoints (JSON bodies; X-User carries the id that POST /login returns,
// a stand-in for real authentication):
//
//	POST   /users    {"email", "name"}   register
//	POST   /login    {"email"}           find the user by email
//	GET    /me                           the user, decrypted
//	POST   /secrets  {"label", "value"}  store a secret
//	GET    /secrets                      the user's secrets, decrypted
//	DELETE /me                           shred the user's DEK, delete their rows
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

func main() {
	listen := flag.String("listen", "", "serve on this address (e.g. :8080) instead of running the scripted session")
	file := flag.String("db", "", "SQLite database file (default: in memory)")
	flag.Parse()
	if err := run(*listen, *file); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(listen, file string) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	db, err := open(file, log)
	if err != nil {
		return err
	}
	h := newServer(db, log)
	if listen != "" {
		srv := &http.Server{Addr: listen, Handler: h, ReadHeaderTimeout: 5 * time.Second}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		go func() {
			<-ctx.Done()
			_ = srv.Shutdown(context.Background())
		}()
		fmt.Printf("listening on %s\n", listen)
		if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	return demo("http://"+ln.Addr().String(), db)
}

// open opens the database with the envelope plugin, writing bound values,
// and migrates the models.
func open(file string, log *slog.Logger) (*gorm.DB, error) {
	keys, err := masterKeys()
	if err != nil {
		return nil, err
	}
	dsn := "file::memory:?cache=shared"
	if file != "" {
		dsn = file
	}
	db, err := gorm.Open(sqlite.Open(dsn), &gorm.Config{Logger: logger.Default.LogMode(logger.Silent)})
	if err != nil {
		return nil, err
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	sqlDB.SetMaxOpenConns(1) // SQLite: one writer
	cfg := envelope.Config{Keys: keys, Profile: &Profile{}, Format: envelope.FormatBound, Logger: log, Models: Models}
	if err := db.Use(envelope.New(cfg)); err != nil {
		return nil, err
	}
	if err := db.AutoMigrate(Models...); err != nil {
		return nil, err
	}
	return db, nil
}

func masterKeys() (*dek.Keyring, error) {
	keys, err := dek.KeyringFromEnv()
	if !errors.Is(err, dek.ErrNoKey) {
		return keys, err
	}
	k, err := dek.GenerateKey()
	if err != nil {
		return nil, err
	}
	fmt.Printf("%s is not set: using a throwaway master key for this run.\n\n", dek.EnvKey)
	return dek.ParseKeyring(k)
}

// demo drives the service over HTTP and prints each exchange, with the
// stored columns beside what the API returns.
func demo(base string, db *gorm.DB) error {
	call := func(method, path, user, body string) (int, string, error) {
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		if err != nil {
			return 0, "", err
		}
		if user != "" {
			req.Header.Set("X-User", user)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		fmt.Printf("%-6s %-8s %-36s -> %d %s\n", method, path, body, resp.StatusCode, bytes.TrimSpace(b))
		return resp.StatusCode, string(b), err
	}
	steps := []struct{ method, path, user, body string }{
		{"POST", "/users", "", `{"email":"Ada@example.org","name":"Ada"}`},
		{"POST", "/users", "", `{"email":"grace@example.org","name":"Grace"}`},
		{"POST", "/users", "", `{"email":" ADA@example.org","name":"Ada again"}`},
		{"POST", "/login", "", `{"email":"ada@EXAMPLE.org"}`},
		{"POST", "/secrets", "1", `{"label":"lco","value":"hunter2"}`},
		{"POST", "/secrets", "2", `{"label":"soar","value":"correct horse"}`},
		{"GET", "/secrets", "1", ""},
		{"GET", "/me", "2", ""},
	}
	for _, s := range steps {
		if _, _, err := call(s.method, s.path, s.user, s.body); err != nil {
			return err
		}
	}
	var email, value string
	if err := db.Raw("SELECT email FROM users WHERE id = 1").Row().Scan(&email); err != nil {
		return err
	}
	if err := db.Raw("SELECT value FROM secrets WHERE user_id = 1").Row().Scan(&value); err != nil {
		return err
	}
	fmt.Printf("\nstored for user 1: email %s…, secret %s…\n\n", email[:24], value[:24])
	for _, s := range []struct{ method, path, user, body string }{
		{"DELETE", "/me", "1", ""},
		{"POST", "/login", "", `{"email":"ada@example.org"}`},
		{"GET", "/secrets", "1", ""},
		{"POST", "/login", "", `{"email":"grace@example.org"}`},
	} {
		if _, _, err := call(s.method, s.path, s.user, s.body); err != nil {
			return err
		}
	}
	return nil
}
