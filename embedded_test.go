package envelope_test

import (
	"fmt"
	"testing"

	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

type Ownership struct {
	OwnerID int32 `envelope:"owner"`
}

type EmbeddedSecrets struct {
	Password string  `gorm:"serializer:envelope"`
	Note     *string `gorm:"serializer:envelope"`
}

type ExtraSecrets struct {
	Blob []byte `gorm:"serializer:envelope"`
}

// EmbeddedRow keeps its owner and encrypted fields in embedded structs, one
// of them behind a pointer.
type EmbeddedRow struct {
	ID uint
	Ownership
	Label string
	EmbeddedSecrets
	Extra *ExtraSecrets `gorm:"embedded"`
}

// Owner and encrypted fields in embedded structs, by value or behind a
// pointer, round-trip through Create, Find into []T and []*T (large
// enough for the pipeline and the parallel pass) and First.
func TestEmbeddedFields(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&EmbeddedRow{}))
		rows := make([]EmbeddedRow, 700)
		for i := range rows {
			rows[i] = EmbeddedRow{Ownership: Ownership{OwnerID: int32(1 + i%9)}, Label: fmt.Sprint(i)}
			rows[i].Password = fmt.Sprint("pw-", i)
			if i%2 == 0 {
				rows[i].Note = ptr(fmt.Sprint("note-", i))
			}
			if i%3 != 0 {
				rows[i].Extra = &ExtraSecrets{Blob: []byte(fmt.Sprint("blob-", i))}
			}
		}
		must(t, db.CreateInBatches(&rows, 300).Error)
		for _, r := range []uint{rows[0].ID, rows[1].ID, rows[699].ID} {
			tok, ok := rawColumn(t, db, "embedded_rows", "password", r)
			if !ok || len(tok) < 40 || !sealedText(tok) {
				t.Fatalf("row %d: password stored as %q", r, tok)
			}
		}
		check := func(i int, got EmbeddedRow) {
			t.Helper()
			if got.OwnerID != int32(1+i%9) || got.Password != fmt.Sprint("pw-", i) {
				t.Fatalf("row %d: owner %d password %q", i, got.OwnerID, got.Password)
			}
			if (i%2 == 0) != (got.Note != nil) || (got.Note != nil && *got.Note != fmt.Sprint("note-", i)) {
				t.Fatalf("row %d: note %v", i, got.Note)
			}
			var blob []byte
			if got.Extra != nil {
				blob = got.Extra.Blob
			}
			if want := fmt.Sprint("blob-", i); (i%3 != 0) != (string(blob) == want) {
				t.Fatalf("row %d: blob %q", i, blob)
			}
		}
		var vals []EmbeddedRow
		must(t, db.Order("id").Find(&vals).Error)
		var ptrs []*EmbeddedRow
		must(t, db.Order("id").Find(&ptrs).Error)
		if len(vals) != 700 || len(ptrs) != 700 {
			t.Fatalf("%d and %d rows", len(vals), len(ptrs))
		}
		for i := range vals {
			check(i, vals[i])
			check(i, *ptrs[i])
		}
		var one EmbeddedRow
		must(t, db.First(&one, rows[5].ID).Error)
		check(5, one)
	})
}
