package kms_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/kms"
	"github.com/gorm-envelope/envelope/rotate"
)

// Profile is the contract's profile model.
type Profile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

// Credential is app data encrypted with its owner's DEK.
type Credential struct {
	ID       uint
	UserID   uint `envelope:"owner"`
	Facility string
	Password string `gorm:"serializer:envelope"`
}

func use(t testing.TB, db *gorm.DB, keys *dek.Keyring) *envelope.Plugin {
	t.Helper()
	p := envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})
	if err := db.Use(p); err != nil {
		t.Fatalf("db.Use: %v", err)
	}
	if err := db.AutoMigrate(&Profile{}, &Credential{}); err != nil {
		t.Fatal(err)
	}
	return p
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func password(owner uint, i int) string { return fmt.Sprintf("pw-%d-%d", owner, i) }

// checkAll reads every credential through db and compares it with what
// was written.
func checkAll(t testing.TB, db *gorm.DB, want int) {
	t.Helper()
	var got []Credential
	must(t, db.Order("id").Find(&got).Error)
	if len(got) != want {
		t.Fatalf("read %d credentials, want %d", len(got), want)
	}
	for _, c := range got {
		if c.Password != c.Facility {
			t.Fatalf("credential %d of owner %d: %q, want %q", c.ID, c.UserID, c.Password, c.Facility)
		}
	}
}

// A deployment moves its master key from the environment into a KMS: the
// KMS key becomes primary with the Fernet key as previous, rotate moves
// every DEK under the KMS key, and the Fernet key can go.
func TestMigrateFernetToKMS(t *testing.T) {
	ctx := context.Background()
	db := testdb.Open(t, testdb.SQLite)
	fernetText, _ := dek.GenerateKey()
	envOnly, err := kms.ParseKeyring(ctx, fernetText)
	must(t, err)
	use(t, db, envOnly)
	for u := uint(1); u <= 20; u++ {
		for i := 0; i < 3; i++ {
			pw := password(u, i)
			must(t, db.Create(&Credential{UserID: u, Facility: pw, Password: pw}).Error)
		}
	}

	keeper, url := openLocal(t)
	mixed, err := kms.ParseKeyring(ctx, url, fernetText)
	must(t, err)
	var stored [][]byte
	must(t, db.Model(&Profile{}).Order("id").Pluck("encrypted_dek", &stored).Error)
	for i, enc := range stored {
		if _, idx, err := mixed.Open(ctx, enc); err != nil || idx != 1 {
			t.Fatalf("#%d: DEK under the Fernet key through the mixed keyring: idx %d, %v", i, idx, err)
		}
	}

	// An instance on the mixed keyring reads the old data and makes new
	// DEKs in the KMS.
	app := testdb.Reopen(t, db)
	use(t, app, mixed)
	checkAll(t, app, 60)
	for u := uint(21); u <= 30; u++ {
		pw := password(u, 0)
		must(t, app.Create(&Credential{UserID: u, Facility: pw, Password: pw}).Error)
	}

	res, err := rotate.Run(ctx, db, rotate.Options{Keys: mixed, Profile: &Profile{}})
	must(t, err)
	if res.Rotated != 20 || res.AlreadyCurrent != 10 || res.Failed != 0 {
		t.Fatalf("rotate: %+v; want 20 rotated, 10 already under the KMS key", res)
	}

	kmsOnly, err := dek.NewKeyring(keeper)
	must(t, err)
	st, err := rotate.Status(ctx, db, rotate.Options{Keys: kmsOnly, Profile: &Profile{}})
	must(t, err)
	if st.Keys[0].Count != 30 || st.Undecryptable != 0 || st.Keys[0].ID != keeper.ID() {
		t.Fatalf("status under the KMS key alone: %+v", st)
	}
	stored = nil
	must(t, db.Model(&Profile{}).Order("id").Pluck("encrypted_dek", &stored).Error)
	for i, enc := range stored {
		if _, _, err := kmsOnly.Open(ctx, enc); err != nil {
			t.Fatalf("#%d: DEK does not open under the KMS key alone: %v", i, err)
		}
	}
	after := testdb.Reopen(t, db)
	use(t, after, kmsOnly)
	checkAll(t, after, 70)

	// The Fernet key alone opens nothing any more: an instance left on it
	// is refused at start.
	stale := testdb.Reopen(t, db)
	if err := stale.Use(envelope.New(envelope.Config{Keys: envOnly, Profile: &Profile{}})); !errors.Is(err, envelope.ErrDecrypt) {
		t.Fatalf("instance on the retired key: %v, want ErrDecrypt", err)
	}
}

// countingKey counts the decryptions that reach a master key: for a
// Keeper, the requests its KMS sees.
type countingKey struct {
	dek.Encrypter
	encrypts, decrypts atomic.Int64
}

func (c *countingKey) Encrypt(ctx context.Context, pt []byte) ([]byte, error) {
	c.encrypts.Add(1)
	return c.Encrypter.Encrypt(ctx, pt)
}

func (c *countingKey) Decrypt(ctx context.Context, ct []byte) ([]byte, error) {
	c.decrypts.Add(1)
	return c.Encrypter.Decrypt(ctx, ct)
}

func (c *countingKey) ID() string { return dek.KeyID(c.Encrypter) }

// KMS calls scale with the distinct owners a cache lifetime sees, not with
// rows or statements.
func TestKMSCallsPerOwner(t *testing.T) {
	const rows, owners, readers = 10000, 100, 16
	keeper, _ := openLocal(t)
	key := &countingKey{Encrypter: keeper}
	keys, err := dek.NewKeyring(key)
	must(t, err)

	db := testdb.Open(t, testdb.SQLite)
	use(t, db, keys)
	all := make([]Credential, rows)
	for i := range all {
		u := uint(1 + i%owners)
		pw := password(u, i)
		all[i] = Credential{UserID: u, Facility: pw, Password: pw}
	}
	must(t, db.CreateInBatches(&all, 1000).Error)

	t.Run("ColdThenWarm", func(t *testing.T) {
		app := testdb.Reopen(t, db)
		use(t, app, keys)
		key.decrypts.Store(0) // Initialize opens one stored DEK to check the keys
		checkAll(t, app, rows)
		if n := key.decrypts.Load(); n != owners {
			t.Fatalf("cold Find of %d rows over %d owners: %d KMS decrypts, want %d", rows, owners, n, owners)
		}
		t.Logf("cold Find, %d rows over %d owners: %d KMS decrypts", rows, owners, key.decrypts.Load())
		key.decrypts.Store(0)
		checkAll(t, app, rows)
		if n := key.decrypts.Load(); n != 0 {
			t.Fatalf("warm Find: %d KMS decrypts, want 0", n)
		}
	})

	t.Run("NewOwners", func(t *testing.T) {
		app := testdb.Reopen(t, db)
		use(t, app, keys)
		key.encrypts.Store(0)
		key.decrypts.Store(0)
		for u := uint(owners + 1); u <= owners+10; u++ {
			for i := 0; i < 5; i++ {
				pw := password(u, i)
				must(t, app.Create(&Credential{UserID: u, Facility: pw, Password: pw}).Error)
			}
		}
		e, d := key.encrypts.Load(), key.decrypts.Load()
		t.Logf("50 writes for 10 new owners: %d KMS encrypts, %d decrypts", e, d)
		// A DEK the plugin seals is remembered by its stored bytes: reading
		// it back needs no KMS call.
		if e != 10 || d != 0 {
			t.Fatalf("50 writes for 10 new owners: %d KMS encrypts, %d decrypts; want 10 and 0", e, d)
		}
	})

	t.Run("ConcurrentColdReads", func(t *testing.T) {
		app := testdb.Reopen(t, db)
		use(t, app, keys)
		key.decrypts.Store(0)
		start := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, readers)
		for g := 0; g < readers; g++ {
			wg.Go(func() {
				<-start
				var got []Credential
				if err := app.Where("user_id = ?", 7).Find(&got).Error; err != nil {
					errs <- err
					return
				}
				if len(got) != rows/owners || got[0].Password != got[0].Facility {
					errs <- fmt.Errorf("reader %d: %d rows", g, len(got))
				}
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if n := key.decrypts.Load(); n != 1 {
			t.Fatalf("%d concurrent cold reads of one owner: %d KMS decrypts, want 1", readers, n)
		}
		t.Logf("%d concurrent cold reads of one owner: %d KMS decrypt", readers, key.decrypts.Load())
	})
}
