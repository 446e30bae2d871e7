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

// bindingState is the bindings goroutine's: the newest revision applied per
// partition, so an update that arrives late (watch vs re-read) never undoes
// a newer one, and the partitions whose old worker is still finishing.
type bindingState struct {
	rev map[int]uint64
	// want is the latest binding of each partition whose old worker is
	// still finishing (nil: unbound); it is applied once that worker ends,
	// which freed reports.
	want  map[int]*fanout.Binding
	freed chan int
}

func newBindingState() *bindingState {
	return &bindingState{rev: map[int]uint64{}, want: map[int]*fanout.Binding{}, freed: make(chan int)}
}

// watchBindings starts and stops partition workers as flushd binds
// partitions, until ctx ends. Workers drain when drain ends and stop at once
// when work ends.
func (s *Service) watchBindings(ctx, drain, work context.Context) error {
	st := newBindingState()
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
					s.applyEntry(ctx, st, e, drain, work)
				}
			case p := <-st.freed:
				b := st.want[p]
				delete(st.want, p)
				s.applyBinding(ctx, st, p, b, drain, work)
			case <-tick.C:
				s.resyncBindings(ctx, st, drain, work)
			}
		}
		w.Stop()
		s.log.Warn("bindings watch ended; restarting it")
	}
}

// applyEntry applies one KV entry of the bindings bucket.
func (s *Service) applyEntry(ctx context.Context, st *bindingState, e jetstream.KeyValueEntry, drain, work context.Context) {
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
	if n := s.cfg.Bus.Partitions; b != nil && (p >= n || (b.Partitions != 0 && b.Partitions != n)) {
		// Written under another bus.partitions: its shapes hash elsewhere
		// now, and its epoch may be below what their logs hold. flushd
		// binds the partition again under the current count.
		s.log.Info("ignoring a binding made under another partition count (bus.partitions must be the same in every service)",
			"partition", p, "binding_partitions", b.Partitions, "partitions", n)
		b = nil
	}
	s.applyBinding(ctx, st, p, b, drain, work)
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
		s.applyEntry(ctx, st, e, drain, work)
	}
}

// applyBinding makes the worker of partition p match binding b (nil: unbound).
// Only the bindings watch goroutine calls it, and it never waits for a
// worker: an old worker finishing its batch can take a while (a log rescan,
// a hung fsync), and neither other partitions' binding changes nor
// heartbeats, which read the owned partitions, may wait for it. The old
// worker is stopped, and b is applied when it has ended (st.freed), so a
// partition's new worker still starts only after its old one finished.
func (s *Service) applyBinding(ctx context.Context, st *bindingState, p int, b *fanout.Binding, drain, work context.Context) {
	if _, finishing := st.want[p]; finishing {
		st.want[p] = b // the latest binding wins once the old worker ends
		return
	}
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
			st.want[p] = b
			go func() { // ends with the worker, or with the bindings goroutine
				select {
				case <-cur.done:
				case <-ctx.Done():
					return
				}
				select {
				case st.freed <- p:
				case <-ctx.Done():
				}
			}()
			return
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
