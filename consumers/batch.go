package consumers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
)

// handle processes one batch in stream order: dead-letters what cannot be
// processed (a whole message when it is unreadable, else each unusable
// fragment under its own shape), drops fragments of removed shapes,
// persists the rest durably, then acks every message. Nothing is acked
// before it is durable.
func (w *worker) handle(writer shapelog.Writer, msgs []jetstream.Msg) error {
	var kept []received
	for _, m := range msgs {
		items, reason := w.classify(m)
		if reason != "" {
			if err := w.deadLetterMessage(m, reason); err != nil {
				return err
			}
			continue
		}
		for i, it := range items {
			reason := ""
			switch {
			case it.Err != nil:
				reason = it.Err.Error()
			case fanout.Partition(it.Shape, w.s.cfg.Bus.Partitions) != w.partition:
				reason = fmt.Sprintf("fragment of shape %s, which is in partition %d, was published on the subject of partition %d",
					it.Shape, fanout.Partition(it.Shape, w.s.cfg.Bus.Partitions), w.partition)
			case w.quarantined[it.Shape] != nil:
				reason = "the shape's log is unusable and the shape is set aside: " + w.quarantined[it.Shape].Error()
			}
			if reason != "" {
				if err := w.deadLetter(m, i, it.Shape, it.Raw, it.Frag, reason); err != nil {
					return err
				}
				continue
			}
			if !w.s.shapes.exists(w.stopCtx, it.Shape) {
				w.s.m.removedDrop.Inc()
				w.log.Debug("dropping a fragment of a removed shape", "shape", it.Shape, "commit_lsn", it.Frag.CommitLSN.String(), "seq", it.Frag.Seq)
				continue
			}
			kept = append(kept, received{m, i, it.Frag})
		}
	}
	for len(kept) > 0 {
		err := w.persist(writer, fragments(kept))
		var shapeErr *shapelog.ShapeError
		if !errors.As(err, &shapeErr) {
			if err != nil {
				return err
			}
			break
		}
		// One shape's log is unusable: set that shape aside (its fragments
		// go to the dead-letter stream, it is marked failed) and persist
		// the others, rather than fail the partition, which every next
		// owner would do again.
		w.quarantine(shapeErr)
		var rest []received
		for _, r := range kept {
			if r.frag.Shape != shapeErr.Shape {
				rest = append(rest, r)
				continue
			}
			raw, _ := r.frag.Wire()
			if err := w.deadLetter(r.msg, r.index, r.frag.Shape, raw, r.frag, "the shape's log is unusable: "+shapeErr.Err.Error()); err != nil {
				return err
			}
		}
		kept = rest
	}
	if w.stopCtx.Err() != nil {
		return nil // the partition moved while persisting: the next owner acks
	}
	if err := w.ack(msgs); err != nil {
		return err
	}
	w.announce(kept)
	if c := w.s.compactor; c != nil {
		c.observe(fragments(kept))
	}
	return nil
}

// received is a fragment and the message it came in (its index-th).
type received struct {
	msg   jetstream.Msg
	index int
	frag  *fanout.Fragment
}

func fragments(rs []received) []*fanout.Fragment {
	fs := make([]*fanout.Fragment, len(rs))
	for i, r := range rs {
		fs[i] = r.frag
	}
	return fs
}

// quarantine sets a shape aside for the life of this worker: its fragments
// are dead-lettered without touching its log. The next owner of the
// partition finds the log unusable at its first batch and does the same.
func (w *worker) quarantine(e *shapelog.ShapeError) {
	if w.quarantined == nil {
		w.quarantined = map[string]error{}
	}
	w.quarantined[e.Shape] = e.Err
	w.s.m.quarantined.Inc()
	w.log.Error("shape set aside: its log is unusable; its fragments go to the dead-letter stream and it is marked failed (remove the shape, or move its log away and re-add it)",
		"shape", e.Shape, "err", e.Err, "stream", fanout.DeadLetterStream)
}

// announce tells readers (the HTTP API's held live requests) which shape
// logs grew readable, one core NATS notice per shape, after the batch is
// durable and acked. A log grows readable only when a transaction in it is
// complete (shapelog.ReadLog): a fragment that ends its transaction does
// that, and so may one that starts a new transaction (an earlier one whose
// end was dead-lettered is complete then); the first fragments of a large
// transaction do not, so they wake nobody. A notice is a hint that may be
// lost; a failure to send one is counted, not retried.
func (w *worker) announce(persisted []received) {
	last := map[string]fanout.Position{}
	for _, r := range persisted {
		if r.frag.Last || r.frag.Seq == 0 {
			last[r.frag.Shape] = r.frag.Position()
		}
	}
	for shape, pos := range last {
		if err := w.s.nc.Publish(fanout.NoticeSubject(shape), []byte(pos.String())); err != nil {
			w.s.m.noticeErrors.Inc()
		}
	}
}

// classify decodes a message into its fragments; a non-empty reason means
// the message as a whole must be dead-lettered.
func (w *worker) classify(m jetstream.Msg) (items []fanout.Item, reason string) {
	p, err := fanout.ParseSubject(m.Subject())
	if err != nil {
		return nil, err.Error()
	}
	if p != w.partition {
		return nil, fmt.Sprintf("subject %s is of partition %d, delivered to the consumer of partition %d", m.Subject(), p, w.partition)
	}
	if meta, err := m.Metadata(); err == nil && meta.NumDelivered > uint64(w.s.cfg.Consumer.MaxDeliver) {
		return nil, fmt.Sprintf("delivered %d times without being persisted (consumer.max_deliver is %d)", meta.NumDelivered, w.s.cfg.Consumer.MaxDeliver)
	}
	if items, err = fanout.DecodeMessage(p, m.Data()); err != nil {
		return nil, err.Error()
	}
	return items, ""
}

// persist appends frags durably (one Append, one journal fsync, however
// many shapes the batch names: the writer bounds its open files itself), retrying a storage failure max_deliver
// times with backoff; after that the storage is broken and the error is fatal.
func (w *worker) persist(writer shapelog.Writer, frags []*fanout.Fragment) error {
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		start := time.Now()
		st, err := writer.Append(w.stopCtx, frags)
		if w.stopCtx.Err() != nil {
			return w.stopCtx.Err() // moved away: whatever happened, the next owner redoes it
		}
		if err == nil {
			w.s.m.fsync.Observe(time.Since(start).Seconds())
			w.s.m.fragments.Add(float64(st.Appended))
			w.s.m.changes.Add(float64(st.Changes))
			w.s.m.duplicates.Add(float64(st.Skipped))
			w.s.m.orphans.Add(float64(st.Orphans))
			w.s.m.reopens.Add(float64(st.Reopened))
			return nil
		}
		var shapeErr *shapelog.ShapeError
		if errors.Is(err, shapelog.ErrFenced) || errors.As(err, &shapeErr) {
			return err // retrying cannot help
		}
		if attempt >= w.s.cfg.Consumer.MaxDeliver {
			return fmt.Errorf("storage failed %d times in a row (consumer.max_deliver): %w; check storage.dir %s (disk full, permissions, volume unmounted)",
				attempt, err, w.s.cfg.Storage.Dir)
		}
		w.log.Warn("storage write failed; retrying the batch", "attempt", attempt, "err", err, "retry_in", backoff)
		if !sleep(w.stopCtx, backoff) {
			return w.stopCtx.Err()
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// ack acks every message of a persisted batch; the last ack waits for the
// server, and acks are sent in order, so the batch is acked when it returns
// nil. It returns errAckFailed when an ack failed or was not confirmed.
func (w *worker) ack(msgs []jetstream.Msg) error {
	for i, m := range msgs {
		var err error
		if i == len(msgs)-1 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = m.DoubleAck(ctx)
			cancel()
		} else {
			err = m.Ack()
		}
		if err != nil {
			return fmt.Errorf("%w: %s: %w", errAckFailed, m.Subject(), err)
		}
	}
	return nil
}
