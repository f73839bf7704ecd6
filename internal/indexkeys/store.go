// Package indexkeys stores the keys of global blind indexes: one random
// 32-byte key per index name and version, in the table envelope_index_keys,
// wrapped under the master keyring exactly as a DEK is ([dek.Keyring.Seal]:
// the token of the key's 44-character text under the primary master key,
// made by the key's [dek.Encrypter], so KMS keys work too). Rotating the
// master key rewraps these rows (package rotate) and never changes a key.
//
// # Versions
//
// A name has versions 1, 2, …; those not retired are live, and the newest
// live one is active: values are hashed with it for writing, and looked up
// under every live version. [Store.Add] makes a new active version;
// [Store.Retire] retires an older one once no value hashed with it is left.
// The active version cannot be retired, so the newest version of a name is
// always live.
//
// # Caching
//
// A [Store] keeps each name's live versions in memory for its ttl, opened:
// a cached [Store.Live] costs a map lookup and allocates nothing. Add and
// Retire through a Store refresh that Store's cache at once; another Store
// (another process, or another handle) sees a change once its cached entry
// is older than its ttl. So after an Add, writes everywhere use the new
// version within one ttl: wait at least that long before re-hashing values
// and retiring the old version. A name with no live version is not cached.
package indexkeys

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sync/singleflight"
	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
)

// Table is the table that holds the wrapped index keys. Its columns: id
// (auto-increment primary key), name (varchar(191)), version (int),
// wrapped_key (bytes), retired (bool, default false), created_at; (name,
// version) is unique. [Store.EnsureTable] creates it.
const Table = "envelope_index_keys"

// DefaultTTL is how long a Store caches a name's versions when New is given
// a ttl of zero.
const DefaultTTL = time.Minute

// MaxNameLen is the longest index name, in bytes.
const MaxNameLen = 191

// Version is one version of an index's key.
type Version struct {
	Version int
	// Key is the raw 32 bytes of the key. Printing it with fmt shows a
	// placeholder.
	Key dek.DEK
}

// Store reads, creates and caches index keys. Safe for concurrent use.
type Store struct {
	pool    gorm.ConnPool
	dialect string
	keys    *dek.Keyring
	ttl     time.Duration // <= 0: no cache
	err     error         // the handle given to New cannot be used

	now func() time.Time

	mu      sync.RWMutex
	entries map[string]*entry
	gen     uint64 // bumped by every change through this Store and by Forget
	flight  singleflight.Group

	// beforeInsert, set by tests, runs before a new version is inserted.
	beforeInsert func()

	obs Observer // nil: master-key calls are not observed
}

// Observer receives every call to the master keyring ("decrypt",
// "encrypt") with its duration and error. It never sees a key.
type Observer interface {
	MasterKeyCall(op string, d time.Duration, err error)
}

// SetObserver makes o receive the store's master-key calls. Call it
// before the store is used.
func (s *Store) SetObserver(o Observer) { s.obs = o }

// keyCall reports one master-key call that began at start, if observed.
func (s *Store) keyCall(op string, start time.Time, err error) {
	if s.obs != nil {
		s.obs.MasterKeyCall(op, time.Since(start), err)
	}
}

// entry is one name's cached live versions, newest first, with the stored
// bytes each was opened from. Entries are never changed once made.
type entry struct {
	live    []Version
	wrapped [][]byte
	expires time.Time
}

// New returns the store of db's index keys, wrapped under keys (nil: Live
// and Add fail with [ErrNoKey]). db must be the app's root handle, not a
// transaction: every statement runs on its own, so that no caller's
// rollback can lose a key that values were already hashed with. ttl is how
// long a name's versions are cached: 0 means [DefaultTTL], a negative ttl
// no caching.
func New(db *gorm.DB, keys *dek.Keyring, ttl time.Duration) *Store {
	if ttl == 0 {
		ttl = DefaultTTL
	}
	s := &Store{keys: keys, ttl: ttl, now: time.Now, entries: map[string]*entry{}}
	switch {
	case db == nil:
		s.err = errors.New("envelope: blind-index keys: nil *gorm.DB")
	case !supported(db.Dialector.Name()):
		s.err = fmt.Errorf("envelope: blind-index keys: dialect %q is not supported", db.Dialector.Name())
	default:
		s.pool = db.Statement.ConnPool
		s.dialect = db.Dialector.Name()
		if _, inTx := s.pool.(gorm.TxCommitter); inTx {
			s.err = errors.New("envelope: blind-index keys: the store's handle is a transaction; give it the app's root handle")
		}
	}
	return s
}

// Live returns every live version of name, newest first: the first is the
// active one, which writes use. The slice is shared with the cache and
// other callers: do not modify it.
//
// When name has no live version and create is true, Live creates version
// 1 (after the newest version, if all were somehow retired), exactly once
// even when first callers race in several processes: each inserts its own
// new key only if the version does not exist yet, then every caller reads
// back the one that was stored. When name has no live version and create
// is false, Live returns (nil, nil).
//
// Live runs on the Store's root handle in short statements of its own,
// never in a caller's transaction. On SQLite, a creation waits (up to the
// busy timeout) for a transaction that holds the write lock on another
// connection: with a pool of one connection, call Live before beginning
// the transaction.
//
// A stored key that no key of the keyring opens gives an *[OpenError]
// wrapping [dek.ErrDecrypt]; a Store without a keyring gives [ErrNoKey].
func (s *Store) Live(ctx context.Context, name string, create bool) ([]Version, error) {
	if s.ttl > 0 {
		s.mu.RLock()
		e := s.entries[name]
		s.mu.RUnlock()
		if e != nil && s.now().Before(e.expires) {
			return e.live, nil
		}
	}
	if err := s.check(name, true); err != nil {
		return nil, err
	}
	key := "r:" + name
	if create {
		key = "c:" + name
	}
	for try := 0; ; try++ {
		v, err, shared := s.flight.Do(key, func() (any, error) { return s.fill(ctx, name, create) })
		if err != nil && shared && try == 0 && ctx.Err() == nil &&
			(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			// The caller whose fill this was gave up; this one has not.
			continue
		}
		if err != nil {
			return nil, err
		}
		return v.([]Version), nil
	}
}

// fill reads name's versions, creating the first when asked, opens the
// live ones and caches them.
func (s *Store) fill(ctx context.Context, name string, create bool) ([]Version, error) {
	s.mu.RLock()
	gen, prev := s.gen, s.entries[name]
	s.mu.RUnlock()

	rs, err := s.read(ctx, name)
	if err != nil {
		if !create {
			// No table yet: no key yet.
			if ok, e := exists(ctx, s.pool, s.dialect); e == nil && !ok {
				return nil, nil
			}
		}
		return nil, err
	}
	var made *made
	if live(rs) == 0 {
		if !create {
			return nil, nil
		}
		if made, err = s.insert(ctx, name, next(rs)); err != nil {
			return nil, err
		}
		defer made.clear()
		if rs, err = s.read(ctx, name); err != nil {
			return nil, err
		}
		if live(rs) == 0 {
			return nil, fmt.Errorf("envelope: blind-index key %q: created, but not there when read back", name)
		}
	}
	e := &entry{}
	for _, r := range rs {
		if r.retired {
			continue
		}
		k, err := s.open(ctx, name, r, prev, made)
		if err != nil {
			return nil, err
		}
		e.live = append(e.live, Version{Version: r.version, Key: k})
		e.wrapped = append(e.wrapped, r.wrapped)
	}
	if s.ttl > 0 {
		s.mu.Lock()
		if s.gen == gen {
			e.expires = s.now().Add(s.ttl)
			s.entries[name] = e
		}
		s.mu.Unlock()
	}
	return e.live, nil
}

// open unwraps a stored key, or takes it from prev or made when it was
// opened from (or made as) the same bytes: the same bytes always open to
// the same key, so a refill after the ttl costs no master-key call unless
// the row was rewrapped.
func (s *Store) open(ctx context.Context, name string, r row, prev *entry, m *made) (dek.DEK, error) {
	if m != nil && m.version == r.version && bytes.Equal(m.wrapped, r.wrapped) {
		return m.key, nil
	}
	if prev != nil {
		for i, v := range prev.live {
			if v.Version == r.version && bytes.Equal(prev.wrapped[i], r.wrapped) {
				return v.Key, nil
			}
		}
	}
	start := time.Now()
	k, _, err := s.keys.Open(ctx, r.wrapped)
	s.keyCall("decrypt", start, err)
	if err != nil {
		return dek.DEK{}, &OpenError{Name: name, Version: r.version, Err: err}
	}
	return k, nil
}

// Add creates a new version of name, after the newest one, and makes it
// the active version; it returns that version. With no version yet it
// creates version 1.
//
// Concurrent Adds of one name, in this process or others, that read the
// same newest version are one intent and create one version: each tries
// to insert the next version only if it does not exist yet, and the ones
// that find it made by another return that version and its key. An Add
// that starts once another's version is stored creates the version after
// it.
func (s *Store) Add(ctx context.Context, name string) (Version, error) {
	if err := s.check(name, true); err != nil {
		return Version{}, err
	}
	rs, err := s.read(ctx, name)
	if err != nil {
		return Version{}, err
	}
	v := next(rs)
	// Even a failed insert may have landed (a lost reply): refresh anyway.
	defer s.changed(name)
	m, err := s.insert(ctx, name, v)
	if err != nil {
		return Version{}, err
	}
	defer m.clear()
	if rs, err = s.read(ctx, name); err != nil {
		return Version{}, err
	}
	for _, r := range rs {
		if r.version == v {
			k, err := s.open(ctx, name, r, nil, m)
			return Version{Version: v, Key: k}, err
		}
	}
	return Version{}, fmt.Errorf("envelope: blind-index key %q: version %d created, but not there when read back", name, v)
}

// Retire marks a version of name retired: lookups no longer use it. It is
// meant for a version that no stored value is hashed with any more. The
// active version (the newest) is refused with an *[ActiveError]; a version
// that does not exist gives an error wrapping [ErrNoVersion]; retiring a
// retired version does nothing.
func (s *Store) Retire(ctx context.Context, name string, version int) error {
	if err := s.check(name, false); err != nil {
		return err
	}
	rs, err := s.read(ctx, name)
	if err != nil {
		return err
	}
	var found *row
	for i := range rs {
		if rs[i].version == version {
			found = &rs[i]
		}
	}
	switch {
	case found == nil:
		return fmt.Errorf("%w: %q has no version %d", ErrNoVersion, name, version)
	case found.retired:
		// Retired by another Store, maybe: this one stops using it too.
		s.changed(name)
		return nil
	case version == rs[0].version:
		// The newest version is always live: retiring it needs a newer one,
		// and versions are never removed, so this check cannot go stale.
		return &ActiveError{Name: name, Version: version}
	}
	defer s.changed(name)
	return s.retire(ctx, name, version)
}

// Forget drops every cached version. Slices Live returned before stay
// valid.
func (s *Store) Forget() {
	s.mu.Lock()
	s.entries = map[string]*entry{}
	s.gen++
	s.mu.Unlock()
}

// changed makes the next Live of name read the table again: a fill that
// began before the change neither serves later callers nor is cached. The
// entry is kept, expired, so the refill reuses the keys it opened.
func (s *Store) changed(name string) {
	s.mu.Lock()
	s.gen++
	if e := s.entries[name]; e != nil {
		s.entries[name] = &entry{live: e.live, wrapped: e.wrapped}
	}
	s.mu.Unlock()
	s.flight.Forget("r:" + name)
	s.flight.Forget("c:" + name)
}

// check reports why name cannot be used now, if it cannot.
func (s *Store) check(name string, needKeys bool) error {
	if s.err != nil {
		return s.err
	}
	if needKeys && s.keys == nil {
		return ErrNoKey
	}
	return checkName(name)
}

// checkName accepts 1 to MaxNameLen bytes of UTF-8 with no control
// characters and no surrounding white space: MySQL compares strings
// ignoring trailing spaces, and PostgreSQL's text takes no NUL.
func checkName(name string) error {
	bad := ""
	switch {
	case name == "":
		bad = "is empty"
	case len(name) > MaxNameLen:
		bad = fmt.Sprintf("is longer than %d bytes", MaxNameLen)
	case !utf8.ValidString(name):
		bad = "is not UTF-8"
	case strings.TrimSpace(name) != name:
		bad = "begins or ends with white space"
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		bad = "holds a control character"
	}
	if bad != "" {
		return fmt.Errorf("envelope: blind-index name %q %s", name, bad)
	}
	return nil
}

// made is a key this Store made and inserted (or tried to).
type made struct {
	version int
	key     dek.DEK
	wrapped []byte
}

func (m *made) clear() {
	if m != nil {
		clear(m.key[:])
	}
}

func live(rs []row) int {
	n := 0
	for _, r := range rs {
		if !r.retired {
			n++
		}
	}
	return n
}

// next is the version after the newest in rs (newest first).
func next(rs []row) int {
	if len(rs) == 0 {
		return 1
	}
	return rs[0].version + 1
}
