package main

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/gorm-envelope/envelope"
	"gorm.io/gorm"
)

// Profile holds one row per user: that user's DEK, encrypted under the
// master key.
type Profile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

// User encrypts its own email and name (its id is its owner) and is found
// by email through a blind index.
type User struct {
	ID       uint    `envelope:"owner"`
	Email    string  `gorm:"serializer:envelope"`
	EmailIdx *string `gorm:"size:80;uniqueIndex" envelope:"index:Email;scope:global;transform:trim,lower"`
	Name     string  `gorm:"serializer:envelope"`
}

// Secret is one of a user's secrets, encrypted under that user's DEK.
type Secret struct {
	ID     uint   `json:"id"`
	UserID uint   `gorm:"index" envelope:"owner" json:"-"`
	Label  string `json:"label"`
	Value  string `gorm:"serializer:envelope" json:"value"`
}

// Models are the tables the service migrates.
var Models = []any{&Profile{}, &User{}, &Secret{}}

// server is the JSON API. Requests name their user in the X-User header,
// as returned by POST /login: a stand-in for real authentication, which
// this example leaves out.
type server struct {
	db  *gorm.DB
	log *slog.Logger
}

// newServer returns the service's handler on db, which must have the
// envelope plugin and the models migrated.
func newServer(db *gorm.DB, log *slog.Logger) http.Handler {
	s := &server{db: db, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /users", s.register)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("GET /me", s.me)
	mux.HandleFunc("DELETE /me", s.forget)
	mux.HandleFunc("POST /secrets", s.addSecret)
	mux.HandleFunc("GET /secrets", s.listSecrets)
	return mux
}

type credentials struct {
	Email string `json:"email"`
	Name  string `json:"name,omitempty"`
}

type userJSON struct {
	ID    uint   `json:"id"`
	Email string `json:"email"`
	Name  string `json:"name"`
}

// register creates a user; an email already registered (compared after
// trimming and lower-casing, through the unique blind index) is 409.
func (s *server) register(w http.ResponseWriter, r *http.Request) {
	var in credentials
	if !decode(w, r, &in) {
		return
	}
	if in.Email == "" {
		httpError(w, http.StatusBadRequest, "email is required")
		return
	}
	u := User{Email: in.Email, Name: in.Name}
	err := s.db.WithContext(r.Context()).Create(&u).Error
	if errors.Is(err, envelope.ErrDuplicate) {
		httpError(w, http.StatusConflict, "email already registered")
		return
	}
	if s.failed(w, err) {
		return
	}
	reply(w, http.StatusCreated, userJSON{ID: u.ID, Email: u.Email, Name: u.Name})
}

// login finds the user by email through the blind index: the database
// compares keyed hashes, never the address.
func (s *server) login(w http.ResponseWriter, r *http.Request) {
	var in credentials
	if !decode(w, r, &in) {
		return
	}
	s.replyUser(w, s.db.WithContext(r.Context()).Where(envelope.Match("Email", in.Email)))
}

func (s *server) me(w http.ResponseWriter, r *http.Request) {
	id, ok := userOf(w, r)
	if !ok {
		return
	}
	s.replyUser(w, s.db.WithContext(r.Context()).Where("id = ?", id))
}

// replyUser answers with the one user q finds, or 404.
func (s *server) replyUser(w http.ResponseWriter, q *gorm.DB) {
	var u User
	err := q.Take(&u).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		httpError(w, http.StatusNotFound, "no such user")
		return
	}
	if s.failed(w, err) {
		return
	}
	reply(w, http.StatusOK, userJSON{ID: u.ID, Email: u.Email, Name: u.Name})
}

func (s *server) addSecret(w http.ResponseWriter, r *http.Request) {
	id, ok := userOf(w, r)
	if !ok {
		return
	}
	var sec Secret
	if !decode(w, r, &sec) {
		return
	}
	sec.ID, sec.UserID = 0, id
	if s.failed(w, s.db.WithContext(r.Context()).Create(&sec).Error) {
		return
	}
	reply(w, http.StatusCreated, sec)
}

func (s *server) listSecrets(w http.ResponseWriter, r *http.Request) {
	id, ok := userOf(w, r)
	if !ok {
		return
	}
	secrets := []Secret{}
	if s.failed(w, s.db.WithContext(r.Context()).Where("user_id = ?", id).Order("id").Find(&secrets).Error) {
		return
	}
	reply(w, http.StatusOK, secrets)
}

// forget is "delete my data": it shreds the user's DEK first, so that
// every value of theirs is unreadable at once, in this database and in
// every backup taken from now on, then deletes their rows.
func (s *server) forget(w http.ResponseWriter, r *http.Request) {
	id, ok := userOf(w, r)
	if !ok {
		return
	}
	db := s.db.WithContext(r.Context())
	if s.failed(w, envelope.Shred(db, id)) {
		return
	}
	err := db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Where("user_id = ?", id).Delete(&Secret{}).Error; err != nil {
			return err
		}
		if err := tx.Delete(&User{}, id).Error; err != nil {
			return err
		}
		return tx.Where("user_id = ?", id).Delete(&Profile{}).Error
	})
	if s.failed(w, err) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// failed answers 500 for err, logging it (the plugin's errors name model,
// field and owner, never a value or a key), and reports whether it did.
func (s *server) failed(w http.ResponseWriter, err error) bool {
	if err == nil {
		return false
	}
	s.log.Error("request failed", "err", err)
	httpError(w, http.StatusInternalServerError, "internal error")
	return true
}

func userOf(w http.ResponseWriter, r *http.Request) (uint, bool) {
	id, err := strconv.ParseUint(r.Header.Get("X-User"), 10, 64)
	if err != nil || id == 0 {
		httpError(w, http.StatusUnauthorized, "X-User header with the user's id required")
		return 0, false
	}
	return uint(id), true
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		httpError(w, http.StatusBadRequest, "bad JSON body")
		return false
	}
	return true
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, status int, msg string) {
	reply(w, status, map[string]string{"error": msg})
}
