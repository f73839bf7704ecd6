package envelope

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/cache"
	"github.com/gorm-envelope/envelope/internal/indexkeys"
	"github.com/gorm-envelope/envelope/internal/keystore"
	"github.com/gorm-envelope/envelope/internal/profilemeta"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// Name is the plugin's name in gorm.Config.Plugins.
const Name = "envelope"

// Defaults for the DEK cache.
const (
	DefaultCacheSize = 10000
	DefaultCacheTTL  = 5 * time.Minute
)

// Config configures the plugin.
type Config struct {
	// Keys holds the master keys. Nil is legal: the plugin registers, logs
	// one warning, and every read or write of an encrypted field fails with
	// [ErrNoKey] while models without encrypted fields work as usual.
	Keys *dek.Keyring

	// Profile is the app's profile model, e.g. &Profile{}: one row per
	// owner, with a unique field tagged envelope:"owner" and a []byte field
	// tagged envelope:"dek" that holds the owner's encrypted DEK.
	Profile any

	// Logger receives the plugin's few log lines (the missing-key warning,
	// shred audit lines). Nil means slog.Default(). Keys, DEKs and
	// plaintext are never logged.
	Logger *slog.Logger

	// CacheSize bounds how many owners' DEKs are kept in memory
	// (default [DefaultCacheSize]; negative disables the cache). It also
	// bounds the DEKs a transaction reuses across its statements, which a
	// negative size turns off too.
	CacheSize int

	// CacheTTL bounds how long a DEK stays in memory (default
	// [DefaultCacheTTL]; negative disables the cache). It is also how long
	// another process may go on using a DEK after [Shred].
	CacheTTL time.Duration

	// AcceptPlaintext lets reads return a value of an encrypted column that
	// is not a token as it is, for the window while [EncryptExisting]
	// encrypts a table that held plaintext. Such reads are counted
	// ([Plugin.PlaintextReads]) and the first is logged. Off by default:
	// a value that is not a token fails with [ErrDecrypt].
	AcceptPlaintext bool

	// Format is the layout new encrypted values are written in:
	// [FormatFernet] (the default, which TOM Toolkit reads) or
	// [FormatBound]. Reads accept both, whatever it is. A model whose
	// primary key is tagged envelope:"row" writes bound values, bound to
	// their row too, whatever Format is.
	Format Format

	// Models are the app's models with blind indexes (e.g. &User{}),
	// parsed at db.Use so that [Shred] clears the owner's global index
	// values in them even before this process has used them. A model used
	// through the plugin is known from then on without being listed.
	Models []any

	// BindDEKs seals new DEKs bound to their owner and the profile table
	// (docs/format.md, "Owner-bound DEKs"): a DEK copied into another
	// owner's profile row does not open there. DEKs already stored in TOM
	// Toolkit's layout keep opening, and rotate.Run with
	// rotate.Options.BindDEKs upgrades them. Off by default, because TOM
	// Toolkit cannot open a bound DEK; Format: FormatBound implies it.
	BindDEKs bool

	// Observer receives counts of values encrypted, decrypted and failed,
	// of the DEK cache's events and of master-key calls with their
	// latency, for an app to export as metrics (the otelmetric module
	// makes OpenTelemetry instruments of them). Nil observes nothing.
	// Owners, values and keys are never passed to it.
	Observer Observer
}

// bindDEKs reports whether new DEKs are sealed bound to their profile row:
// asked for, or implied by the bound value format, which TOM Toolkit does
// not read either.
func (c Config) bindDEKs() bool { return c.BindDEKs || c.Format == FormatBound }

// Plugin is the GORM plugin. Create it with [New] and register it with
// db.Use. One Plugin serves one *gorm.DB (and the sessions made from it).
type Plugin struct {
	cfg  Config
	keys *dek.Keyring
	log  *slog.Logger
	obs  Observer // nil: nothing is observed
	prof *profilemeta.Profile

	// store maps owners to their DEKs; made by Initialize, once the
	// profile model is known.
	store     *keystore.Store
	ikeys     *indexkeys.Store // global blind-index keys
	gkeys     globalKeys
	cacheSize int
	cacheTTL  time.Duration

	metas     sync.Map // *schema.Schema -> *modelMeta
	typeMetas sync.Map // reflect.Type -> *modelMeta (nil for non-models)
	tables    sync.Map // table name -> *modelMeta of a model with encrypted fields
	// projections are the metadata of struct types read and written as
	// another model's rows (format.go).
	projections sync.Map // [2]*modelMeta{model, struct} -> *modelMeta

	plaintextReads atomic.Uint64
	pipelined      atomic.Uint64 // values decrypted while the result was scanned

	once    sync.Once
	initErr error
	// served is db.Callback() of the handle Initialize ran for: every
	// session of one gorm.Open shares it (Session copies *gorm.Config, not
	// the callbacks), and another gorm.Open has its own.
	served any
}

// New returns the plugin for cfg. Errors in cfg are reported by db.Use.
func New(cfg Config) *Plugin {
	p := &Plugin{cfg: cfg, keys: cfg.Keys, log: cfg.Logger, obs: cfg.Observer}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.cacheSize, p.cacheTTL = cfg.CacheSize, cfg.CacheTTL
	if p.cacheSize == 0 {
		p.cacheSize = DefaultCacheSize
	}
	if p.cacheTTL == 0 {
		p.cacheTTL = DefaultCacheTTL
	}
	return p
}

// Name returns [Name].
func (p *Plugin) Name() string { return Name }

// CacheStats are the DEK cache's counters: hits, misses, loads (DEKs
// read from the profile table and opened), evictions, and the entries
// held now.
type CacheStats = cache.Stats

// CacheStats returns the DEK cache's counters, for an app to export as
// metrics.
func (p *Plugin) CacheStats() CacheStats {
	if p.store == nil {
		return CacheStats{}
	}
	return p.store.Stats()
}

// PlaintextReads returns how many legacy plaintext values reads have
// accepted under Config.AcceptPlaintext.
func (p *Plugin) PlaintextReads() uint64 { return p.plaintextReads.Load() }

// Initialize validates the configuration and registers the serializer and
// the callbacks. GORM calls it from db.Use; it runs once. A Plugin serves
// one *gorm.DB: Use on another handle is refused, since its callbacks
// would never be registered there.
func (p *Plugin) Initialize(db *gorm.DB) error {
	p.once.Do(func() {
		p.served = db.Callback()
		p.initErr = p.initialize(db)
	})
	if p.initErr == nil && p.served != any(db.Callback()) {
		return errors.New("envelope: this Plugin already serves another *gorm.DB; create one with envelope.New for each")
	}
	return p.initErr
}

func (p *Plugin) initialize(db *gorm.DB) error {
	if p.cfg.Format != FormatFernet && p.cfg.Format != FormatBound {
		return fmt.Errorf("envelope: Config.Format %d is no format: use envelope.FormatFernet or envelope.FormatBound", p.cfg.Format)
	}
	schema.RegisterSerializer(SerializerName, Serializer{})
	prof, err := profilemeta.Parse(db, p.cfg.Profile)
	if err != nil {
		return err
	}
	p.prof = prof
	p.store = keystore.New(prof, p.keys, p.log, p.cacheSize, p.cacheTTL, p.cfg.bindDEKs())
	p.ikeys = indexkeys.New(db, p.keys, p.cacheTTL)
	if p.obs != nil {
		p.store.SetObserver(p.obs)
		p.ikeys.SetObserver(p.obs)
	}
	if p.keys == nil {
		p.log.Warn("envelope: no master key configured; encrypted fields cannot be read or written",
			"variable", dek.EnvKey, "docs", "docs/key-management.md")
	} else if err := p.checkKeys(db); err != nil {
		return err
	}
	p.store.EnsureLockTable(db)
	for _, model := range p.cfg.Models {
		stmt := &gorm.Statement{DB: db}
		if err := stmt.Parse(model); err != nil {
			return fmt.Errorf("envelope: Config.Models: %w", err)
		}
		if m := p.metaOf(stmt.Schema); m.err != nil {
			return m.err
		}
	}
	return p.register(db)
}

// sampleSize is how many stored DEKs Initialize tries to open.
const sampleSize = 16

// checkKeys refuses a keyring that opens none of the DEKs already stored,
// so a misconfigured instance never creates DEKs the rest of the fleet
// cannot open.
func (p *Plugin) checkKeys(db *gorm.DB) error {
	tx := db.Session(&gorm.Session{NewDB: true, Context: context.Background()})
	if !tx.Migrator().HasTable(p.prof.Table) {
		return nil
	}
	var encs [][]byte
	err := tx.Table(p.prof.Table).
		Where(p.prof.DEK.DBName+" IS NOT NULL").
		Order(p.prof.ID.DBName+" DESC").Limit(sampleSize*2).
		Pluck(p.prof.DEK.DBName, &encs).Error
	if err != nil {
		return fmt.Errorf("envelope: check keys against %s: %w", p.prof.Table, err)
	}
	tried := 0
	for _, e := range encs {
		if len(e) == 0 || dek.IsTombstone(e) {
			continue
		}
		tried++
		if err := p.store.Opens(context.Background(), e); err == nil {
			return nil
		} else if !errors.Is(err, dek.ErrDecrypt) {
			return fmt.Errorf("envelope: check keys: %w", err)
		}
		if tried == sampleSize {
			break
		}
	}
	if tried == 0 {
		return nil
	}
	return fmt.Errorf("%w: the configured master keys open none of %d stored DEKs in %s: wrong DEK_ENCRYPTION_KEY? (see docs/key-management.md)", ErrDecrypt, tried, p.prof.Table)
}

func (p *Plugin) register(db *gorm.DB) error {
	cb := db.Callback()
	regs := []struct {
		name string
		err  error
	}{
		{"envelope:index_keys_create", cb.Create().Before("gorm:begin_transaction").Register("envelope:index_keys_create", p.prepareIndexKeys)},
		{"envelope:index_keys_update", cb.Update().Before("gorm:begin_transaction").Register("envelope:index_keys_update", p.prepareIndexKeys)},
		{"envelope:before_create", cb.Create().After("gorm:save_before_associations").Before("gorm:create").Register("envelope:before_create", p.beforeCreate)},
		{"envelope:seal_self_owned", cb.Create().After("gorm:create").Before("gorm:save_after_associations").Register("envelope:seal_self_owned", p.sealSelf)},
		{"envelope:after_create", cb.Create().After("gorm:commit_or_rollback_transaction").Register("envelope:after_create", p.afterWrite)},
		{"envelope:before_update", cb.Update().After("gorm:save_before_associations").Before("gorm:update").Register("envelope:before_update", p.beforeUpdate)},
		{"envelope:check_pinned", cb.Update().After("gorm:update").Before("gorm:save_after_associations").Register("envelope:check_pinned", p.checkPinned)},
		{"envelope:after_update", cb.Update().After("gorm:commit_or_rollback_transaction").Register("envelope:after_update", p.afterWrite)},
		{"envelope:match_query", cb.Query().Before("gorm:query").Register("envelope:match_query", p.match)},
		{"envelope:match_row", cb.Row().Before("gorm:row").Register("envelope:match_row", p.matchExact)},
		{"envelope:match_update", cb.Update().Before("gorm:update").Register("envelope:match_update", p.matchExact)},
		{"envelope:match_delete", cb.Delete().Before("gorm:delete").Register("envelope:match_delete", p.matchExact)},
		{"envelope:row_end", cb.Row().After("gorm:row").Register("envelope:row_end", endStatement)},
		{"envelope:delete_end", cb.Delete().After("gorm:commit_or_rollback_transaction").Register("envelope:delete_end", endStatement)},
		{"envelope:guard_query", cb.Query().Before("gorm:query").Register("envelope:guard_query", p.guard)},
		{"envelope:before_query", cb.Query().After("envelope:guard_query").Before("gorm:query").Register("envelope:before_query", p.beforeQuery)},
		{"envelope:guard_row", cb.Row().Before("gorm:row").Register("envelope:guard_row", p.guard)},
		{"envelope:guard_update", cb.Update().Before("gorm:update").Register("envelope:guard_update", p.guard)},
		{"envelope:guard_delete", cb.Delete().Before("gorm:delete").Register("envelope:guard_delete", p.guard)},
		{"envelope:profile_delete", cb.Delete().Before("gorm:delete").Register("envelope:profile_delete", p.profileWrite)},
		{"envelope:profile_deleted", cb.Delete().After("gorm:commit_or_rollback_transaction").Register("envelope:profile_deleted", p.profileDeleted)},
		{"envelope:after_query", cb.Query().After("gorm:query").Before("gorm:preload").Register("envelope:after_query", p.afterQuery)},
		{"envelope:match_filter", cb.Query().After("envelope:after_query").Before("gorm:preload").Register("envelope:match_filter", p.filterMatches)},
		{"envelope:after_preload", cb.Query().After("gorm:preload").Before("gorm:after_query").Register("envelope:after_preload", p.afterPreload)},
	}
	for _, r := range regs {
		if r.err != nil {
			return fmt.Errorf("envelope: register callback %s: %w", r.name, r.err)
		}
	}
	return nil
}

// pluginOf returns the envelope plugin registered on db.
func pluginOf(db *gorm.DB) (*Plugin, error) {
	if pl, ok := db.Config.Plugins[Name]; ok {
		if p, ok := pl.(*Plugin); ok {
			return p, nil
		}
	}
	return nil, errors.New("envelope: plugin not registered on this *gorm.DB (call db.Use(envelope.New(...)) first)")
}
