package shapeapi

import "container/list"

// maxCachedShapes bounds the shapes whose column types and served snapshot
// a replica remembers (Server.columns, Server.snaps). An entry is about a
// kilobyte (a table's column list; a snapshot's chunk list), so the bound
// keeps each cache under about 50 MB however many shapes a replica serves
// over its life. A forgotten entry costs its shape's next request one
// catalog query, or one state lookup and snapshot read.
const maxCachedShapes = 50_000

// lru maps handles to values, keeping at most max of them and forgetting
// the least recently used. It is not safe for concurrent use (Server.mu
// guards the server's).
type lru[V any] struct {
	max   int
	order *list.List // of *lruEntry[V]; front: most recently used
	items map[string]*list.Element
}

type lruEntry[V any] struct {
	key string
	val V
}

func newLRU[V any](max int) *lru[V] {
	return &lru[V]{max: max, order: list.New(), items: map[string]*list.Element{}}
}

// get returns key's value and marks it used.
func (c *lru[V]) get(key string) (V, bool) {
	e := c.items[key]
	if e == nil {
		var zero V
		return zero, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*lruEntry[V]).val, true
}

// put sets key's value, forgetting the least recently used beyond max.
func (c *lru[V]) put(key string, val V) {
	if e := c.items[key]; e != nil {
		e.Value.(*lruEntry[V]).val = val
		c.order.MoveToFront(e)
		return
	}
	c.items[key] = c.order.PushFront(&lruEntry[V]{key, val})
	for c.order.Len() > max(c.max, 1) {
		old := c.order.Remove(c.order.Back()).(*lruEntry[V])
		delete(c.items, old.key)
	}
}

// remove forgets key.
func (c *lru[V]) remove(key string) {
	if e := c.items[key]; e != nil {
		c.order.Remove(e)
		delete(c.items, key)
	}
}

func (c *lru[V]) len() int { return c.order.Len() }
