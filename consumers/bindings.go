package consumers

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// resyncInterval is how often the bindings are re-read in full, in case the
// watch missed something (a watch lags after a NATS restart until it resets).
const resyncInterval = 5 * time.Second

// bindingState remembers the newest revision applied per partition, so an
// update that arrives late (watch vs re-read) never undoes a newer one.
type bindingState struct {
	rev map[int]uint64
}

// watchBindings starts and stops partition workers as flushd binds
// partitions, until ctx ends. Workers drain when drain ends and stop at once
// when work ends.
func (s *Service) watchBindings(ctx, drain, work context.Context) error {
	st := &bindingState{rev: map[int]uint64{}}
	tick := time.NewTicker(resyncInterval)
	defer tick.Stop()
	for {
		var w jetstream.KeyWatcher
		err := s.retryBus(ctx, "watch KV bucket "+fanout.BindingsBucket, func(context.Context) error {
			var err error
			w, err = s.bus.Bindings.WatchAll(ctx) // lives as long as ctx, not the attempt
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	watch:
		for {
			select {
			case <-ctx.Done():
				w.Stop()
				return nil
			case e, ok := <-w.Updates():
				if !ok {
					break watch
				}
				if e != nil { // nil: the initial values are all in
					s.applyEntry(st, e, drain, work)
				}
			case <-tick.C:
				s.resyncBindings(ctx, st, drain, work)
			}
		}
		w.Stop()
		s.log.Warn("bindings watch ended; restarting it")
	}
}

// applyEntry applies one KV entry of the bindings bucket.
func (s *Service) applyEntry(st *bindingState, e jetstream.KeyValueEntry, drain, work context.Context) {
	p, err := fanout.ParseBindingKey(e.Key())
	if err != nil {
		s.log.Warn("ignoring a key of the bindings bucket", "key", e.Key(), "err", err)
		return
	}
	if e.Revision() <= st.rev[p] {
		return
	}
	st.rev[p] = e.Revision()
	var b *fanout.Binding
	if e.Operation() == jetstream.KeyValuePut {
		if b, err = fanout.DecodeBinding(e.Value()); err != nil {
			s.log.Error("ignoring a binding that does not decode (flushd writes them; is it the same version?)", "partition", p, "err", err)
			return
		}
	}
	s.applyBinding(p, b, drain, work)
}

// resyncBindings re-reads every binding; failures are logged and retried at
// the next tick (the watch is the main path).
func (s *Service) resyncBindings(ctx context.Context, st *bindingState, drain, work context.Context) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	keys, err := s.bus.Bindings.ListKeys(rctx)
	if err != nil {
		s.log.Warn("cannot re-read the bindings", "err", err)
		return
	}
	var entries []jetstream.KeyValueEntry
	for k := range keys.Keys() {
		e, err := s.bus.Bindings.Get(rctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			s.log.Warn("cannot re-read a binding", "key", k, "err", err)
			return
		}
		entries = append(entries, e)
	}
	if rctx.Err() != nil { // the listing was cut short: it may miss keys
		s.log.Warn("cannot re-read the bindings in time", "err", rctx.Err())
		return
	}
	for _, e := range entries {
		s.applyEntry(st, e, drain, work)
	}
}

// applyBinding makes the worker of partition p match binding b (nil: unbound).
// Only the bindings watch goroutine calls it. s.mu is not held while an old
// worker finishes its batch: that can take a while (a log rescan, an fsync),
// and heartbeats, which read the owned partitions, must not wait for it, or
// flushd would take this consumer for dead and move every partition.
func (s *Service) applyBinding(p int, b *fanout.Binding, drain, work context.Context) {
	mine := b != nil && b.Consumer == s.id
	s.mu.Lock()
	cur := s.workers[p]
	s.mu.Unlock()
	if cur != nil {
		if mine && b.Epoch == cur.epoch {
			return // unchanged, or a worker of this epoch that was fenced: do not restart it
		}
		if mine && b.Epoch < cur.epoch {
			s.log.Warn("ignoring a binding with an older epoch than the one held", "partition", p, "epoch", b.Epoch, "held", cur.epoch)
			return
		}
		if !cur.finished() {
			if mine {
				s.log.Info("partition rebound to this consumer at a newer epoch; restarting its worker", "partition", p, "old_epoch", cur.epoch, "epoch", b.Epoch)
			} else {
				s.log.Info("partition moved away; stopping its worker (no more writes or acks)", "partition", p, "epoch", cur.epoch)
			}
			cur.stop()
			<-cur.done
		}
		s.mu.Lock()
		delete(s.workers, p)
		s.mu.Unlock()
	}
	if !mine {
		return
	}
	w := newWorker(s, p, b.Epoch, work)
	s.mu.Lock()
	s.workers[p] = w
	s.mu.Unlock()
	go w.run(drain)
}

// updates yields a watcher's entries until ctx ends or the watch closes.
func updates(ctx context.Context, w jetstream.KeyWatcher) func(func(jetstream.KeyValueEntry) bool) {
	return func(yield func(jetstream.KeyValueEntry) bool) {
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok || !yield(e) {
					return
				}
			}
		}
	}
}
