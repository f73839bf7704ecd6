package envelope_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// rxBefore is the table before it had an index; rxUser after.
type rxBefore struct {
	ID    uint   `envelope:"owner"`
	Email string `gorm:"serializer:envelope"`
}

func (rxBefore) TableName() string { return "rx_users" }

type rxUser struct {
	ID       uint    `envelope:"owner"`
	Email    string  `gorm:"serializer:envelope"`
	EmailIdx *string `gorm:"size:80;index" envelope:"index:Email;scope:global;bits:12;transform:lower"`
	Owned    *string `gorm:"serializer:envelope"`
	OwnedIdx *string `gorm:"size:80" envelope:"index:Owned"`
}

func (rxUser) TableName() string { return "rx_users" }

func rxEmails(t *testing.T, db *gorm.DB, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		var got []rxUser
		must(t, db.Where(envelope.Match("Email", fmt.Sprintf("USER%d@example.org", i))).Find(&got).Error)
		if len(got) != 1 || got[0].Email != fmt.Sprintf("user%d@example.org", i) {
			t.Fatalf("email %d: %+v", i, got)
		}
	}
}

func indexVersions(t *testing.T, db *gorm.DB) map[string]int {
	t.Helper()
	var idx []string
	must(t, db.Table("rx_users").Pluck("COALESCE(email_idx, '')", &idx).Error)
	out := map[string]int{}
	for _, s := range idx {
		v, _, _ := strings.Cut(s, ":")
		out[v]++
	}
	return out
}

func TestReindexFillsAndRotates(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		p := setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&rxBefore{}))
		const n = 60
		for i := 0; i < n; i++ {
			must(t, db.Create(&rxBefore{Email: fmt.Sprintf("user%d@example.org", i)}).Error)
		}
		must(t, db.AutoMigrate(&rxUser{}))
		must(t, db.Model(&rxUser{ID: 3}).Update("Owned", "three").Error)

		// Filling: before, no old row matches; after, every one.
		if err := db.Where(envelope.Match("Email", "user1@example.org")).First(&rxUser{}).Error; !errors.Is(err, gorm.ErrRecordNotFound) {
			t.Fatalf("unfilled index: %v", err)
		}
		must(t, db.Exec("DELETE FROM envelope_index_keys").Error) // made by the Update above
		envelope.ForgetIndexKeysForTest(p)
		dry, err := envelope.Reindex(context.Background(), db, &rxUser{}, envelope.ReindexOptions{BatchSize: 16, DryRun: true})
		must(t, err)
		var keyRows int64
		must(t, db.Table("envelope_index_keys").Count(&keyRows).Error)
		if keyRows != 0 {
			t.Fatalf("a dry run created %d index keys", keyRows)
		}
		if dry.Updated != n || indexVersions(t, db)[""] != n {
			t.Fatalf("dry run: %+v, stored %v", dry, indexVersions(t, db))
		}
		res, err := envelope.Reindex(context.Background(), db, &rxUser{}, envelope.ReindexOptions{BatchSize: 16})
		must(t, err)
		if res.Scanned != n || res.Updated != n {
			t.Fatalf("fill: %+v", res)
		}
		rxEmails(t, db, n)
		var owned rxUser
		must(t, db.Where(envelope.MatchOwner(3, "Owned", "three")).First(&owned).Error)
		again, err := envelope.Reindex(context.Background(), db, &rxUser{}, envelope.ReindexOptions{})
		must(t, err)
		if again.Updated != 0 {
			t.Fatalf("second fill rewrote %d rows", again.Updated)
		}

		// Rotation, stopped after the first batch: every row still matches.
		ctx, cancel := context.WithCancel(context.Background())
		_, err = envelope.Reindex(ctx, db, &rxUser{}, envelope.ReindexOptions{BatchSize: 16, Rotate: true, Settle: 1,
			Progress: func(envelope.ReindexProgress) { cancel() }})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("interrupted rotation: %v", err)
		}
		if v := indexVersions(t, db); v["1"] == 0 || v["2"] == 0 {
			t.Fatalf("after the interruption: %v", v)
		}
		rxEmails(t, db, n)
		// A write during the rotation uses the new version.
		must(t, db.Model(&rxUser{ID: 1}).Update("Email", "user0@example.org").Error)
		// Run again: it finishes the rotation and retires version 1.
		res, err = envelope.Reindex(context.Background(), db, &rxUser{}, envelope.ReindexOptions{BatchSize: 16, Rotate: true, Settle: 1})
		must(t, err)
		if res.Retired != 1 {
			t.Fatalf("resumed rotation: %+v", res)
		}
		if v := indexVersions(t, db); v["2"] != n {
			t.Fatalf("after the rotation: %v", v)
		}
		rxEmails(t, db, n)
		must(t, db.Where(envelope.MatchOwner(3, "Owned", "three")).First(&owned).Error)
	})
}

// Reindex's errors name a model whose type has no name (a struct made at
// run time, as the envelope command makes) by its table.
func TestReindexNamesUnnamedModelByTable(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	setup(t, db, newKeys(t))
	typ := reflect.StructOf([]reflect.StructField{
		{Name: "ID", Type: reflect.TypeFor[int64](), Tag: `gorm:"primaryKey" envelope:"owner"`},
		{Name: "Email", Type: reflect.TypeFor[string](), Tag: `gorm:"serializer:envelope"`},
		{Name: "EmailIdx", Type: reflect.TypeFor[*string](), Tag: `envelope:"index:Email;scope:global;name:rx_missing.email"`},
	})
	_, err := envelope.Reindex(context.Background(), db.Table("rx_missing"), reflect.New(typ).Interface(), envelope.ReindexOptions{})
	if err == nil || !strings.HasPrefix(err.Error(), "envelope: reindex rx_missing: ") {
		t.Fatalf("got %v, want an error naming rx_missing", err)
	}
}
