package shapeapi

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/fanout/pipeline/fanout"
)

// Replication continuity (guarantee 7): ingest reports in the state bucket
// (fanout.KeyContinuity) when the replication stream broke. While it is
// broken for a shape's table, that shape's log misses changes: it is not
// served (503, the client retries) and never answered up to date. Ingest
// then replaces the shape by a new one (shapes.Replace): the old handle is
// removed, so its clients get 409 and the new handle, whose snapshot is
// served once ready. /v1/health is not active meanwhile.

// continuityView is the last continuity report read (nil: none yet).
type continuityView struct {
	cur atomic.Pointer[fanout.Continuity]
}

// stale is errNotReady while the shape's table is in a break of continuity.
func (s *Server) stale(sh *fanout.Shape) error {
	c := s.continuity.cur.Load()
	if c.Current(sh.Table) {
		return nil
	}
	return &staleShape{table: sh.Table, cause: c.Break.Cause, err: fmt.Errorf("%w: replication continuity is broken for table %s since %s (%s: %s): shape %s misses changes; it is resynced (a new handle, clients get 409) as soon as ingest can",
		errNotReady, sh.Table, c.Break.At.Format(time.RFC3339), c.Break.Cause, c.Break.Detail, sh.Handle)}
}

// staleShape is a shape not served while its table is in a break of
// continuity. Its 503 names the break's cause (one of fanout's fixed codes)
// and the table the client asked for; the detail stays in the log.
type staleShape struct {
	table, cause string
	err          error
}

func (e *staleShape) Error() string { return e.err.Error() }
func (e *staleShape) Unwrap() error { return e.err }

func (e *staleShape) body() []byte {
	return errorBody(fmt.Sprintf("Replication continuity is broken for table %s (%s): its shapes are not served until they are resynced under a new handle; retry after the retry-after delay", e.table, e.cause))
}

// currentData says whether every shape is served from a continuous stream
// with its snapshot ready, and why not: the health check's question.
func (s *Server) currentData() (bool, string) {
	c := s.continuity.cur.Load()
	switch {
	case c == nil || c.State == fanout.Continuous:
		return true, ""
	case c.State == fanout.Broken:
		return false, "replication continuity broken (" + c.Break.Cause + ")"
	}
	return false, "shapes resyncing after a replication reset"
}

// watchContinuity follows the continuity report until ctx ends.
func (s *Server) watchContinuity(ctx context.Context) error {
	return s.followStateKey(ctx, fanout.KeyContinuity, "the continuity report", func(value []byte) {
		c, err := fanout.DecodeContinuity(value)
		if err != nil {
			s.log.Error("continuity report in the state bucket is invalid; ignored (is ingest of the same version?)", "err", err)
			return
		}
		s.onContinuity(s.continuity.cur.Swap(c), c)
	})
}

// onContinuity acts on a new report: held requests of shapes it makes
// stale answer now (503, not up to date at their timeout), and after a new
// slot the watermarks start over (the new stream's positions may be lower:
// a failover to a standby).
func (s *Server) onContinuity(prev, c *fanout.Continuity) {
	if c.State == fanout.Broken && (prev == nil || prev.State != fanout.Broken || !sameTables(prev.Break, c.Break)) {
		s.log.Warn("replication continuity broken: shapes in its scope are not served until they are resynced",
			"cause", c.Break.Cause, "detail", c.Break.Detail, "tables", c.Break.Tables)
		s.shapes.mu.RLock()
		var wake []string
		for h, sh := range s.shapes.known {
			if c.Break.Affects(sh.Table) {
				wake = append(wake, h)
			}
		}
		s.shapes.mu.RUnlock()
		for _, h := range wake {
			s.hub.wake(h)
		}
	}
	if r := c.LastReset; r != nil && r.NewSlotLSN != "" && (prev == nil || prev.Resets != c.Resets) {
		s.marks.reset()
	}
}

func sameTables(a, b *fanout.Break) bool {
	if a == nil || b == nil {
		return a == b
	}
	return fmt.Sprint(a.Tables) == fmt.Sprint(b.Tables)
}
