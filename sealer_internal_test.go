package envelope

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm/schema"
)

// Whatever order the serializer asks in, and with workers sealing at the
// same time, every value is sealed once, under its own cipher, into a
// token that opens to it; a value that already is a token of its owner is
// kept.
func TestSealerOrderAndResult(t *testing.T) {
	for _, format := range []Format{FormatFernet, FormatBound} {
		t.Run(format.String(), func(t *testing.T) { testSealer(t, format) })
	}
}

func testSealer(t *testing.T, format Format) {
	var ciphers []*ownerKey
	for range 3 {
		d, err := dek.NewDEK()
		if err != nil {
			t.Fatal(err)
		}
		ciphers = append(ciphers, keystore.NewKey(d))
	}
	m := &modelMeta{schema: &schema.Schema{Table: "creds"}, table: "creds", bound: format == FormatBound}
	f := &schema.Field{DBName: "secret"}
	ef := &encField{f: f}
	existing, err := m.sealOne(ciphers[1], ef, int64(7), "", []byte("already"))
	if err != nil {
		t.Fatal(err)
	}
	open := func(k *ownerKey, tok string) ([]byte, error) {
		return m.openInto(nil, k, ef, "7", "", tok, isBoundValue(tok))
	}
	for _, n := range []int{1, 63, 64, 65, 700, 2000} {
		items := make([]item, n)
		cs := make([]*ownerKey, n)
		for i := range items {
			items[i] = item{m: m, f: f, enc: ef, owner: int64(7), otext: "7", plain: fmt.Sprint("value-", i)}
			cs[i] = ciphers[i%3]
		}
		if n > 5 {
			items[4].plain, cs[4] = string(existing), ciphers[1]
		}
		s, err := newSealer(items, cs, time.Now().Unix())
		if err != nil {
			t.Fatal(err)
		}
		s.start()
		order := rand.Perm(n)
		var wg sync.WaitGroup
		toks := make([]string, n)
		for g := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k, i := range order {
					if k%3 != g {
						continue
					}
					tok, err := s.token(i)
					if err != nil {
						t.Error(err)
						return
					}
					toks[i] = tok
				}
			}()
		}
		wg.Wait()
		if err := s.wait(); err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for i, tok := range toks {
			want := items[i].plain
			if n > 5 && i == 4 {
				want = "already"
			}
			msg, err := open(cs[i], tok)
			if err != nil || string(msg) != want {
				t.Fatalf("n=%d value %d: %q, %v", n, i, msg, err)
			}
			if seen[tok] {
				t.Fatalf("n=%d value %d: token repeated", n, i)
			}
			seen[tok] = true
		}
		if n > 5 && toks[4] != string(existing) {
			t.Fatalf("n=%d: an existing token of the owner was sealed again", n)
		}
		if format == FormatBound && !isBoundValue(toks[0]) {
			t.Fatalf("n=%d: %q is no bound value", n, toks[0])
		}
	}
}
