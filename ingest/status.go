package ingest

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// SafeHolder keeps the latest safe LSN flushd published.
type SafeHolder struct {
	mu      sync.Mutex
	lsn     pglogrepl.LSN
	known   bool
	changed chan struct{}
}

// NewSafeHolder returns a holder that knows no safe LSN yet.
func NewSafeHolder() *SafeHolder { return &SafeHolder{changed: make(chan struct{}, 1)} }

// Set records a safe LSN read from the state bucket.
func (h *SafeHolder) Set(lsn pglogrepl.LSN) {
	h.mu.Lock()
	moved := !h.known || lsn != h.lsn
	h.lsn, h.known = lsn, true
	h.mu.Unlock()
	if moved {
		select {
		case h.changed <- struct{}{}:
		default:
		}
	}
}

// Get returns the safe LSN (0 until flushd published one).
func (h *SafeHolder) Get() pglogrepl.LSN {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lsn
}

// Changed is signalled when the safe LSN changes.
func (h *SafeHolder) Changed() <-chan struct{} { return h.changed }

// Confirm is the position ingest may report to Postgres: it never goes
// back, and never passes the safe LSN nor what ingest itself published.
func Confirm(prev, safe, published pglogrepl.LSN) pglogrepl.LSN {
	return max(prev, min(safe, published))
}

// statusSender answers the server: at once when a keepalive asks, when the
// safe LSN changes, and at least every interval. It is the only writer on
// the replication connection (the receiver only reads).
type statusSender struct {
	conn     *pgconn.PgConn
	safe     *SafeHolder
	tracker  *Tracker
	interval time.Duration
	poke     chan struct{}
	metrics  *Metrics
	// hold, when set and not 0, is a position confirmation must not pass
	// (an open move-in: subqueries.go).
	hold func() pglogrepl.LSN

	mu        sync.Mutex
	confirmed pglogrepl.LSN
}

func newStatusSender(conn *pgconn.PgConn, safe *SafeHolder, tracker *Tracker, confirmed pglogrepl.LSN, interval time.Duration, m *Metrics) *statusSender {
	return &statusSender{conn: conn, safe: safe, tracker: tracker, interval: interval, poke: make(chan struct{}, 1), metrics: m, confirmed: confirmed}
}

// requestReply asks for a status update now (non-blocking).
func (s *statusSender) requestReply() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// Confirmed is the last position sent.
func (s *statusSender) Confirmed() pglogrepl.LSN {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.confirmed
}

// run sends until ctx ends; it returns the send error that ended it, if any.
func (s *statusSender) run(ctx context.Context) error {
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	if err := s.send(ctx); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-s.poke:
		case <-s.safe.Changed():
		}
		if err := s.send(ctx); err != nil {
			return err
		}
	}
}

// send reports the confirmed position as written, flushed and applied.
func (s *statusSender) send(ctx context.Context) error {
	s.mu.Lock()
	safe := s.safe.Get()
	if s.hold != nil {
		if h := s.hold(); h != 0 {
			safe = min(safe, h)
		}
	}
	s.confirmed = Confirm(s.confirmed, safe, s.tracker.Published())
	pos := s.confirmed
	s.mu.Unlock()
	s.metrics.ConfirmedLSN.Set(float64(pos))
	return pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos,
	})
}
