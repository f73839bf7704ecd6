package envelope

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/token"
)

// Whatever order the serializer asks in, and with workers sealing at the
// same time, every value is sealed once, under its own cipher, into a
// token that opens to it; a value that already is a token of its owner is
// kept.
func TestSealerOrderAndResult(t *testing.T) {
	var ciphers []*token.Cipher
	for range 3 {
		d, err := dek.NewDEK()
		if err != nil {
			t.Fatal(err)
		}
		ciphers = append(ciphers, token.New(d))
	}
	existing, err := ciphers[1].Encrypt([]byte("already"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, 63, 64, 65, 700, 2000} {
		items := make([]item, n)
		cs := make([]*token.Cipher, n)
		for i := range items {
			items[i] = item{plain: fmt.Sprint("value-", i)}
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
			msg, err := cs[i].Decrypt([]byte(tok))
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
	}
}
