package envelope

import (
	"context"
	"fmt"
	"reflect"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Shred destroys owner's DEK for good (crypto-shredding): the DEK column
// of the owner's profile is overwritten with a tombstone, so every value
// ever encrypted for the owner reads as [ErrShredded], in this database and
// in every backup taken from now on. The owner's DEKs retired by a
// [Rekey] not finished yet are deleted with it. Backups taken before
// still hold the DEK: see docs/security-model.md.
//
// The DEK is evicted from this process's cache at once; other processes
// holding it in their caches go on using it for at most Config.CacheTTL.
// Later writes for the owner fail with ErrShredded: to start the owner
// afresh, delete the owner's profile row through GORM (with Unscoped for a
// soft-delete Profile model, whose soft delete keeps the tombstone), and
// the next write creates a new DEK. This process forgets the shredded
// state at once, other processes within Config.CacheTTL. Values written
// before the shred then fail with ErrDecrypt: they do not open under the
// new DEK. Shred logs one audit line naming the owner, nothing else.
//
// db may be a transaction: the tombstone is then written in it, and undone
// if it rolls back.
func Shred(db *gorm.DB, owner any) error {
	p, err := pluginOf(db)
	if err != nil {
		return err
	}
	o := normOwnerAny(owner)
	if o == nil {
		return fmt.Errorf("%w: Shred needs a non-zero owner", ErrNoOwner)
	}
	tx := db.Session(&gorm.Session{NewDB: true})
	ctx := tx.Statement.Context
	if ctx == nil {
		ctx = context.Background()
	}
	row := reflect.New(p.prof.Type)
	if err := p.prof.Owner.Set(ctx, row.Elem(), o); err != nil {
		return fmt.Errorf("%w: %v", ErrNoOwner, err)
	}
	if err := p.prof.DEK.Set(ctx, row.Elem(), dek.Tombstone()); err != nil {
		return err
	}
	var old [][]byte
	err = tx.Transaction(func(tx *gorm.DB) error {
		// Shred writes profile rows like a DEK creator: in the same order.
		if err := p.store.LockCreation(tx); err != nil {
			return err
		}
		if err := tx.Table(p.prof.Table).
			Where(clause.Eq{Column: clause.Column{Name: p.prof.Owner.DBName}, Value: o}).
			Pluck(p.prof.DEK.DBName, &old).Error; err != nil {
			return err
		}
		if err := tx.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: p.prof.Owner.DBName}}, DoNothing: true}).
			Create(row.Interface()).Error; err != nil {
			return err
		}
		if err := tx.Table(p.prof.Table).
			Where(clause.Eq{Column: clause.Column{Name: p.prof.Owner.DBName}, Value: o}).
			UpdateColumn(p.prof.DEK.DBName, dek.Tombstone()).Error; err != nil {
			return err
		}
		// The DEKs a rekey retired open the owner's values as well.
		if ok, err := keystore.RetiredExists(tx); err != nil {
			return err
		} else if ok {
			retired, _, err := p.store.Retired(tx, o)
			if err != nil {
				return err
			}
			old = append(old, retired...)
			if _, err := p.store.DestroyRetired(tx, o, false); err != nil {
				return err
			}
		}
		return p.clearGlobalIndexes(tx, o)
	})
	p.store.Forget(o, old...)
	if err != nil {
		return fmt.Errorf("envelope: shred owner %v: %w", o, err)
	}
	p.log.Info("envelope: DEK shredded", "owner", o)
	return nil
}

// clearGlobalIndexes clears owner's global blind index values in every
// model the plugin knows.
func (p *Plugin) clearGlobalIndexes(tx *gorm.DB, owner any) error {
	var err error
	p.tables.Range(func(k, v any) bool {
		m := v.(*modelMeta)
		set := map[string]any{}
		for _, bi := range m.indexes {
			if bi.global {
				if bi.f.FieldType == typeString {
					set[bi.f.DBName] = ""
				} else {
					set[bi.f.DBName] = nil
				}
			}
		}
		if len(set) == 0 || m.owner == nil {
			return true
		}
		err = internal(tx).Table(k.(string)).
			Where(clause.Eq{Column: clause.Column{Name: m.owner.DBName}, Value: owner}).
			UpdateColumns(set).Error
		return err == nil
	})
	return err
}
