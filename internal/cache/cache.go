// Package cache is the bounded, expiring, in-memory map from owner to that
// owner's prepared DEK state.
package cache

import (
	"container/list"
	"sync"
	"sync/atomic"
	"time"
)

// Stats are cumulative counters.
type Stats struct {
	Hits, Misses, Loads, Evictions uint64
	Entries                        int
}

// Cache is an LRU map with a per-entry lifetime. The zero value is not
// usable; call New. Safe for concurrent use.
type Cache[K comparable, V any] struct {
	mu    sync.Mutex
	max   int
	ttl   time.Duration
	ll    *list.List // front = most recent
	items map[K]*list.Element
	now   func() time.Time

	hits, misses, loads, evictions atomic.Uint64
}

type entry[K comparable, V any] struct {
	key     K
	val     V
	expires time.Time
}

// New returns a cache holding at most max entries, each for at most ttl.
// max <= 0 or ttl <= 0 disables caching: Get always misses.
func New[K comparable, V any](max int, ttl time.Duration) *Cache[K, V] {
	return &Cache[K, V]{max: max, ttl: ttl, ll: list.New(), items: make(map[K]*list.Element), now: time.Now}
}

// Get returns the live value for k.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	if el, ok := c.items[k]; ok {
		e := el.Value.(*entry[K, V])
		if c.now().Before(e.expires) {
			v := e.val // read under the lock: Put may update the entry in place
			c.ll.MoveToFront(el)
			c.mu.Unlock()
			c.hits.Add(1)
			return v, true
		}
		c.ll.Remove(el)
		delete(c.items, k)
	}
	c.mu.Unlock()
	c.misses.Add(1)
	var zero V
	return zero, false
}

// Peek returns the live value for k without counting a hit or a miss and
// without refreshing its place in the LRU order.
func (c *Cache[K, V]) Peek(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		if e := el.Value.(*entry[K, V]); c.now().Before(e.expires) {
			return e.val, true
		}
	}
	var zero V
	return zero, false
}

// Put stores v for k, evicting the least recently used entry when full.
func (c *Cache[K, V]) Put(k K, v V) {
	if c.max <= 0 || c.ttl <= 0 {
		return
	}
	c.loads.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	exp := c.now().Add(c.ttl)
	if el, ok := c.items[k]; ok {
		e := el.Value.(*entry[K, V])
		e.val, e.expires = v, exp
		c.ll.MoveToFront(el)
		return
	}
	c.items[k] = c.ll.PushFront(&entry[K, V]{key: k, val: v, expires: exp})
	for c.ll.Len() > c.max {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.items, last.Value.(*entry[K, V]).key)
		c.evictions.Add(1)
	}
}

// Delete removes k at once.
func (c *Cache[K, V]) Delete(k K) {
	c.mu.Lock()
	if el, ok := c.items[k]; ok {
		c.ll.Remove(el)
		delete(c.items, k)
	}
	c.mu.Unlock()
}

// Purge removes every entry.
func (c *Cache[K, V]) Purge() {
	c.mu.Lock()
	c.ll.Init()
	clear(c.items)
	c.mu.Unlock()
}

// Stats returns the counters.
func (c *Cache[K, V]) Stats() Stats {
	c.mu.Lock()
	n := c.ll.Len()
	c.mu.Unlock()
	return Stats{Hits: c.hits.Load(), Misses: c.misses.Load(), Loads: c.loads.Load(), Evictions: c.evictions.Load(), Entries: n}
}
