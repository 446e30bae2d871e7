package shapeapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/shapes"
	"github.com/fanout/pipeline/fanout/shapestate"
)

// definitionValue is the APIDefinitionsBucket value of a definition: the
// handle serving it, or none while one replica registers it. (A reset of
// replication continuity points it at a replacement: shapes.Replace.)
type definitionValue = shapes.DefinitionValue

// pendingTimeout is how long a registration may stay pending before
// another replica takes it over (its registrar died).
const pendingTimeout = 30 * time.Second

// errNotReady means the shape exists but cannot be served yet: 503.
var errNotReady = errors.New("shape is not ready")

// resolve returns the handle serving def, registering a new shape (validated
// as fanoutctl shape add validates it) when the definition is new or its
// shape was removed. Two requests for a new definition, in this replica or
// another, create one shape: the registrar is whoever wins a
// compare-and-set on the definition's key.
func (s *Server) resolve(ctx context.Context, def Definition) (string, error) {
	if err := s.checkTable(ctx, def); err != nil {
		return "", err
	}
	key := def.Key()
	// Every request resolves its definition (a live client's once per
	// change): the handle serving it stays the same while it exists.
	s.mu.Lock()
	known, ok := s.handles.get(key)
	s.mu.Unlock()
	if ok && s.shapes.exists(ctx, known) {
		return known, nil
	}
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return "", fmt.Errorf("%w: %v", errNotReady, err)
		}
		e, err := s.defs.Get(ctx, key)
		var rev uint64
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
		case err != nil:
			return "", fmt.Errorf("%w: read KV bucket %s: %v", errNotReady, fanout.APIDefinitionsBucket, err)
		default:
			rev = e.Revision()
			var v definitionValue
			if json.Unmarshal(e.Value(), &v) == nil {
				if v.Handle != "" && s.shapes.exists(ctx, v.Handle) {
					s.rememberHandle(key, v.Handle)
					return v.Handle, nil
				}
				if v.Handle == "" && time.Since(v.Pending) < pendingTimeout {
					// Another request registers it: wait for its handle.
					if !sleep(ctx, 50*time.Millisecond) {
						return "", fmt.Errorf("%w: %v", errNotReady, ctx.Err())
					}
					continue
				}
			}
		}
		// A new shape: within its bounds (definition.go, admission.go,
		// lifecycle.go) before anything is written.
		release, err := s.admitNewShape(ctx, def)
		if err != nil {
			return "", err
		}
		pending, _ := json.Marshal(definitionValue{Pending: time.Now()})
		if rev == 0 {
			rev, err = s.defs.Create(ctx, key, pending)
		} else {
			rev, err = s.defs.Update(ctx, key, pending, rev)
		}
		if err != nil {
			release("")
			if attempt > 50 {
				return "", fmt.Errorf("%w: could not claim definition %s in KV bucket %s: %v", errNotReady, key, fanout.APIDefinitionsBucket, err)
			}
			continue // another request won: read again
		}
		sh, err := s.register(ctx, def)
		if err != nil {
			release("")
			_ = s.defs.Delete(context.Background(), key, jetstream.LastRevision(rev))
			return "", err
		}
		done, _ := json.Marshal(definitionValue{Handle: sh.Handle})
		_, err = s.defs.Update(ctx, key, done, rev)
		release(sh.Handle) // its snapshot is pending from now
		if err != nil {
			// Taken over meanwhile (we were slower than pendingTimeout):
			// the other registrar's shape serves; drop ours.
			_ = shapes.Remove(context.Background(), s.bus, sh.Handle, shapes.WithRemoveLog(s.log))
			continue
		}
		s.life.registered(sh.Handle, key)
		s.shapes.put(sh)
		s.rememberHandle(key, sh.Handle)
		s.log.Info("registered a shape for a new definition", "shape", sh.Handle, "table", sh.Table, "where", sh.Where, "columns", sh.Columns)
		return sh.Handle, nil
	}
}

// rememberHandle keeps the handle serving a definition, for the next
// requests of its clients (resolve checks it still exists).
func (s *Server) rememberHandle(key, handle string) {
	s.mu.Lock()
	s.handles.put(key, handle)
	s.mu.Unlock()
}

// register validates and adds the shape of def with shapes.Add.
func (s *Server) register(ctx context.Context, def Definition) (*fanout.Shape, error) {
	var sh *fanout.Shape
	err := s.pg.with(ctx, func(conn *pgx.Conn) error {
		var err error
		sh, err = shapes.Add(ctx, s.bus, conn, def.Qualified(), def.Where, def.Params, def.Columns,
			shapes.WithBudget(s.budget()), shapes.WithCheck(s.validateInPostgres))
		return err
	})
	if err != nil {
		return nil, classifyAddError(err)
	}
	return sh, nil
}

// classifyAddError turns a validation failure of shapes.Add into a 400 on
// the parameter it is about, and leaves storage or connection failures as
// they are (503).
func classifyAddError(err error) error {
	var pgErr interface{ SQLState() string }
	var bad *BadRequest
	var be *match.BudgetError
	msg := err.Error()
	switch {
	case errors.As(err, &bad), errors.Is(err, errNotReady):
		return err
	case errors.As(err, &be):
		return Invalid("where", fmt.Sprintf("%v (config key %s)", err, budgetKeys[be.Limit]))
	case errors.Is(err, shapes.ErrTableNotServed):
		return Invalid("table", msg)
	case errors.As(err, &pgErr), strings.Contains(msg, "store shape"), strings.Contains(msg, "read the "), strings.Contains(msg, "publication"),
		strings.Contains(msg, "connect to Postgres"):
		return fmt.Errorf("%w: %v", errNotReady, err)
	case strings.HasPrefix(msg, "where clause"): // a subquery's table is the where's business
		return Invalid("where", msg)
	case strings.Contains(msg, "does not exist"), strings.Contains(msg, "is not a table"), strings.Contains(msg, "no primary key"):
		return Invalid("table", msg)
	case strings.Contains(msg, "column"):
		return Invalid("columns", msg)
	}
	return Invalid("where", msg)
}

// awaitReady waits, up to the ready timeout, until handle's initial
// snapshot is complete, and returns it. A handle is served at one snapshot
// generation only (generation.go): a cached snapshot that a newer
// generation replaced is looked up again, and a handle whose generation
// changed is retired.
func (s *Server) awaitReady(ctx context.Context, handle string) (*snapshotView, error) {
	if v := s.readyCache(handle); v != nil {
		if v.snap == nil || !v.snap.Replaced() {
			return v, nil
		}
		s.dropView(handle, v)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.API.ReadyTimeout)
	defer cancel()
	changed, unregister := s.snapWatch.register(handle) // one watch for every waiting request
	defer unregister()
	var release func()
	defer func() {
		if release != nil {
			release()
		}
	}()
	for {
		st, _, err := shapestate.Get(ctx, s.states, handle)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errNotReady, err)
		}
		switch st.Phase {
		case shapestate.Failed:
			if st.Refused != "" {
				return nil, s.refusedByPostgres(ctx, handle, st.Refused)
			}
			return nil, fmt.Errorf("%w: the initial snapshot of shape %s failed: %s (it is retried; fanoutctl status shows it)", errNotReady, handle, st.Error)
		case shapestate.Ready:
			// Checked before it is loaded (and cached for other requests).
			if err := s.checkGeneration(ctx, handle, st.Generation); err != nil {
				return nil, err
			}
			if v, err := s.loadSnapshot(handle, st.Generation); err != nil || v != nil {
				return v, err
			}
		}
		if release == nil {
			// Waiting holds a goroutine and a connection: a bounded number.
			var refused *overloaded
			if release, refused = s.admit.newShapes.enter(); refused != nil {
				return nil, refused
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: the initial snapshot of shape %s is not complete after %s (state %s)", errNotReady, handle, s.cfg.API.ReadyTimeout, st.Phase)
		case <-changed:
		}
	}
}

// shapeSet knows which shapes exist, from a watch of the shapes bucket,
// falling back to the bucket for a handle the watch has not shown yet.
type shapeSet struct {
	kv      *fanout.Bus
	mu      sync.RWMutex
	known   map[string]*fanout.Shape
	removed recentRemovals
	primed  chan struct{}
	onGone  func(handle string)
}

func newShapeSet(kv *fanout.Bus, onGone func(handle string)) *shapeSet {
	return &shapeSet{kv: kv, known: map[string]*fanout.Shape{}, removed: newRecentRemovals(removalsKept, time.Now), primed: make(chan struct{}), onGone: onGone}
}

func (ss *shapeSet) put(sh *fanout.Shape) {
	ss.mu.Lock()
	if !ss.removed.has(sh.Handle) {
		ss.known[sh.Handle] = sh
	}
	ss.mu.Unlock()
}

func (ss *shapeSet) remove(handle string) {
	ss.mu.Lock()
	delete(ss.known, handle)
	ss.removed.add(handle)
	ss.mu.Unlock()
	ss.onGone(handle)
}

// get returns the shape of handle, or nil when it does not exist.
func (ss *shapeSet) get(ctx context.Context, handle string) *fanout.Shape {
	ss.mu.RLock()
	sh, gone := ss.known[handle], ss.removed.has(handle)
	ss.mu.RUnlock()
	if sh != nil || gone {
		return sh
	}
	sh, err := shapes.Get(ctx, ss.kv, handle)
	if err != nil {
		return nil
	}
	ss.put(sh)
	return sh
}

func (ss *shapeSet) exists(ctx context.Context, handle string) bool {
	return ss.get(ctx, handle) != nil
}

// removalsKept is how long a removal is remembered. It only has to outlast
// a read of the shapes bucket that began before the removal (get falls back
// to the bucket, and must not bring the shape back with what it read), a
// matter of one round trip; a handle forgotten after that is looked up in
// the bucket, which no longer has it.
const removalsKept = 10 * time.Minute

// recentRemovals remembers the handles removed in the last one to two
// periods, in two generations, so that a server with shapes created and
// removed all day does not keep every handle it ever saw. It is guarded by
// its shapeSet's lock.
type recentRemovals struct {
	period        time.Duration
	now           func() time.Time
	since         time.Time // when cur began
	cur, previous map[string]struct{}
}

func newRecentRemovals(period time.Duration, now func() time.Time) recentRemovals {
	return recentRemovals{period: period, now: now, since: now(), cur: map[string]struct{}{}, previous: map[string]struct{}{}}
}

func (rr *recentRemovals) add(handle string) {
	at := rr.now()
	if elapsed := at.Sub(rr.since); elapsed >= rr.period {
		// Every removal in cur was added before since+period. They become
		// previous, and what was previous (older than a period) is
		// forgotten; with two periods gone, cur's are too.
		if elapsed >= 2*rr.period {
			clear(rr.cur)
		}
		rr.previous, rr.cur, rr.since = rr.cur, map[string]struct{}{}, at
	}
	rr.cur[handle] = struct{}{}
}

// has reports whether handle was removed in the last period at least.
func (rr *recentRemovals) has(handle string) bool {
	_, inCur := rr.cur[handle]
	_, inPrevious := rr.previous[handle]
	return inCur || inPrevious
}

// len is how many removals are remembered.
func (rr *recentRemovals) len() int { return len(rr.cur) + len(rr.previous) }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
