package shapeapi

import (
	"container/list"
	"sync"
)

// chunkCacheBytes bounds the encoded snapshot chunks kept in memory. A
// chunk of a generation never changes, and every client of a shape starts
// with the same chunks, so all but the first read of a popular shape's
// initial sync cost a copy, not a decode and an encode.
const chunkCacheBytes = 256 << 20

// chunkCache is a least-recently-used cache of response bodies by key.
type chunkCache struct {
	mu    sync.Mutex
	max   int
	size  int
	order *list.List // front: most recently used
	items map[string]*list.Element
}

type cached struct {
	key  string
	body []byte
}

func newChunkCache(max int) *chunkCache {
	return &chunkCache{max: max, order: list.New(), items: map[string]*list.Element{}}
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
	c.items[key] = c.order.PushFront(&cached{key, body})
	c.size += len(body)
	for c.size > c.max {
		e := c.order.Back()
		old := e.Value.(*cached)
		c.order.Remove(e)
		delete(c.items, old.key)
		c.size -= len(old.body)
	}
}
