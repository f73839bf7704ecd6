package cache

import (
	"sync"
	"testing"
	"time"
)

func TestLRUEviction(t *testing.T) {
	c := New[int, string](2, time.Hour)
	c.Put(1, "a")
	c.Put(2, "b")
	if _, ok := c.Get(1); !ok { // 1 is now the most recent
		t.Fatal("1 missing")
	}
	c.Put(3, "c") // evicts 2
	if _, ok := c.Get(2); ok {
		t.Fatal("least recently used entry kept")
	}
	for _, k := range []int{1, 3} {
		if _, ok := c.Get(k); !ok {
			t.Fatalf("%d evicted", k)
		}
	}
	s := c.Stats()
	if s.Entries != 2 || s.Evictions != 1 || s.Loads != 3 || s.Hits != 3 || s.Misses != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestTTL(t *testing.T) {
	now := time.Unix(1000, 0)
	c := New[string, int](10, time.Minute)
	c.now = func() time.Time { return now }
	c.Put("k", 1)
	now = now.Add(59 * time.Second)
	if v, ok := c.Get("k"); !ok || v != 1 {
		t.Fatal("expired early")
	}
	now = now.Add(2 * time.Second)
	if _, ok := c.Get("k"); ok {
		t.Fatal("served after its lifetime")
	}
	if c.Stats().Entries != 0 {
		t.Fatal("expired entry kept")
	}
}

func TestDisabledAndDelete(t *testing.T) {
	for _, c := range []*Cache[int, int]{New[int, int](0, time.Hour), New[int, int](5, -1)} {
		c.Put(1, 1)
		if _, ok := c.Get(1); ok {
			t.Fatal("disabled cache stored a value")
		}
	}
	c := New[int, int](5, time.Hour)
	c.Put(1, 1)
	c.Put(2, 2)
	c.Delete(1)
	if _, ok := c.Get(1); ok {
		t.Fatal("deleted entry served")
	}
	c.Purge()
	if _, ok := c.Get(2); ok || c.Stats().Entries != 0 {
		t.Fatal("purged entry served")
	}
}

func TestConcurrent(t *testing.T) {
	c := New[int, int](50, time.Hour)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				c.Put(i%100, i)
				c.Get((i + g) % 100)
				if i%97 == 0 {
					c.Delete(i % 100)
				}
			}
		}()
	}
	wg.Wait()
	if n := c.Stats().Entries; n > 50 {
		t.Fatalf("%d entries, bound is 50", n)
	}
}

func TestPeek(t *testing.T) {
	now := time.Unix(1000, 0)
	c := New[int, string](2, time.Minute)
	c.now = func() time.Time { return now }
	c.Put(1, "a")
	c.Put(2, "b")
	if v, ok := c.Peek(1); !ok || v != "a" {
		t.Fatalf("Peek(1) = %q, %v", v, ok)
	}
	if _, ok := c.Peek(9); ok {
		t.Fatal("Peek found a missing key")
	}
	if s := c.Stats(); s.Hits != 0 || s.Misses != 0 {
		t.Fatalf("Peek counted: %+v", s)
	}
	c.Put(3, "c") // Peek did not refresh 1: it is still the oldest
	if _, ok := c.Peek(1); ok {
		t.Fatal("Peek moved the entry in the LRU order")
	}
	now = now.Add(2 * time.Minute)
	if _, ok := c.Peek(3); ok {
		t.Fatal("Peek served an expired entry")
	}
}
