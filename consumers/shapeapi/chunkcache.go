package shapeapi

import (
	"container/list"
	"strings"
	"sync"
)

// chunkCacheBytes bounds the encoded snapshot chunks kept in memory. A
// chunk of a generation never changes, and every client of a shape starts
// with the same chunks, so all but the first read of a popular shape's
// initial sync cost a copy, not a decode and an encode. (Version 2
// snapshots are copied from their files and never cached.)
const chunkCacheBytes = 256 << 20

// chunkCache is a least-recently-used cache of response bodies by key,
// "<handle>/<generation>/<chunk>", bounded in bytes; dropShape removes a
// removed shape's entries at once.
type chunkCache struct {
	mu      sync.Mutex
	max     int
	size    int
	order   *list.List // front: most recently used
	items   map[string]*list.Element
	byShape map[string]map[*list.Element]struct{}
}

type cached struct {
	key, shape string
	body       []byte
}

func newChunkCache(max int) *chunkCache {
	return &chunkCache{max: max, order: list.New(), items: map[string]*list.Element{}, byShape: map[string]map[*list.Element]struct{}{}}
}

func (c *chunkCache) get(key string) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.items[key]
	if e == nil {
		return nil
	}
	c.order.MoveToFront(e)
	return e.Value.(*cached).body
}

func (c *chunkCache) put(key string, body []byte) {
	if len(body) > c.max/4 {
		return // one huge chunk would evict everything else
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.items[key]; e != nil {
		c.order.MoveToFront(e)
		return
	}
	shape, _, _ := strings.Cut(key, "/")
	e := c.order.PushFront(&cached{key, shape, body})
	c.items[key] = e
	if c.byShape[shape] == nil {
		c.byShape[shape] = map[*list.Element]struct{}{}
	}
	c.byShape[shape][e] = struct{}{}
	c.size += len(body)
	for c.size > c.max {
		c.removeLocked(c.order.Back())
	}
}

// dropShape removes every entry of a removed shape.
func (c *chunkCache) dropShape(handle string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := range c.byShape[handle] {
		c.removeLocked(e)
	}
}

func (c *chunkCache) removeLocked(e *list.Element) {
	old := e.Value.(*cached)
	c.order.Remove(e)
	delete(c.items, old.key)
	if set := c.byShape[old.shape]; set != nil {
		delete(set, e)
		if len(set) == 0 {
			delete(c.byShape, old.shape)
		}
	}
	c.size -= len(old.body)
}

// stats is the number of entries and their bytes.
func (c *chunkCache) stats() (entries, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items), c.size
}
