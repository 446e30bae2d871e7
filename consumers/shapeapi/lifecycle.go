package shapeapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapes"
)

// The lifecycle of the shapes the API creates (fanoutctl's are never
// counted nor expired): at most api.max_shapes of them (a new definition
// at the limit expires the least recently read), and one nobody read for
// api.shape_idle_timeout is removed; its clients get 409 and recreate it.
//
// Which shapes are the API's, and when each was last read, is kept in the
// definitions bucket (fanout_api_definitions), which every replica
// watches: "<definition key>" -> the handle, and readKeyPrefix+handle ->
// when a replica last served it. A replica writes a shape's read time at
// most once per readGrain, so a busy shape costs no KV write per request.

// readKeyPrefix prefixes the last-read keys in the definitions bucket.
const readKeyPrefix = "read."

// apiShape is an API-created shape as the lifecycle decisions see it.
type apiShape struct {
	handle, defKey string
	lastUsed       time.Time // last read anywhere known, else its registration
	reading        bool      // a request of this replica is reading it now
}

// idleShapes are the shapes unused for longer than idle (0: none); one
// being read is not idle.
func idleShapes(all []apiShape, now time.Time, idle time.Duration) []apiShape {
	if idle <= 0 {
		return nil
	}
	var out []apiShape
	for _, s := range all {
		if !s.reading && now.Sub(s.lastUsed) > idle {
			out = append(out, s)
		}
	}
	return out
}

// evictions are the least recently used shapes to remove so that adding
// incoming shapes keeps the count at most max, never one being read; ok
// is false when that is not enough.
func evictions(all []apiShape, max, incoming int) (out []apiShape, ok bool) {
	over := len(all) + incoming - max
	if over <= 0 {
		return nil, true
	}
	var idle []apiShape
	for _, s := range all {
		if !s.reading {
			idle = append(idle, s)
		}
	}
	slices.SortFunc(idle, func(a, b apiShape) int { return a.lastUsed.Compare(b.lastUsed) })
	return idle[:min(over, len(idle))], over <= len(idle)
}

// lifecycle keeps the API shapes' registry and last reads, and removes
// shapes by the decisions above.
type lifecycle struct {
	defs     jetstream.KeyValue
	bus      *fanout.Bus
	log      *slog.Logger
	max      int
	idle     time.Duration
	onRemove func(handle string) // the server forgets it

	mu       sync.Mutex
	byHandle map[string]*apiShape
	byKey    map[string]string    // definition key -> handle
	lastRead map[string]time.Time // read keys seen, also of handles not known yet
	read     map[string]time.Time // served here since the last flush
	written  map[string]time.Time // last read time this replica wrote
	active   map[string]int       // requests reading each shape now
}

func newLifecycle(defs jetstream.KeyValue, bus *fanout.Bus, max int, idle time.Duration, onRemove func(string), log *slog.Logger) *lifecycle {
	return &lifecycle{defs: defs, bus: bus, log: log, max: max, idle: idle, onRemove: onRemove,
		byHandle: map[string]*apiShape{}, byKey: map[string]string{}, lastRead: map[string]time.Time{},
		read: map[string]time.Time{}, written: map[string]time.Time{}, active: map[string]int{}}
}

// readGrain is how stale a shape's recorded last read may get: an eighth
// of the idle timeout (a minute without one), at least 10s.
func (l *lifecycle) readGrain() time.Duration {
	if l.idle <= 0 {
		return time.Minute
	}
	return max(l.idle/8, 10*time.Second)
}

// touch records that handle was served now (a map write, no I/O).
func (l *lifecycle) touch(handle string) {
	now := time.Now()
	l.mu.Lock()
	l.read[handle] = now
	if s := l.byHandle[handle]; s != nil && now.After(s.lastUsed) {
		s.lastUsed = now
	}
	l.mu.Unlock()
}

// reading records a request reading handle until done is called: a shape
// with a held live request is in use however long it is held.
func (l *lifecycle) reading(handle string) (done func()) {
	l.touch(handle)
	l.mu.Lock()
	l.active[handle]++
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		if l.active[handle]--; l.active[handle] <= 0 {
			delete(l.active, handle)
		}
		l.mu.Unlock()
		l.touch(handle)
	}
}

// count is the number of API shapes.
func (l *lifecycle) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.byHandle)
}

func (l *lifecycle) snapshot() []apiShape {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]apiShape, 0, len(l.byHandle))
	for h, s := range l.byHandle {
		c := *s
		c.reading = l.active[h] > 0
		out = append(out, c)
	}
	return out
}

// registered records a shape this replica just registered for defKey
// (the watch brings it too, later).
func (l *lifecycle) registered(handle, defKey string) {
	l.mu.Lock()
	l.addLocked(handle, defKey, time.Now())
	l.mu.Unlock()
}

// makeRoom removes the least recently read API shapes so that one more
// fits under api.max_shapes; false when every shape is being read.
func (l *lifecycle) makeRoom(ctx context.Context) bool {
	victims, ok := evictions(l.snapshot(), l.max, 1)
	for _, s := range victims {
		l.log.Info("API shape expired to make room (config key api.max_shapes); its clients get 409 and recreate it",
			"shape", s.handle, "max_shapes", l.max, "last_used", s.lastUsed.UTC().Format(time.RFC3339))
		l.remove(ctx, s)
	}
	return ok
}

// remove deletes an API shape, its definition key (if it still names it)
// and its last-read key.
func (l *lifecycle) remove(ctx context.Context, s apiShape) {
	if err := shapes.Remove(ctx, l.bus, s.handle, shapes.WithRemoveLog(l.log)); err != nil && !errors.Is(err, shapes.ErrUnknownShape) {
		l.log.Warn("could not remove an expired API shape; the next pass retries", "shape", s.handle, "err", err)
		return
	}
	if e, err := l.defs.Get(ctx, s.defKey); err == nil {
		var v definitionValue
		if json.Unmarshal(e.Value(), &v) == nil && v.Handle == s.handle {
			l.defs.Delete(ctx, s.defKey, jetstream.LastRevision(e.Revision()))
		}
	}
	l.defs.Delete(ctx, readKeyPrefix+s.handle)
	l.forget(s.handle)
	l.onRemove(s.handle)
}

func (l *lifecycle) forget(handle string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.dropLocked(handle)
	l.mu.Unlock()
}

// addLocked records handle as the shape of defKey, registered at created.
func (l *lifecycle) addLocked(handle, defKey string, created time.Time) {
	if old, ok := l.byKey[defKey]; ok && old != handle {
		l.dropLocked(old) // the definition moved to a new shape
	}
	if l.byHandle[handle] != nil {
		return
	}
	used := created
	if t := l.lastRead[handle]; t.After(used) {
		used = t
	}
	l.byHandle[handle] = &apiShape{handle: handle, defKey: defKey, lastUsed: used}
	l.byKey[defKey] = handle
}

func (l *lifecycle) dropLocked(handle string) {
	if s := l.byHandle[handle]; s != nil && l.byKey[s.defKey] == handle {
		delete(l.byKey, s.defKey)
	}
	delete(l.byHandle, handle)
	delete(l.lastRead, handle)
	delete(l.read, handle)
	delete(l.written, handle)
	delete(l.active, handle)
}

// run follows the definitions bucket, writes this replica's reads and
// expires idle shapes until ctx ends.
func (l *lifecycle) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		followBucket(ctx, l.defs, "the API definitions", fanout.APIDefinitionsBucket, l.log, l.apply, func() {})
	})
	every := min(l.readGrain(), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.flushReads(ctx)
		for _, s := range idleShapes(l.snapshot(), time.Now(), l.idle) {
			l.log.Info("API shape expired: nobody read it for api.shape_idle_timeout; its clients get 409 and recreate it",
				"shape", s.handle, "shape_idle_timeout", l.idle, "last_used", s.lastUsed.UTC().Format(time.RFC3339))
			l.remove(ctx, s)
		}
	}
}

// flushReads writes the read times that moved by readGrain or more since
// this replica last wrote them.
func (l *lifecycle) flushReads(ctx context.Context) {
	grain := l.readGrain()
	l.mu.Lock()
	now := time.Now()
	for h := range l.active { // held requests read their shape all along
		l.read[h] = now
	}
	var due []string
	var at []time.Time
	for h, t := range l.read {
		if t.Sub(l.written[h]) >= grain {
			due, at = append(due, h), append(at, t)
		}
	}
	clear(l.read)
	l.mu.Unlock()
	for i, h := range due {
		if _, err := l.defs.Put(ctx, readKeyPrefix+h, []byte(strconv.FormatInt(at[i].UnixMilli(), 10))); err != nil {
			l.log.Warn("could not record when a shape was last read; it may expire early", "shape", h, "err", err)
			continue
		}
		l.mu.Lock()
		l.written[h] = at[i]
		l.mu.Unlock()
	}
}

func (l *lifecycle) apply(e jetstream.KeyValueEntry) {
	key, put := e.Key(), e.Operation() == jetstream.KeyValuePut
	l.mu.Lock()
	defer l.mu.Unlock()
	if handle, ok := strings.CutPrefix(key, readKeyPrefix); ok {
		ms, err := strconv.ParseInt(string(e.Value()), 10, 64)
		if !put || err != nil {
			delete(l.lastRead, handle)
			return
		}
		t := time.UnixMilli(ms)
		if len(l.lastRead) < 4*l.max || l.byHandle[handle] != nil { // bounded: read keys of unknown shapes
			l.lastRead[handle] = t
		}
		if s := l.byHandle[handle]; s != nil && t.After(s.lastUsed) {
			s.lastUsed = t
		}
		return
	}
	var v definitionValue
	if put && json.Unmarshal(e.Value(), &v) == nil && v.Handle != "" {
		l.addLocked(v.Handle, key, e.Created())
		return
	}
	// Deleted, or pending again (its shape was removed): drop the handle
	// this key named.
	if h, ok := l.byKey[key]; ok {
		l.dropLocked(h)
	}
}

// definitionsBucket is the definitions bucket's configuration, sized by
// api.max_shapes: two small entries per API shape (its definition key and
// its last read), with room for the definitions being registered.
func definitionsBucket(cfg Config) jetstream.KeyValueConfig {
	const entryBytes = 512 // a key of ~40 bytes, a value under 100, the message's headers
	return jetstream.KeyValueConfig{Bucket: fanout.APIDefinitionsBucket,
		Description: "HTTP API shape definition (hashed) -> handle; read.<handle> -> when it was last read",
		History:     1, Replicas: max(cfg.Bus.Replicas, 1),
		MaxValueSize: 1024, MaxBytes: int64(max(cfg.API.MaxShapes, 1000)) * 4 * entryBytes}
}
