package envelope

import (
	"crypto/rand"
	"fmt"
	"runtime"
	"sync/atomic"

	"github.com/gorm-envelope/envelope/internal/bound"
	"github.com/gorm-envelope/envelope/internal/token"
)

// sealChunk is the number of values sealed as one unit of work.
const sealChunk = 64

// sealer encrypts the values of one write statement, in chunks. For a
// large statement, worker goroutines take the chunks in order as soon as
// the before-write callback has checked every owner's key, while GORM goes
// on building the statement; the serializer, asked for a value whose chunk
// is not done yet, seals that chunk itself or waits for the worker sealing
// it. Either way each value is sealed exactly once.
type sealer struct {
	items   []item
	ciphers []*ownerKey
	toks    []string
	ivs     []byte
	ts      int64
	state   []atomic.Int32 // per chunk: 0 to do, 1 being sealed, 2 done
	next    atomic.Int64   // the next chunk a worker takes
	err     atomic.Pointer[error]
}

const (
	chunkTodo int32 = iota
	chunkSealing
	chunkDone
)

// newSealer prepares the sealing of items, each under its cipher, with
// timestamp ts. The IVs are read from crypto/rand at once.
func newSealer(items []item, ciphers []*ownerKey, ts int64) (*sealer, error) {
	s := &sealer{
		items:   items,
		ciphers: ciphers,
		toks:    make([]string, len(items)),
		ts:      ts,
		state:   make([]atomic.Int32, (len(items)+sealChunk-1)/sealChunk),
	}
	// Fernet tokens take their IVs from here; bound values draw their
	// nonces inside Go's GCM.
	for i := range items {
		if items[i].m == nil || !items[i].m.bound {
			s.ivs = make([]byte, len(items)*token.IVSize)
			if _, err := rand.Read(s.ivs); err != nil {
				return nil, fmt.Errorf("envelope: encrypt: %w", err)
			}
			break
		}
	}
	return s, nil
}

// start seals a large statement's values on GOMAXPROCS-1 goroutines in the
// background; a small one, or any on one core, is sealed as its values are
// asked for (like parallel, which runs inline below two cores).
func (s *sealer) start() {
	workers := runtime.GOMAXPROCS(0) - 1
	if len(s.items) < parallelMin || workers < 1 {
		return
	}
	for range workers {
		go func() {
			for {
				c := int(s.next.Add(1) - 1)
				if c >= len(s.state) {
					return
				}
				if s.state[c].CompareAndSwap(chunkTodo, chunkSealing) {
					s.seal(c)
				}
			}
		}()
	}
}

// token returns the token of items[i], sealing its chunk if nobody has
// started it, else waiting for it.
func (s *sealer) token(i int) (string, error) {
	if err := s.done(i / sealChunk); err != nil {
		return "", err
	}
	return s.toks[i], nil
}

// wait returns once every value is sealed.
func (s *sealer) wait() error {
	for c := range s.state {
		if err := s.done(c); err != nil {
			return err
		}
	}
	return nil
}

func (s *sealer) done(c int) error {
	for {
		switch s.state[c].Load() {
		case chunkDone:
			if e := s.err.Load(); e != nil {
				return *e
			}
			return nil
		case chunkTodo:
			if s.state[c].CompareAndSwap(chunkTodo, chunkSealing) {
				s.seal(c)
			}
		default:
			// A worker is sealing it: seal a later chunk meanwhile, or
			// yield if none is left.
			if !s.help(c + 1) {
				runtime.Gosched()
			}
		}
	}
}

// help seals the first chunk from c on that nobody has started, and
// reports whether there was one.
func (s *sealer) help(c int) bool {
	for ; c < len(s.state); c++ {
		if s.state[c].Load() == chunkTodo && s.state[c].CompareAndSwap(chunkTodo, chunkSealing) {
			s.seal(c)
			return true
		}
	}
	return false
}

// seal encrypts chunk c into one buffer sized for its values, then marks
// it done. A value that already is one that opens under its owner's DEK
// where it is written is kept as is: a ciphertext read by a path without
// callbacks (Raw().Scan, ScanRows) and saved again is stored unchanged.
func (s *sealer) seal(c int) {
	defer s.state[c].Store(chunkDone)
	lo, hi := c*sealChunk, min((c+1)*sealChunk, len(s.items))
	size := 0
	for i := lo; i < hi; i++ {
		if s.items[i].m.bound {
			size += bound.TextLen(len(s.items[i].plain) + bound.Overhead)
		} else {
			size += token.EncryptedLen(len(s.items[i].plain))
		}
	}
	buf := make([]byte, 0, size) // never grows: the values can share it
	for i := lo; i < hi; i++ {
		it := &s.items[i]
		plain := it.plain
		if it.m.opens(s.ciphers[i], it.enc, it.otext, it.rowID, plain) {
			s.toks[i] = plain
			continue
		}
		start := len(buf)
		var err error
		if it.m.bound {
			ctx := it.m.context(it.enc, it.otext, it.rowID)
			buf, err = s.ciphers[i].Bound().SealText(buf, stringBytes(plain), &ctx)
		} else {
			iv := (*[token.IVSize]byte)(s.ivs[i*token.IVSize:])
			buf, err = s.ciphers[i].C.AppendEncryptIV(buf, stringBytes(plain), s.ts, iv)
			clear(iv[:])
		}
		if err != nil {
			err = fmt.Errorf("envelope: encrypt: %w", err)
			s.err.CompareAndSwap(nil, &err)
			return
		}
		s.toks[i] = bytesString(buf[start:])
	}
}
