// Package keystore maps owners to their DEKs: it looks them up in the
// profile table, creates the missing ones exactly once, opens them with
// the master keys, and remembers them.
//
// Three layers remember DEKs, each under its own name:
//
//   - the owner cache: owner -> Key, shared by every statement, filled
//     only with DEKs that are durable (read or created outside a
//     transaction, or in one that has committed);
//   - the opened cache: owner and stored DEK bytes -> Key, so the same
//     ciphertext is decrypted with the master key once (safe in any
//     transaction: the same bytes in the same owner's row always open to
//     the same DEK). The owner is part of the name because a bound DEK
//     opens only in its own owner's row: the bytes copied into another
//     row must be opened (and refused) there, never served from the cache;
//   - the transaction keys: per transaction the caller runs, the DEKs its
//     statements loaded, served to its later statements (see txKeys).
//
// What a transaction the statement itself began loads is returned as
// pending, for the caller to Commit once that transaction has committed.
package keystore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/cache"
	"github.com/gorm-envelope/envelope/internal/profilemeta"
	"golang.org/x/sync/singleflight"
	"gorm.io/gorm"
)

// Mode is the kind of transaction a statement runs in.
type Mode uint8

const (
	// None is autocommit: whatever is read or created is durable.
	None Mode = iota
	// Own is a transaction begun for the statement: its keys are pending
	// until it commits.
	Own
	// Foreign is the caller's transaction: its keys are never shared, it
	// may roll back.
	Foreign
)

// Store is the key store of one plugin. Safe for concurrent use.
type Store struct {
	prof *profilemeta.Profile
	keys *dek.Keyring // nil: no master key

	owners  *cache.Cache[any, *Key]    // the owner cache
	opened  *cache.Cache[string, *Key] // the opened cache, by openedName
	opening singleflight.Group         // concurrent opens of one stored DEK, by openedName
	tx      *txKeys                    // the transaction keys

	// bind seals new DEKs bound to their profile row (dek.SealBound);
	// stored DEKs open in either layout whatever it is.
	bind bool

	log       *slog.Logger
	lockTable atomic.Bool // MySQL's lock table is there (EnsureLockTable)

	obs Observer // nil: nothing is observed
}

// Observer receives the store's events: the DEK cache's ("hit", "miss",
// "load", "create") and every call to the master keyring ("decrypt",
// "encrypt") with its duration. It never sees an owner or a key.
type Observer interface {
	DEKCache(event string, n int)
	MasterKeyCall(op string, d time.Duration, err error)
}

// SetObserver makes o receive the store's events. Call it before the
// store is used.
func (s *Store) SetObserver(o Observer) { s.obs = o }

// event reports n cache events, if there is an observer and n > 0.
func (s *Store) event(name string, n int) {
	if s.obs != nil && n > 0 {
		s.obs.DEKCache(name, n)
	}
}

// keyCall runs one call to the master keyring, reporting its duration
// and error to the observer.
func keyCall[T any](s *Store, op string, call func() (T, error)) (T, error) {
	if s.obs == nil {
		return call()
	}
	start := time.Now()
	v, err := call()
	s.obs.MasterKeyCall(op, time.Since(start), err)
	return v, err
}

// New returns the store of the profile table prof, opening DEKs with keys
// (nil: every lookup fails with dek.ErrNoKey). size and ttl bound each
// layer (negative: no caching); a transaction keeps at most size DEKs.
// With bind, the DEKs it creates are bound to their owner and the profile
// table (docs/format.md, "Owner-bound DEKs"); without, they are in TOM
// Toolkit's layout. Stored DEKs of both layouts open either way.
func New(prof *profilemeta.Profile, keys *dek.Keyring, log *slog.Logger, size int, ttl time.Duration, bind bool) *Store {
	txMax := 4096
	if size < 0 {
		txMax = 0
	}
	return &Store{
		prof:   prof,
		keys:   keys,
		owners: cache.New[any, *Key](size, ttl),
		opened: cache.New[string, *Key](size, ttl),
		tx:     newTxKeys(txMax, size, ttl),
		log:    log,
		bind:   bind,
	}
}

// Stats returns the owner cache's counters.
func (s *Store) Stats() cache.Stats { return s.owners.Stats() }

// Peek returns the owner's cached key without counting a hit or a miss.
func (s *Store) Peek(owner any) (*Key, bool) { return s.owners.Peek(owner) }

// Purge empties the owner and opened caches.
func (s *Store) Purge() {
	s.owners.Purge()
	s.opened.Purge()
}

// Commit caches keys loaded in a transaction begun for a statement, once
// it has committed.
func (s *Store) Commit(pending map[any]*Key) {
	for o, k := range pending {
		s.owners.Put(o, k)
	}
}

// Forget drops owner from every layer (its DEK was shredded or its
// profile deleted), and the stored DEK bytes given.
func (s *Store) Forget(owner any, stored ...[]byte) {
	s.owners.Delete(owner)
	s.tx.forget(owner)
	for _, enc := range stored {
		s.opened.Delete(openedName(owner, enc))
	}
}

// ForgetAll drops every owner from the owner cache and the transaction
// keys.
func (s *Store) ForgetAll() {
	s.owners.Purge()
	s.tx.forgetAll()
}

// ProfilesWritten tells the store that the caller's transaction on pool
// wrote profile rows: it serves that transaction no key any more.
func (s *Store) ProfilesWritten(pool gorm.ConnPool) { s.tx.disable(pool) }

// Resolve returns the key of every owner: from the caches, else from one
// IN (...) query per chunk of owners on db's own connection (so it sees
// db's transaction). With create, owners without a DEK get one, created
// exactly once even under concurrent writers. mode is asked only when an
// owner misses the owner cache. Per-owner failures are in errs; err is for
// the query. pending holds what a transaction of mode Own loaded: cache it
// with Commit once that transaction has committed.
func (s *Store) Resolve(db *gorm.DB, mode func() Mode, owners []any, create bool) (keys map[any]*Key, errs map[any]error, pending map[any]*Key, err error) {
	if s.keys == nil {
		return nil, nil, nil, dek.ErrNoKey
	}
	keys = make(map[any]*Key, len(owners))
	var missing []any
	for _, o := range owners {
		if k, ok := s.owners.Get(o); ok {
			keys[o] = k
		} else {
			missing = append(missing, o)
		}
	}
	if s.obs != nil {
		s.event("hit", len(owners)-len(missing))
		s.event("miss", len(missing))
	}
	if len(missing) == 0 {
		return keys, nil, nil, nil
	}
	m := mode()
	if m == Foreign {
		missing = s.tx.fill(db.Statement.ConnPool, missing, keys)
	}
	if len(missing) == 0 {
		return keys, nil, nil, nil
	}
	if db.DryRun {
		// A dry run writes nothing: encrypt under throwaway keys, never cached.
		if !create {
			return keys, nil, nil, nil
		}
		for _, o := range missing {
			d, err := dek.NewDEK()
			if err != nil {
				return nil, nil, nil, err
			}
			keys[o] = newKey(d)
		}
		return keys, nil, nil, nil
	}

	ctx := db.Statement.Context
	tx := db.Session(&gorm.Session{NewDB: true})
	if create && db.Dialector.Name() == "sqlite" {
		// Take SQLite's write lock before reading: a transaction that reads
		// and then writes cannot upgrade its snapshot under concurrent writers.
		if err := LockSQLite(tx, s.prof.Table, s.prof.DEK.DBName); err != nil {
			return nil, nil, nil, s.queryErr(err)
		}
	}
	found, err := s.load(tx, missing, false)
	if err != nil {
		return nil, nil, nil, err
	}
	loaded := make(map[any]*Key, len(missing))
	opened := 0 // DEKs read from the table and opened, not created
	openInto := func(o any, enc []byte) {
		if k, err := s.open(ctx, o, enc); err != nil {
			errs = setErr(errs, o, err)
		} else {
			loaded[o] = k
			opened++
		}
	}
	var toCreate []any
	for _, o := range missing {
		enc := found[o]
		if len(enc) == 0 {
			if create {
				toCreate = append(toCreate, o)
			} else {
				// No DEK: nothing can have been encrypted for this owner.
				errs = setErr(errs, o, ErrNoDEK)
			}
			continue
		}
		openInto(o, enc)
	}
	loads := opened
	if len(toCreate) > 0 {
		again, err := s.createAndLoad(tx, toCreate, found, m)
		if err != nil {
			s.event("load", loads)
			return nil, nil, nil, err
		}
		s.event("create", len(toCreate))
		for _, o := range toCreate {
			enc := again[o]
			if len(enc) == 0 {
				errs = setErr(errs, o, fmt.Errorf("%w: the owner's new DEK is not visible to this transaction (a snapshot older than another transaction's first write for the owner)", ErrConflict))
				continue
			}
			openInto(o, enc)
		}
	}
	if !create && len(errs) > 0 && tx.Dialector.Name() == "mysql" && m != None {
		// MySQL's REPEATABLE READ snapshot may predate another instance's
		// first write for an owner: a locking read sees the latest
		// committed row. Only for owners the snapshot showed no DEK.
		var late []any
		for o, err := range errs {
			if errors.Is(err, ErrNoDEK) {
				late = append(late, o)
			}
		}
		if len(late) > 0 {
			sortOwners(late)
			latest, err := s.load(tx, late, true)
			if err != nil {
				return nil, nil, nil, err
			}
			for _, o := range late {
				if enc := latest[o]; len(enc) > 0 {
					delete(errs, o)
					before := opened
					openInto(o, enc)
					loads += opened - before
				}
			}
		}
	}
	s.event("load", loads)
	switch m {
	case Foreign:
		s.tx.record(db.Statement.ConnPool, loaded)
	case None:
		s.Commit(loaded)
	case Own:
		pending = loaded
	}
	for o, k := range loaded {
		keys[o] = k
	}
	return keys, errs, pending, nil
}

// open decrypts owner's stored DEK (or recognises a tombstone), checking
// that a bound DEK is bound to owner's row. Opened DEKs are remembered by
// owner and stored bytes, and concurrent opens of the same bytes for the
// same owner share one decryption, so cold reads of one owner from many
// goroutines make one call to the master key (a KMS).
func (s *Store) open(ctx context.Context, owner any, enc []byte) (*Key, error) {
	if dek.IsTombstone(enc) {
		return &Key{Shredded: true}, nil
	}
	name := openedName(owner, enc)
	if k, ok := s.opened.Get(name); ok {
		return k, nil
	}
	v, err, _ := s.opening.Do(name, func() (any, error) {
		if k, ok := s.opened.Get(name); ok {
			return k, nil
		}
		k, err := s.openNow(ctx, owner, enc)
		if err == nil {
			s.opened.Put(name, k)
		}
		return k, err
	})
	if err != nil {
		return nil, err
	}
	return v.(*Key), nil
}

func (s *Store) openNow(ctx context.Context, owner any, enc []byte) (*Key, error) {
	d, err := keyCall(s, "decrypt", func() (dek.DEK, error) {
		d, _, _, err := s.keys.OpenBound(ctx, enc, s.binding(owner))
		return d, err
	})
	if err != nil {
		if errors.Is(err, dek.ErrDecrypt) && !errors.Is(err, dek.ErrBoundElsewhere) {
			return nil, fmt.Errorf("%w: no configured master key opens the owner's DEK", dek.ErrDecrypt)
		}
		// A DEK bound to another row (copied here) says so; it wraps
		// dek.ErrDecrypt like a DEK no key opens.
		return nil, err
	}
	k := newKey(d)
	clear(d[:])
	return k, nil
}

// Seal encrypts d, a new DEK for owner's profile row, under the primary
// master key: bound to that row when the store binds DEKs, else in TOM
// Toolkit's layout. owner is normalised (int64 or string); nil, an owner
// not known yet, can only be sealed when the store does not bind.
func (s *Store) Seal(ctx context.Context, owner any, d dek.DEK) ([]byte, error) {
	if s.keys == nil {
		return nil, dek.ErrNoKey
	}
	if !s.bind {
		return keyCall(s, "encrypt", func() ([]byte, error) { return s.keys.Seal(ctx, d) })
	}
	if owner == nil {
		return nil, errors.New("envelope: a bound DEK needs its owner")
	}
	return keyCall(s, "encrypt", func() ([]byte, error) { return s.keys.SealBound(ctx, d, s.binding(owner)) })
}

// BindsDEKs reports whether the store seals new DEKs bound to their row.
func (s *Store) BindsDEKs() bool { return s.bind }

// Opens reports, with a nil error, that a configured master key decrypts
// the stored DEK enc, in whichever profile row of the table it is bound
// to: what a check of the configured keys against stored DEKs needs. The
// error of a DEK no key opens wraps dek.ErrDecrypt.
func (s *Store) Opens(ctx context.Context, enc []byte) error {
	if s.keys == nil {
		return dek.ErrNoKey
	}
	// The binding asked for names no real row (an owner of one zero
	// byte): a legacy DEK opens whatever it is, and a bound DEK that a
	// configured key decrypts is refused as bound elsewhere, which proves
	// the key just the same.
	d, err := keyCall(s, "decrypt", func() (dek.DEK, error) {
		d, _, _, err := s.keys.OpenBound(ctx, enc, dek.Binding{Table: s.prof.Table, Owner: "\x00"})
		if errors.Is(err, dek.ErrBoundElsewhere) {
			err = nil // a configured key decrypted it
		}
		return d, err
	})
	clear(d[:])
	return err
}

// binding is the row of owner (normalised: int64 or string) in the
// profile table, as a bound DEK names it.
func (s *Store) binding(owner any) dek.Binding {
	return dek.Binding{Table: s.prof.Table, Owner: OwnerText(owner)}
}

func (s *Store) queryErr(err error) error {
	return fmt.Errorf("envelope: load DEKs from %s: %w", s.prof.Table, err)
}
