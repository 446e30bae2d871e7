package ingest

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// shapeEvent is a shape change, or the marker that the initial set is complete.
type shapeEvent struct {
	update      ShapeUpdate
	initialDone bool
}

// shapeWatcher follows the shapes bucket and hands every change on; for a
// new shape it asks identity (nil: not configured) to set REPLICA IDENTITY
// FULL on its table, in the background (identity.go).
type shapeWatcher struct {
	kv       jetstream.KeyValue
	identity *identitySetter
	log      *slog.Logger
	out      chan<- shapeEvent
}

func (w *shapeWatcher) run(ctx context.Context) error {
	watch, err := w.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch the %s bucket: %w", fanout.ShapesBucket, err)
	}
	defer watch.Stop()
	for {
		var e jetstream.KeyValueEntry
		select {
		case <-ctx.Done():
			return nil
		case e = <-watch.Updates():
		}
		ev := shapeEvent{}
		switch {
		case e == nil:
			ev.initialDone = true
		case e.Operation() == jetstream.KeyValueDelete || e.Operation() == jetstream.KeyValuePurge:
			ev.update = ShapeUpdate{Handle: e.Key(), Revision: e.Revision()}
		default:
			s, err := fanout.DecodeShape(e.Value())
			if err != nil {
				w.log.Error("shape definition in the shapes bucket is invalid; skipped (fix or remove it with fanoutctl)", "key", e.Key(), "err", err)
				continue
			}
			if s.Handle != e.Key() {
				w.log.Error("shape definition stored under another key than its handle; skipped", "key", e.Key(), "handle", s.Handle)
				continue
			}
			w.identity.enqueue(s.Table)
			ev.update = ShapeUpdate{Handle: s.Handle, Shape: s, Revision: e.Revision()}
		}
		select {
		case w.out <- ev:
		case <-ctx.Done():
			return nil
		}
	}
}

// watchSafe follows flushd's safe LSN in the state bucket.
func watchSafe(ctx context.Context, kv jetstream.KeyValue, safe *SafeHolder, m *Metrics, log *slog.Logger) error {
	watch, err := kv.Watch(ctx, fanout.KeySafeLSN)
	if err != nil {
		return fmt.Errorf("watch %s in the %s bucket: %w", fanout.KeySafeLSN, fanout.StateBucket, err)
	}
	defer watch.Stop()
	for {
		var e jetstream.KeyValueEntry
		select {
		case <-ctx.Done():
			return nil
		case e = <-watch.Updates():
		}
		if e == nil || e.Operation() != jetstream.KeyValuePut {
			continue
		}
		s, err := fanout.DecodeSafeLSN(e.Value())
		if err != nil {
			log.Error("safe LSN in the state bucket is invalid; ignored (is flushd of the same version?)", "err", err)
			continue
		}
		safe.Set(s.LSN)
		m.SafeLSN.Set(float64(s.LSN))
	}
}
