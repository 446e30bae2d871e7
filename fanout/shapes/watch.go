package shapes

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// WatchOption configures Watch.
type WatchOption func(*watchConfig)

type watchConfig struct {
	ready func()
}

// WithReady calls f once, after the shapes that existed when Watch started
// have all been passed to onPut.
func WithReady(f func()) WatchOption { return func(c *watchConfig) { c.ready = f } }

// Watch follows the shapes bucket until ctx ends: first every existing
// shape, then each change as it happens. onPut gets added (or replaced)
// shapes, onDelete the handles of removed ones. A value that is not a valid
// shape is logged at error level, with the command that removes it, and
// skipped. Watch returns nil when ctx ends, or an error if the watch cannot
// be started or the NATS client closes it.
func Watch(ctx context.Context, kv jetstream.KeyValue, onPut func(*fanout.Shape), onDelete func(handle string), log *slog.Logger, opts ...WatchOption) error {
	var cfg watchConfig
	for _, o := range opts {
		o(&cfg)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch KV bucket %s: %w", fanout.ShapesBucket, err)
	}
	defer w.Stop()
	initial := true
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case e, ok = <-w.Updates():
		}
		switch {
		case !ok:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("watch of KV bucket %s ended (NATS connection closed?)", fanout.ShapesBucket)
		case e == nil:
			if initial && cfg.ready != nil {
				cfg.ready()
			}
			initial = false
		case e.Operation() == jetstream.KeyValueDelete || e.Operation() == jetstream.KeyValuePurge:
			onDelete(e.Key())
		default:
			s, err := decode(e)
			if err != nil {
				log.Error("invalid shape definition skipped; this shape gets no changes until it is fixed or removed", "key", e.Key(), "err", err)
				continue
			}
			onPut(s)
		}
	}
}
