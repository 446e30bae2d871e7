package shapeapi

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// The watermark of an up-to-date message (global_last_seen_lsn) must be
// true: every transaction at or below it that touches the shape is in the
// shape's readable log (pglite-sync drops later changes at or below it).
// It must also not lag what has been served elsewhere: pglite-sync commits
// a transaction only when every shape's up-to-date has passed it, and it
// asks the other shapes for one (a non-live read) right after data arrives
// on one. So a watermark is the highest of three true bounds:
//
//   - the log's own last transaction (Watermark: everything before it is in
//     the log, the partition being handled in commit order);
//   - flushd's safe LSN (everything below it is persisted everywhere);
//   - the shape's partition mark, read from JetStream: ingest's published
//     LSN (read first) or the commit LSN of the oldest message still
//     waiting in the shape's partition, whichever is lower. Below it,
//     everything of that partition is persisted. It runs ahead of the safe
//     LSN by flushd's poll interval and by every other partition's backlog.
//
// The safe LSN and the mark are read before the log (floor): what a
// consumer persists after the read began may be above them, never below.
// A mark read after the log would be false: the consumer may persist and
// ack a transaction between the two reads, and the answer would then say
// up to date past a transaction it does not hold (pglite-sync drops it
// when it comes: TestPGliteSyncResumesAcrossCompactions lost two
// transactions of one table that way, in about one run of three).
//
// A non-live read at the end of a log that brings nothing new (the refresh
// pglite-sync makes of every other shape once data arrived on one) waits,
// a bounded time, for its partition mark to pass the newest transaction
// this server has served from any log (pglite-sync waits for exactly
// that), reading its floor and then its log again each time (serveLog),
// instead of answering with a lower watermark that would hold the client
// for a long poll.

// markTTL is how long a partition mark is reused: requests at the end of
// many shapes of one partition share one pair of JetStream reads.
const markTTL = 10 * time.Millisecond

// markWait bounds how long a non-live read at the end of a log waits for
// its watermark to pass what was served (about ten of ingest's progress
// writes at the default ingest.progress_interval).
const markWait = time.Second

// watermarks computes up-to-date watermarks (see above).
type watermarks struct {
	safe   atomic.Uint64 // flushd's safe LSN, from a KV watch
	served atomic.Uint64 // newest commit LSN read from any log by this server

	stream     jetstream.Stream
	state      jetstream.KeyValue
	partitions int

	mu    sync.Mutex
	marks map[int]*partitionMark
}

// partitionMark is a cached mark of one partition; ready closes when lsn
// and err are set (requests arriving meanwhile wait for the same reads).
type partitionMark struct {
	read  time.Time
	ready chan struct{}
	lsn   pglogrepl.LSN
	err   error
}

func newWatermarks(bus *fanout.Bus, partitions int) *watermarks {
	return &watermarks{stream: bus.Stream, state: bus.State, partitions: partitions, marks: map[int]*partitionMark{}}
}

// reset forgets every LSN seen: after a new replication slot the stream's
// positions may be lower (a failover to a standby), and a watermark of the
// old stream would hold non-live reads for ever.
func (m *watermarks) reset() {
	m.safe.Store(0)
	m.served.Store(0)
	m.mu.Lock()
	m.marks = map[int]*partitionMark{}
	m.mu.Unlock()
}

// saw records that a log holding a complete transaction at lsn was read.
func (m *watermarks) saw(lsn pglogrepl.LSN) {
	for {
		cur := m.served.Load()
		if uint64(lsn) <= cur || m.served.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

// floor is what a watermark of handle's log may say from what is known
// before the log is read: flushd's safe LSN and the shape's partition mark
// (as an LSN below which everything is persisted). Read it, then the log.
func (m *watermarks) floor(ctx context.Context, handle string) pglogrepl.LSN {
	w := pglogrepl.LSN(m.safe.Load())
	if mark, err := m.mark(ctx, fanout.Partition(handle, m.partitions)); err == nil && mark > w {
		w = mark
	}
	return w
}

// forLog is the watermark of a read that reached the end of a shape's log
// whose last transaction committed at last (0: none); floor was read
// before the log was.
func (m *watermarks) forLog(last, floor pglogrepl.LSN) pglogrepl.LSN {
	return m.forHeldLog(last, 0, floor)
}

// forHeldLog is forLog for a log that holds back records from commit LSN
// held on (0: none; shapelog.ReadLogHeld): the watermark stays below held,
// since those records are served later with their own LSNs, and a client
// drops changes at or below a watermark it was handed (pglite-sync).
func (m *watermarks) forHeldLog(last, held, floor pglogrepl.LSN) pglogrepl.LSN {
	w := Watermark(last, floor)
	if held > 0 && w >= held {
		// Below held, above the log's last commit (a held record is a
		// later transaction's, more than a byte further).
		return max(Watermark(last, 0), held-1)
	}
	return w
}

// mark is partition p's mark: everything of p below it is persisted.
func (m *watermarks) mark(ctx context.Context, p int) (pglogrepl.LSN, error) {
	m.mu.Lock()
	pm := m.marks[p]
	if pm != nil {
		select {
		case <-pm.ready:
			if time.Since(pm.read) > markTTL {
				pm = nil // stale: read again
			}
		default: // being read: wait for it
		}
	}
	if pm == nil {
		pm = &partitionMark{read: time.Now(), ready: make(chan struct{})}
		m.marks[p] = pm
		m.mu.Unlock()
		pm.lsn, pm.err = m.readMark(ctx, p)
		close(pm.ready)
		return pm.lsn, pm.err
	}
	m.mu.Unlock()
	select {
	case <-pm.ready:
		return pm.lsn, pm.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// markReadTimeout bounds the JetStream reads of one mark: a watermark that
// cannot be raised falls back to the others, it never holds a response.
const markReadTimeout = 2 * time.Second

// readMark reads ingest's published LSN, then the oldest message waiting in
// partition p (a message published after the first read commits at or
// above it, so it cannot be missed).
func (m *watermarks) readMark(ctx context.Context, p int) (pglogrepl.LSN, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markReadTimeout)
	defer cancel()
	e, err := m.state.Get(ctx, fanout.KeyIngestPublished)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", fanout.KeyIngestPublished, err)
	}
	prog, err := fanout.DecodeIngestProgress(e.Value())
	if err != nil {
		return 0, err
	}
	msg, err := m.stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(fanout.Subject(p)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return prog.PublishedLSN, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the oldest message of partition %d: %w", p, err)
	}
	oldest, err := pglogrepl.ParseLSN(msg.Header.Get(fanout.HeaderCommitLSN))
	if err != nil {
		return 0, fmt.Errorf("oldest message of partition %d: header %s: %w", p, fanout.HeaderCommitLSN, err)
	}
	return min(oldest, prog.PublishedLSN), nil
}
