package envelope_test

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// A differential test of row binding: random writes to BoundNote (values
// bound to their row) and to a plaintext shadow, compared after every
// step. A write the plugin accepts must leave every row readable with the
// shadow's values; a write it refuses must leave the stored bytes as they
// were. ENVELOPE_BOUND_DIFF_OPS sets the number of steps (default 300).

type noteShadow struct {
	owner       uint
	slug, title string
	body        *string
}

func TestBoundRowDifferential(t *testing.T) {
	ops := 300
	if s := os.Getenv("ENVELOPE_BOUND_DIFF_OPS"); s != "" {
		n, err := strconv.Atoi(s)
		must(t, err)
		ops = n
	}
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setupBound(t, db)
		mysql := testdb.DialectOf(db) == testdb.MySQL
		rng := rand.New(rand.NewPCG(1, uint64(len(testdb.DialectOf(db)))))
		shadow := map[string]noteShadow{}
		next := 0
		pick := func() (string, bool) {
			if len(shadow) == 0 {
				return "", false
			}
			ids := slices.Sorted(maps.Keys(shadow))
			return ids[rng.IntN(len(ids))], true
		}
		val := func(p string) string { return fmt.Sprintf("%s-%d", p, rng.IntN(1000)) }
		for step := range ops {
			before := snapshot(t, db)
			var name string
			var err error
			wantRefused := false
			apply := func() {} // the shadow's change, if the write is accepted
			id, have := pick()
			switch op := rng.IntN(9); {
			case op == 0 || !have:
				next++
				nid := fmt.Sprintf("n%03d", next)
				n := BoundNote{ID: nid, UserID: uint(1 + rng.IntN(3)), Slug: nid, Title: val("t")}
				if rng.IntN(2) == 0 {
					n.Body = ptr(val("b"))
				}
				name, err = "Create "+nid, db.Create(&n).Error
				apply = func() { shadow[nid] = noteShadow{n.UserID, n.Slug, n.Title, n.Body} }
			case op == 1:
				s := shadow[id]
				title := val("t")
				name, err = "Update title of "+id, db.Model(&BoundNote{ID: id, UserID: s.owner}).Update("title", title).Error
				apply = func() { s.title = title; shadow[id] = s }
			case op == 2:
				s := shadow[id]
				body := val("b")
				name, err = "Updates map body of "+id, db.Model(&BoundNote{ID: id, UserID: s.owner}).Updates(map[string]any{"body": body}).Error
				apply = func() { s.body = &body; shadow[id] = s }
			case op == 3:
				s := shadow[id]
				s.title, s.body = val("t"), ptr(val("b"))
				n := BoundNote{ID: id, UserID: s.owner, Slug: s.slug, Title: s.title, Body: s.body}
				name, err = "Save "+id, db.Save(&n).Error
				apply = func() { shadow[id] = s }
			case op == 4:
				// A change of id: accepted only with every value rewritten.
				s := shadow[id]
				next++
				nid := fmt.Sprintf("n%03d", next)
				set := map[string]any{"id": nid}
				all := rng.IntN(2) == 0
				if all {
					s.title, s.body = val("t"), ptr(val("b"))
					set["title"], set["body"] = s.title, *s.body
				} else {
					set["title"] = val("t")
				}
				wantRefused = !all
				name, err = "change id of "+id, db.Model(&BoundNote{ID: id, UserID: s.owner}).Updates(set).Error
				apply = func() { delete(shadow, id); shadow[nid] = s }
			case op == 5:
				s := shadow[id]
				name, err = "Update by condition", db.Model(&BoundNote{UserID: s.owner}).Where("slug = ?", s.slug).Update("title", val("t")).Error
				wantRefused = true
			case op == 6:
				s := shadow[id]
				title := val("t")
				n := BoundNote{ID: id, UserID: s.owner, Slug: s.slug, Title: title, Body: s.body}
				name = "upsert on id " + id
				err = db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, UpdateAll: true}).Create(&n).Error
				wantRefused = mysql // a second unique key (slug) on MySQL
				apply = func() { s.title = title; shadow[id] = s }
			case op == 7:
				s := shadow[id]
				n := BoundNote{ID: "fresh-" + id, UserID: s.owner, Slug: s.slug, Title: val("t")}
				name = "upsert on slug over " + id
				err = db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "slug"}}, UpdateAll: true}).Create(&n).Error
				wantRefused = true
			case op == 8:
				s := shadow[id]
				name, err = "Delete "+id, db.Delete(&BoundNote{ID: id, UserID: s.owner}).Error
				apply = func() { delete(shadow, id) }
			}
			switch {
			case wantRefused:
				if !errors.Is(err, envelope.ErrUnsafe) {
					t.Fatalf("step %d, %s: %v, want ErrUnsafe", step, name, err)
				}
				if after := snapshot(t, db); after != before {
					t.Fatalf("step %d, %s: refused, but the table changed", step, name)
				}
			case err != nil:
				t.Fatalf("step %d, %s: %v", step, name, err)
			default:
				apply()
			}
			var got []BoundNote
			if err := db.Order("id").Find(&got).Error; err != nil {
				t.Fatalf("step %d, after %s: read: %v", step, name, err)
			}
			if len(got) != len(shadow) {
				t.Fatalf("step %d, after %s: %d rows, shadow has %d", step, name, len(got), len(shadow))
			}
			for _, n := range got {
				s, ok := shadow[n.ID]
				if !ok || n.UserID != s.owner || n.Title != s.title || (n.Body == nil) != (s.body == nil) || n.Body != nil && *n.Body != *s.body {
					t.Fatalf("step %d, after %s: row %s reads %+v, shadow %+v", step, name, n.ID, n, s)
				}
			}
		}
	})
}
