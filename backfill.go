package envelope

import (
	"context"

	"github.com/gorm-envelope/envelope/rotate"
	"gorm.io/gorm"
)

// Backfill gives a DEK to every profile that has none (profiles created
// before the plugin was installed), in batches of batchSize (0 for the
// default), and returns how many it gave. Each write is conditional on the
// column still being empty, so it never replaces a DEK made concurrently.
// Call it from a migration after db.Use; it is safe to run again.
func Backfill(ctx context.Context, db *gorm.DB, batchSize int) (int, error) {
	p, err := pluginOf(db)
	if err != nil {
		return 0, err
	}
	if p.keys == nil {
		return 0, ErrNoKey
	}
	return rotate.Backfill(ctx, db, rotate.Options{Keys: p.keys, Profile: p.cfg.Profile, BatchSize: batchSize})
}
