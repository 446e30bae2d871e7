package ingest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapestate"
)

// The continuity check while a session streams: every
// ingest.continuity_check_interval, and at once when a shape uses a table
// no shape used before. A break of the whole stream ends the session (its
// successor resyncs before it streams); tables leaving or rejoining the
// publication are handled here, without stopping the stream. It also
// follows the last reset's snapshots until they are all ready.

// tableSet counts the shapes of each table. The router writes it (it sees
// every shape change), the checks read it.
type tableSet struct {
	mu    sync.Mutex
	count map[string]int
	added chan struct{} // a table got its first shape
}

func newTableSet() *tableSet {
	return &tableSet{count: map[string]int{}, added: make(chan struct{}, 1)}
}

func (t *tableSet) add(table string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.count[table]++
	first := t.count[table] == 1
	t.mu.Unlock()
	if first {
		select {
		case t.added <- struct{}{}:
		default:
		}
	}
}

func (t *tableSet) remove(table string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	if t.count[table]--; t.count[table] <= 0 {
		delete(t.count, table)
	}
	t.mu.Unlock()
}

// list is the shaped tables, sorted.
func (t *tableSet) list() []string {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	out := make([]string, 0, len(t.count))
	for table := range t.count {
		out = append(out, table)
	}
	t.mu.Unlock()
	slices.Sort(out)
	return out
}

// watchContinuity runs the checks until ctx ends. It returns an error
// only in stop mode (ingest.on_continuity_break: stop), which ends ingest.
func (s *Service) watchContinuity(ctx context.Context) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	tick := time.NewTicker(s.cfg.Ingest.ContinuityCheckInterval)
	defer tick.Stop()
	var warned time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-s.tables.added:
		}
		if err := s.followResync(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("cannot follow the resync's snapshots; trying again at the next check", "err", err)
		}
		if !s.streaming.Load() {
			continue // the session's start checks
		}
		if conn == nil || conn.IsClosed() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			c, err := pgx.Connect(cctx, s.cfg.Postgres.URL)
			cancel()
			if err != nil {
				if time.Since(warned) > time.Minute {
					warned = time.Now()
					s.log.Warn("continuity check cannot connect to Postgres; trying again at the next check", "err", err)
				}
				continue
			}
			conn = c
		}
		err := s.checkRunning(ctx, conn)
		var fatal errFatal
		switch {
		case errors.As(err, &fatal):
			return err
		case err != nil && ctx.Err() == nil:
			if time.Since(warned) > time.Minute {
				warned = time.Now()
				s.log.Warn("continuity check failed; trying again at the next check", "err", err)
			}
			conn.Close(context.Background())
			conn = nil
		}
	}
}

// checkRunning is one check while streaming.
func (s *Service) checkRunning(ctx context.Context, conn *pgx.Conn) error {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	rec, err := s.recorded(cctx)
	if err != nil {
		return err
	}
	obs, err := readObserved(cctx, conn, nil, s.cfg.Postgres.Slot, s.cfg.Postgres.Publication, s.tables.list(), rec.Identity)
	if err != nil {
		return err
	}
	v, err := Check(rec, obs, s.cfg.Ingest.SafeWALWarnBytes)
	if err != nil {
		return errFatal{fmt.Errorf("replication slot %s: %w", s.cfg.Postgres.Slot, err)}
	}
	s.reportWarning(cctx, v, obs)
	switch {
	case v.First:
		return nil // ingest_published was deleted under a running ingest: it is written again
	case v.Break != nil:
		s.log.Warn("continuity check found a break of the stream; the replication session restarts to resync", "cause", v.Break.Cause, "detail", v.Break.Detail)
		select {
		case s.breakSeen <- struct{}{}:
		default:
		}
		return nil
	}
	if err := s.onTables(cctx, obs, v.Missing, v.Resync); err != nil {
		return err
	}
	return s.book.checked(cctx)
}

// followResync counts the last reset's shapes whose snapshot is not ready
// yet (the gauge fanout_ingest_shapes_resyncing, fanoutctl status) until
// none is left.
func (s *Service) followResync(ctx context.Context) error {
	r := s.book.lastReset()
	if r == nil || !r.ResyncedAt.IsZero() {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resyncing, failed, err := s.countResyncing(cctx, r.FirstRevision, r.LastRevision)
	if err != nil {
		return err
	}
	if resyncing == r.Resyncing && failed == r.Failed {
		return nil
	}
	if err := s.book.progress(cctx, resyncing, failed); err != nil {
		return err
	}
	if resyncing == 0 {
		s.log.Info("resync complete: the snapshots of the shapes replaced by the last reset are ready",
			"cause", r.Cause, "shapes", r.Replaced, "failed", failed, "since_break", time.Since(r.At).Round(time.Millisecond))
	}
	return nil
}

// countResyncing counts the shapes of shapes-bucket revisions first to
// last (a reset's replacements) that still exist, by snapshot state: not
// ready yet, and failed.
func (s *Service) countResyncing(ctx context.Context, first, last uint64) (resyncing, failed int, err error) {
	w, err := s.bus.Shapes.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return 0, 0, fmt.Errorf("list KV bucket %s: %w", fanout.ShapesBucket, err)
	}
	defer w.Stop()
	var handles []string
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case e := <-w.Updates():
			if e == nil {
				done = true
			} else if e.Revision() >= first && e.Revision() <= last {
				handles = append(handles, e.Key())
			}
		}
	}
	kv, err := shapestate.Open(ctx, s.bus.JS)
	if err != nil {
		return 0, 0, err
	}
	states, err := shapestate.List(ctx, kv)
	if err != nil {
		return 0, 0, err
	}
	for _, h := range handles {
		switch st := states[h]; {
		case st != nil && st.Phase == shapestate.Ready:
		case st != nil && st.Phase == shapestate.Failed:
			failed++
		default:
			resyncing++
		}
	}
	return resyncing, failed, nil
}
