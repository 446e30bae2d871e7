package consumers

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// shapeCache knows which shapes exist, from a watch of the shapes bucket, so
// a fragment of a removed shape is dropped instead of persisted for ever.
type shapeCache struct {
	kv       jetstream.KeyValue
	log      *slog.Logger
	timeout  time.Duration
	onRemove func(handle string)

	mu      sync.RWMutex
	known   map[string]bool
	removed map[string]bool // deleted while watched; handles are never reused
	// subquery shapes' primary keys (moveout.go keeps their rows' tags)
	subqueryPK map[string][]string
}

func newShapeCache(kv jetstream.KeyValue, log *slog.Logger, timeout time.Duration, onRemove func(string)) *shapeCache {
	return &shapeCache{kv: kv, log: log, timeout: timeout, onRemove: onRemove,
		known: map[string]bool{}, removed: map[string]bool{}, subqueryPK: map[string][]string{}}
}

// run watches the bucket until ctx ends; primed is closed once the current
// definitions are loaded. A watch that cannot be (re)started for the retry
// timeout is fatal.
func (c *shapeCache) run(ctx context.Context, primed chan struct{}) error {
	var once sync.Once
	failingSince := time.Time{}
	for {
		w, err := c.kv.WatchAll(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			if time.Since(failingSince) > c.timeout {
				return fmt.Errorf("watch KV bucket %s: failing for over %s: %w; check that NATS is reachable", fanout.ShapesBucket, c.timeout, err)
			}
			c.log.Warn("cannot watch the shapes bucket; retrying", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		failingSince = time.Time{}
		for e := range updates(ctx, w) {
			if e == nil {
				once.Do(func() { close(primed) })
				continue
			}
			c.apply(e)
		}
		w.Stop()
		if ctx.Err() != nil {
			return nil
		}
		c.log.Warn("shapes bucket watch ended; restarting it")
	}
}

func (c *shapeCache) apply(e jetstream.KeyValueEntry) {
	h := e.Key()
	if e.Operation() == jetstream.KeyValuePut {
		sh, err := fanout.DecodeShape(e.Value())
		if err != nil {
			// Its fragments are still persisted: losing data is worse.
			c.log.Error("shape definition in KV does not decode; its fragments are still persisted", "shape", h, "err", err)
		}
		c.mu.Lock()
		c.known[h] = true
		if sh != nil && sh.HasSubqueries() {
			c.subqueryPK[h] = sh.PrimaryKey
		}
		c.mu.Unlock()
		return
	}
	c.mu.Lock()
	delete(c.known, h)
	delete(c.subqueryPK, h)
	c.removed[h] = true
	c.mu.Unlock()
	c.onRemove(h)
}

// exists reports whether a shape is defined. A shape not seen yet is looked
// up in KV, so a just-added shape is not mistaken for a removed one; when KV
// cannot answer, the shape is taken to exist (persisting is always safe).
func (c *shapeCache) exists(ctx context.Context, handle string) bool {
	c.mu.RLock()
	known, removed := c.known[handle], c.removed[handle]
	c.mu.RUnlock()
	if known {
		return true
	}
	if removed {
		return false
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := c.kv.Get(gctx, handle)
	if err == nil {
		return true
	}
	if isNotFound(err) {
		return false
	}
	c.log.Warn("cannot look up shape in KV; persisting its fragment", "shape", handle, "err", err)
	return true
}

// subqueryKey is the primary key of a shape with subqueries; ok is false
// for other shapes (or one not seen yet).
func (c *shapeCache) subqueryKey(handle string) ([]string, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	pk, ok := c.subqueryPK[handle]
	return pk, ok
}
