package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// shapeEvent is a shape change, or the marker that the initial set is complete.
type shapeEvent struct {
	update      ShapeUpdate
	initialDone bool
}

// shapeWatcher follows the shapes bucket. For every new shape it first sets
// REPLICA IDENTITY FULL on its table (when configured), then hands it on.
type shapeWatcher struct {
	kv       jetstream.KeyValue
	pgURL    string
	identity bool
	log      *slog.Logger
	out      chan<- shapeEvent

	conn *pgx.Conn // for ALTER TABLE; opened on first use
	full map[string]bool
}

func (w *shapeWatcher) run(ctx context.Context) error {
	defer func() {
		if w.conn != nil {
			w.conn.Close(context.Background())
		}
	}()
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
			w.ensureFull(ctx, s.Table)
			for _, t := range s.Tables {
				// Subqueries' tables too: ingest keeps their results from
				// the stream, and rebuilds them after a restart from the
				// old rows of the changes it decodes again.
				w.ensureFull(ctx, t.Table)
			}
			ev.update = ShapeUpdate{Handle: s.Handle, Shape: s, Revision: e.Revision()}
		}
		select {
		case w.out <- ev:
		case <-ctx.Done():
			return nil
		}
	}
}

// ensureFull sets REPLICA IDENTITY FULL on table once. A failure is logged,
// not fatal: the shape still gets inserts and updates, but moves out of it
// and deletes carry only the key.
func (w *shapeWatcher) ensureFull(ctx context.Context, table string) {
	if !w.identity || w.full[table] {
		return
	}
	if w.conn == nil || w.conn.IsClosed() {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := pgx.Connect(cctx, w.pgURL)
		cancel()
		if err != nil {
			w.log.Error("cannot connect to Postgres to set REPLICA IDENTITY FULL; will try again on the next shape", "table", table, "err", err)
			return
		}
		// ALTER TABLE waits for a lock behind running transactions: bound it.
		if _, err := conn.Exec(ctx, "SET lock_timeout = '10s'"); err != nil {
			w.log.Warn("SET lock_timeout failed", "err", err)
		}
		w.conn = conn
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := SetReplicaIdentityFull(actx, w.conn, table); err != nil {
		w.log.Error("REPLICA IDENTITY FULL not set; deletes and moves out of its shapes carry only the key", "table", table, "err", err)
		return
	}
	w.full[table] = true
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
