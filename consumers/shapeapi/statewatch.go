package shapeapi

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout/shapestate"
)

// stateWatch follows the snapshot states (KV bucket fanout_shape_state)
// with one watch for the whole server. Requests waiting for a new shape's
// initial snapshot register on it (a channel each) instead of opening a
// JetStream watcher each, and it counts the shapes whose snapshot is
// pending, the bound of api.max_pending_snapshots.
type stateWatch struct {
	kv      jetstream.KeyValue
	log     *slog.Logger
	waiters *hub // by handle, woken when its state changes

	mu       sync.Mutex
	pending  map[string]struct{} // creating or snapshotting
	reserved int                 // registrations in progress here
}

func newStateWatch(kv jetstream.KeyValue, log *slog.Logger) *stateWatch {
	return &stateWatch{kv: kv, log: log, waiters: newHub(), pending: map[string]struct{}{}}
}

// register returns a channel signalled when handle's state may have
// changed; call it before reading the state, so no change is missed.
func (sw *stateWatch) register(handle string) (<-chan struct{}, func()) {
	return sw.waiters.register(handle)
}

// pendingSnapshots is how many shapes wait for their initial snapshot.
func (sw *stateWatch) pendingSnapshots() int {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return len(sw.pending)
}

// reserve admits one registration when the pending snapshots, with the
// registrations in progress in this replica, stay under max; done(handle)
// ends it, counting handle (if any) pending until the watch says otherwise.
func (sw *stateWatch) reserve(max int) (done func(handle string), ok bool) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if len(sw.pending)+sw.reserved >= max {
		return nil, false
	}
	sw.reserved++
	var once sync.Once
	return func(handle string) {
		once.Do(func() {
			sw.mu.Lock()
			sw.reserved--
			if handle != "" {
				sw.pending[handle] = struct{}{}
			}
			sw.mu.Unlock()
		})
	}, true
}

// forget drops a removed shape (its state key may outlive it briefly).
func (sw *stateWatch) forget(handle string) {
	if sw == nil {
		return
	}
	sw.mu.Lock()
	delete(sw.pending, handle)
	sw.mu.Unlock()
}

// run follows the bucket until ctx ends; every waiter is woken when the
// watch starts again, as a change may have been missed.
func (sw *stateWatch) run(ctx context.Context) {
	followBucket(ctx, sw.kv, "the snapshot states", shapestate.Bucket, sw.log, func(e jetstream.KeyValueEntry) {
		if e.Key() != shapestate.RoutingKey {
			sw.apply(e)
		}
	}, sw.waiters.wakeAll)
}

// apply records one state change and wakes the shape's waiters.
func (sw *stateWatch) apply(e jetstream.KeyValueEntry) {
	pending := false
	if e.Operation() == jetstream.KeyValuePut {
		if st, err := shapestate.Decode(e.Value()); err == nil {
			pending = st.Phase == shapestate.Creating || st.Phase == shapestate.Snapshotting
		}
	}
	sw.mu.Lock()
	if pending {
		sw.pending[e.Key()] = struct{}{}
	} else {
		delete(sw.pending, e.Key())
	}
	sw.mu.Unlock()
	sw.waiters.wake(e.Key())
}

// errWatchEnded: NATS closed a watch (the connection closed or reset).
var errWatchEnded = errors.New("the KV watch ended")

// followBucket applies every entry of kv (current values, then changes) to
// apply until ctx ends, starting the watch again a second after NATS ends
// it (restarted is called then).
func followBucket(ctx context.Context, kv jetstream.KeyValue, what, bucket string, log *slog.Logger, apply func(jetstream.KeyValueEntry), restarted func()) {
	follow := func() error {
		w, err := kv.WatchAll(ctx)
		if err != nil {
			return err
		}
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case e, ok := <-w.Updates():
				if !ok {
					return errWatchEnded
				}
				if e != nil {
					apply(e)
				}
			}
		}
	}
	for ctx.Err() == nil {
		if err := follow(); err != nil && ctx.Err() == nil {
			log.Warn("watch of "+what+" ended; starting it again in 1s", "bucket", bucket, "err", err)
		}
		restarted()
		sleep(ctx, time.Second)
	}
}

// wakeAll signals every request waiting on h (their source of signals was
// interrupted: each looks again).
func (h *hub) wakeAll() {
	h.mu.Lock()
	for _, ws := range h.waiters {
		for ch := range ws {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	h.mu.Unlock()
}
