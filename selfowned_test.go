package envelope_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// User is a self-owned model: its own auto-increment id is the owner.
type User struct {
	ID    uint    `envelope:"owner"`
	Name  string  `gorm:"size:64"`
	Email string  `gorm:"serializer:envelope"`
	Phone *string `gorm:"serializer:envelope"`
}

// checkUsers reads every user through the plugin and checks each against
// want (id -> email), and that the stored values are tokens.
func checkUsers(t *testing.T, db *gorm.DB, want map[uint]string) {
	t.Helper()
	var us []User
	must(t, db.Order("id").Find(&us).Error)
	if len(us) != len(want) {
		t.Fatalf("%d users, want %d: %+v", len(us), len(want), us)
	}
	for _, u := range us {
		if u.Email != want[u.ID] {
			t.Errorf("user %d: email %q, want %q", u.ID, u.Email, want[u.ID])
		}
		raw, _ := rawColumn(t, db, "users", "email", u.ID)
		if !sealedText(raw) {
			t.Errorf("user %d: stored %q", u.ID, raw)
		}
	}
}

// Rows owned by their own auto-increment id work on every create path,
// although the id is only known after the insert.
func TestSelfOwnedCreatePaths(t *testing.T) {
	for _, skip := range []bool{false, true} {
		t.Run(fmt.Sprint("SkipDefaultTransaction=", skip), func(t *testing.T) {
			testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
				setup(t, db, newKeys(t))
				must(t, db.AutoMigrate(&User{}))
				want := map[uint]string{}
				u := &User{Name: "create", Email: "create@example.org", Phone: ptr("+1 555")}
				must(t, db.Create(u).Error)
				if u.Email != "create@example.org" || *u.Phone != "+1 555" {
					t.Fatalf("caller's struct changed: %+v", u)
				}
				want[u.ID] = u.Email
				batch := make([]User, 7)
				for i := range batch {
					batch[i] = User{Name: "batch", Email: fmt.Sprintf("batch-%d@example.org", i)}
				}
				must(t, db.CreateInBatches(&batch, 3).Error)
				for _, b := range batch {
					want[b.ID] = b.Email
				}
				small := []*User{{Email: "s1@example.org"}, {Email: "s2@example.org"}}
				must(t, db.Create(&small).Error)
				for _, b := range small {
					want[b.ID] = b.Email
				}
				s := &User{Name: "save", Email: "save@example.org"}
				must(t, db.Save(s).Error)
				want[s.ID] = s.Email
				var f User
				must(t, db.Where(User{Name: "first-or-create"}).Attrs(User{Email: "foc@example.org"}).FirstOrCreate(&f).Error)
				want[f.ID] = f.Email
				must(t, db.Transaction(func(tx *gorm.DB) error {
					x := &User{Email: "tx@example.org"}
					if err := tx.Create(x).Error; err != nil {
						return err
					}
					want[x.ID] = x.Email
					// Read back inside the transaction.
					var y User
					if err := tx.First(&y, x.ID).Error; err != nil {
						return err
					}
					if y.Email != x.Email {
						return fmt.Errorf("read back %q", y.Email)
					}
					return nil
				}))
				checkUsers(t, db, want)
				// Each user has a DEK of its own.
				var n int64
				must(t, db.Model(&Profile{}).Where("user_id IN ?", keysOf(want)).Count(&n).Error)
				if int(n) != len(want) {
					t.Fatalf("%d profiles for %d users", n, len(want))
				}
				// Updates of a loaded self-owned row.
				must(t, db.Model(u).Update("email", "changed@example.org").Error)
				want[u.ID] = "changed@example.org"
				checkUsers(t, db, want)
			}, testdb.Options{SkipDefaultTransaction: skip})
		})
	}
}

func keysOf(m map[uint]string) []uint {
	out := make([]uint, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// If sealing after the insert fails, the insert is undone: no row is left
// without its tokens, in GORM's transaction, the plugin's own, or a
// savepoint of the caller's transaction.
func TestSelfOwnedNothingHalfWritten(t *testing.T) {
	for _, skip := range []bool{false, true} {
		t.Run(fmt.Sprint("SkipDefaultTransaction=", skip), func(t *testing.T) {
			testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
				setup(t, db, newKeys(t))
				must(t, db.AutoMigrate(&User{}))
				first := &User{Email: "first@example.org"}
				must(t, db.Create(first).Error)
				// In the caller's transaction, a savepoint undoes the insert
				// and the transaction goes on. A hook that fails after the
				// insert stands for any later step failing.
				var kept uint
				must(t, db.Transaction(func(tx *gorm.DB) error {
					k := &HookUser{Email: "kept@example.org"}
					if err := tx.Create(k).Error; err != nil {
						return err
					}
					kept = k.ID
					if err := tx.Create(&HookUser{Email: "fail@example.org"}).Error; err == nil || !strings.Contains(err.Error(), "hook refused") {
						return fmt.Errorf("got %v, want the hook's error", err)
					}
					return nil
				}))
				checkUsers(t, db, map[uint]string{first.ID: first.Email, kept: "kept@example.org"})
				// Outside a transaction too.
				if err := db.Create(&HookUser{Email: "fail@example.org"}).Error; err == nil {
					t.Fatal("hook did not refuse")
				}
				checkUsers(t, db, map[uint]string{first.ID: first.Email, kept: "kept@example.org"})

				// Sealing itself fails: the next id's DEK is shredded before
				// its user exists. (Last: SQLite hands the id out again.)
				var maxID uint
				must(t, db.Raw("SELECT MAX(id) FROM users").Scan(&maxID).Error)
				next := maxID + 1
				switch testdb.DialectOf(db) {
				case testdb.Postgres:
					must(t, db.Raw("SELECT last_value + 1 FROM users_id_seq").Scan(&next).Error)
				case testdb.MySQL: // a rolled-back insert still used its id
					must(t, db.Raw("SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'users'").Scan(&next).Error)
				}
				must(t, envelope.Shred(db, next))
				err := db.Create(&User{Email: "lost@example.org"}).Error
				if !errors.Is(err, envelope.ErrShredded) {
					t.Fatalf("got %v, want ErrShredded", err)
				}
				checkUsers(t, db, map[uint]string{first.ID: first.Email, kept: "kept@example.org"})
			}, testdb.Options{SkipDefaultTransaction: skip})
		})
	}
}

// A self-owned row with its id set by the app is an ordinary write; an
// upsert of a row whose id the insert assigns is refused unless no
// conflict is possible.
func TestSelfOwnedExplicitID(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&User{}))
		must(t, db.Create(&User{ID: 100, Email: "hundred@example.org"}).Error)
		checkUsers(t, db, map[uint]string{100: "hundred@example.org"})
		// An upsert on the id of a row that leaves it to the database
		// cannot conflict: it is an insert.
		u := &User{Email: "upsert@example.org"}
		must(t, db.Clauses(clauseUpdateAll()).Create(u).Error)
		// One that can conflict on another key cannot be sealed. (MySQL
		// ignores the target, and User declares no other unique key.)
		err := db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "name"}}, DoNothing: true}).Create(&User{Name: "n", Email: "x@example.org"}).Error
		if testdb.DialectOf(db) != testdb.MySQL && !errors.Is(err, envelope.ErrUnsafe) {
			t.Fatalf("upsert on name: got %v, want ErrUnsafe", err)
		}
		if testdb.DialectOf(db) != testdb.MySQL {
			checkUsers(t, db, map[uint]string{100: "hundred@example.org", u.ID: u.Email})
		}
	})
}

func clauseUpdateAll() clause.OnConflict { return clause.OnConflict{UpdateAll: true} }

// HookUser is User with a hook that fails after the insert.
type HookUser struct {
	ID    uint    `envelope:"owner"`
	Name  string  `gorm:"size:64"`
	Email string  `gorm:"serializer:envelope"`
	Phone *string `gorm:"serializer:envelope"`
}

func (HookUser) TableName() string { return "users" }

func (u *HookUser) AfterCreate(*gorm.DB) error {
	if u.Email == "fail@example.org" {
		return errors.New("hook refused")
	}
	return nil
}

// An update of a self-owned row given without its id has no owner: it is
// refused, and the stored value stays (it was once taken for an insert's
// row, to be sealed after it, and stored NULL).
func TestSelfOwnedUpdateWithoutIDRefused(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&User{}))
		u := &User{Name: "ada", Email: "ada@example.org"}
		must(t, db.Create(u).Error)
		err := db.Model(&User{}).Where("id = ?", u.ID).Updates(&User{Email: "new@example.org"}).Error
		if !errors.Is(err, envelope.ErrNoOwner) {
			t.Fatalf("update without the id: %v, want ErrNoOwner", err)
		}
		checkUsers(t, db, map[uint]string{u.ID: "ada@example.org"})
	})
}
