package ingest

import (
	"sync"

	"github.com/jackc/pglogrepl"
)

// Tracker computes the published LSN: the end of the longest prefix of
// transactions, in commit order, whose every publish JetStream has acked.
// It does no I/O; it is safe for concurrent use (acks arrive on another
// goroutine than the one that begins and commits transactions).
type Tracker struct {
	mu        sync.Mutex
	queue     []*Txn // begun, not yet counted as published; commit order
	published pglogrepl.LSN
	// changed is signalled (without blocking) whenever published moves.
	changed chan struct{}
}

// Txn is one transaction's publish bookkeeping.
type Txn struct {
	t           *Tracker
	outstanding int
	committed   bool
	end         pglogrepl.LSN
}

// NewTracker starts at published, the position everything before which was
// already handled (the slot's confirmed position at start).
func NewTracker(published pglogrepl.LSN) *Tracker {
	return &Tracker{published: published, changed: make(chan struct{}, 1)}
}

// Changed is signalled when Published moves.
func (t *Tracker) Changed() <-chan struct{} { return t.changed }

// Published is the LSN through which every transaction is in JetStream.
func (t *Tracker) Published() pglogrepl.LSN {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.published
}

// Open reports how many transactions are begun and not yet published.
func (t *Tracker) Open() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.queue)
}

// Begin registers the next transaction in commit order.
func (t *Tracker) Begin() *Txn {
	t.mu.Lock()
	defer t.mu.Unlock()
	x := &Txn{t: t}
	t.queue = append(t.queue, x)
	return x
}

// Add counts one more publish of x awaiting its ack.
func (x *Txn) Add() {
	x.t.mu.Lock()
	x.outstanding++
	x.t.mu.Unlock()
}

// Done counts one publish of x as acked.
func (x *Txn) Done() {
	x.t.mu.Lock()
	defer x.t.mu.Unlock()
	x.outstanding--
	x.t.advance()
}

// Commit marks x complete at end (its commit's end LSN): no more publishes follow.
func (x *Txn) Commit(end pglogrepl.LSN) {
	x.t.mu.Lock()
	defer x.t.mu.Unlock()
	x.committed, x.end = true, end
	x.t.coalesce(x)
	x.t.advance()
}

// coalesce folds x, when it is the newest entry and complete (it touched no
// shape, or all its publishes are acked), into the complete entry before it:
// both only wait for the same earlier transaction. Behind a publish that is
// being retried the queue then holds one entry per run of such transactions,
// not one per transaction. Called with mu held.
func (t *Tracker) coalesce(x *Txn) {
	n := len(t.queue)
	if n < 2 || t.queue[n-1] != x || !x.complete() || !t.queue[n-2].complete() {
		return
	}
	prev := t.queue[n-2]
	prev.end = max(prev.end, x.end)
	t.queue[n-1] = nil
	t.queue = t.queue[:n-1]
}

func (x *Txn) complete() bool { return x.committed && x.outstanding == 0 }

// Idle moves published to walEnd (a keepalive's server WAL end) when no
// transaction is open or awaiting acks: everything before walEnd was sent
// and handled. It reports whether it moved.
func (t *Tracker) Idle(walEnd pglogrepl.LSN) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.queue) > 0 || walEnd <= t.published {
		return false
	}
	t.set(walEnd)
	return true
}

// Abandon drops transactions that will never commit in this session (the
// replication connection broke mid-transaction); Postgres sends them again.
// Committed ones keep their place.
func (t *Tracker) Abandon() {
	t.mu.Lock()
	defer t.mu.Unlock()
	kept := t.queue[:0]
	for _, x := range t.queue {
		if x.committed {
			kept = append(kept, x)
		}
	}
	t.queue = kept
	t.advance()
}

// Reset starts over at lsn, the start of a new slot: transactions of the
// old stream still awaiting acks no longer hold the published LSN back
// (their shapes were replaced), and the published LSN may go back (a new
// timeline, another system).
func (t *Tracker) Reset(lsn pglogrepl.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.queue)
	t.queue = t.queue[:0]
	t.set(lsn)
}

// advance pops the completed prefix. Called with mu held.
func (t *Tracker) advance() {
	n := 0
	for n < len(t.queue) && t.queue[n].complete() {
		if t.queue[n].end > t.published {
			t.set(t.queue[n].end)
		}
		n++
	}
	if n > 0 {
		t.queue = append(t.queue[:0], t.queue[n:]...)
	}
}

func (t *Tracker) set(lsn pglogrepl.LSN) {
	t.published = lsn
	select {
	case t.changed <- struct{}{}:
	default:
	}
}
