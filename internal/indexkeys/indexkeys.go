// Package indexkeys is a placeholder of the global blind-index key store.
package indexkeys

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gorm-envelope/envelope/dek"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

const Table = "envelope_index_keys"

var ErrNoKey = errors.New("envelope: no master key configured")

type Version struct {
	Version int
	Key     dek.DEK
}

type row struct {
	ID         uint   `gorm:"primaryKey"`
	Name       string `gorm:"size:191;not null;uniqueIndex:envelope_index_keys_name_version"`
	Version    int    `gorm:"not null;uniqueIndex:envelope_index_keys_name_version"`
	WrappedKey []byte `gorm:"not null"`
	Retired    bool   `gorm:"not null;default:false"`
	CreatedAt  time.Time
}

func (row) TableName() string { return Table }

type Store struct {
	db   *gorm.DB
	keys *dek.Keyring
	mu   sync.Mutex
	live map[string][]Version
}

func New(db *gorm.DB, keys *dek.Keyring, ttl time.Duration) *Store {
	return &Store{db: db.Session(&gorm.Session{NewDB: true}), keys: keys, live: map[string][]Version{}}
}

func (s *Store) EnsureTable(ctx context.Context) error {
	return s.db.WithContext(ctx).AutoMigrate(&row{})
}

func (s *Store) Live(ctx context.Context, name string, create bool) ([]Version, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.live[name]; ok {
		return v, nil
	}
	if s.keys == nil {
		return nil, ErrNoKey
	}
	db := s.db.WithContext(ctx)
	load := func() ([]Version, error) {
		if !db.Migrator().HasTable(Table) {
			return nil, nil
		}
		var rows []row
		if err := db.Where("name = ? AND retired = ?", name, false).Order("version DESC").Find(&rows).Error; err != nil {
			return nil, err
		}
		var out []Version
		for _, r := range rows {
			d, _, err := s.keys.Open(ctx, r.WrappedKey)
			if err != nil {
				return nil, fmt.Errorf("envelope: index key %s v%d: %w", name, r.Version, err)
			}
			out = append(out, Version{Version: r.Version, Key: d})
		}
		return out, nil
	}
	out, err := load()
	if err != nil {
		return nil, err
	}
	if len(out) == 0 && create {
		if err := s.EnsureTable(ctx); err != nil {
			return nil, err
		}
		d, err := dek.NewDEK()
		if err != nil {
			return nil, err
		}
		w, err := s.keys.Seal(ctx, d)
		if err != nil {
			return nil, err
		}
		if err := db.Clauses(clause.OnConflict{DoNothing: true}).Create(&row{Name: name, Version: 1, WrappedKey: w}).Error; err != nil {
			return nil, err
		}
		if out, err = load(); err != nil {
			return nil, err
		}
	}
	if len(out) > 0 {
		s.live[name] = out
	}
	return out, nil
}

func (s *Store) Forget() {
	s.mu.Lock()
	s.live = map[string][]Version{}
	s.mu.Unlock()
}

func (s *Store) Add(ctx context.Context, name string) (Version, error) {
	s.Forget()
	vs, err := s.Live(ctx, name, true)
	if err != nil {
		return Version{}, err
	}
	d, err := dek.NewDEK()
	if err != nil {
		return Version{}, err
	}
	w, err := s.keys.Seal(ctx, d)
	if err != nil {
		return Version{}, err
	}
	v := vs[0].Version + 1
	if err := s.db.WithContext(ctx).Create(&row{Name: name, Version: v, WrappedKey: w}).Error; err != nil {
		return Version{}, err
	}
	s.Forget()
	return Version{Version: v, Key: d}, nil
}

func (s *Store) Retire(ctx context.Context, name string, version int) error {
	defer s.Forget()
	return s.db.WithContext(ctx).Model(&row{}).Where("name = ? AND version = ?", name, version).Update("retired", true).Error
}

// LiveTx is Live in the transaction tx, uncached.
func (s *Store) LiveTx(ctx context.Context, tx *gorm.DB, name string, create bool) ([]Version, error) {
	if s.keys == nil {
		return nil, ErrNoKey
	}
	db := tx.Session(&gorm.Session{NewDB: true, Context: ctx})
	load := func() ([]Version, error) {
		if !db.Migrator().HasTable(Table) {
			return nil, nil
		}
		var rows []row
		if err := db.Where("name = ? AND retired = ?", name, false).Order("version DESC").Find(&rows).Error; err != nil {
			return nil, err
		}
		var out []Version
		for _, r := range rows {
			d, _, err := s.keys.Open(ctx, r.WrappedKey)
			if err != nil {
				return nil, err
			}
			out = append(out, Version{Version: r.Version, Key: d})
		}
		return out, nil
	}
	out, err := load()
	if err != nil || len(out) > 0 || !create {
		return out, err
	}
	if err := db.AutoMigrate(&row{}); err != nil {
		return nil, err
	}
	d, err := dek.NewDEK()
	if err != nil {
		return nil, err
	}
	w, err := s.keys.Seal(ctx, d)
	if err != nil {
		return nil, err
	}
	if err := db.Clauses(clause.OnConflict{DoNothing: true}).Create(&row{Name: name, Version: 1, WrappedKey: w}).Error; err != nil {
		return nil, err
	}
	return load()
}
