package consumers

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// deadLetter moves the index-th fragment of m, which cannot be processed,
// to the dead-letter stream (raw, its bytes, as the body; m's headers kept,
// plus the reason and the original subject) and marks its shape failed, so
// it never blocks WAL release and is never silently dropped, and the other
// fragments of m go on. The caller acks m afterwards. Only a NATS outage
// longer than bus_retry_timeout makes it fail.
func (w *worker) deadLetter(m jetstream.Msg, index int, shape string, raw []byte, f *fanout.Fragment, reason string) error {
	lsn := m.Headers().Get(fanout.HeaderCommitLSN)
	if f != nil {
		lsn = f.CommitLSN.String()
	}
	// The message's Nats-Msg-Id and the fragment's index: dead-lettering a
	// redelivered message again stores each fragment once.
	id := m.Headers().Get(fanout.HeaderMsgID) + "#" + strconv.Itoa(index)
	return w.moveToDeadLetters(m, raw, id, []string{shape}, lsn, reason)
}

// deadLetterMessage moves a whole message that cannot be read as fragments
// (or was delivered too often) to the dead-letter stream, and marks failed
// every shape it can tell the message holds.
func (w *worker) deadLetterMessage(m jetstream.Msg, reason string) error {
	var shapes []string
	if items, err := fanout.DecodeMessage(w.partition, m.Data()); err == nil {
		seen := map[string]bool{}
		for _, it := range items {
			if it.Shape != "" && !seen[it.Shape] {
				seen[it.Shape] = true
				shapes = append(shapes, it.Shape)
			}
		}
	}
	if len(shapes) == 0 {
		shapes = []string{m.Headers().Get(fanout.HeaderShape)}
	}
	return w.moveToDeadLetters(m, m.Data(), m.Headers().Get(fanout.HeaderMsgID), shapes, m.Headers().Get(fanout.HeaderCommitLSN), reason)
}

// moveToDeadLetters publishes body to the dead-letter subject of the first
// of shapes (or "invalid") and marks every valid one of shapes failed.
func (w *worker) moveToDeadLetters(m jetstream.Msg, body []byte, id string, shapes []string, lsn, reason string) error {
	token := shapes[0]
	if fanout.ValidateHandle(token) != nil {
		token = "invalid"
	}
	out := nats.NewMsg(fanout.DeadLetterSubject(w.partition, token))
	for k, vs := range m.Headers() {
		// Nats-Expected-* were conditions on the FANOUT stream (ingest sets
		// Nats-Expected-Last-Sequence); the dead-letter stream would refuse them.
		if !strings.HasPrefix(k, "Nats-Expected-") {
			out.Header[k] = append([]string(nil), vs...)
		}
	}
	if id != "" {
		out.Header.Set(fanout.HeaderMsgID, id)
	}
	out.Header.Set(fanout.HeaderDeadReason, reason)
	out.Header.Set(fanout.HeaderDeadSubject, m.Subject())
	out.Data = body
	err := w.s.retryBus(w.stopCtx, "publish to "+fanout.DeadLetterStream, func(ctx context.Context) error {
		_, err := w.s.bus.JS.PublishMsg(ctx, out)
		return err
	})
	if err != nil {
		return err
	}
	w.s.m.deadLetters.Inc()
	w.log.Error("dead-lettered", "shape", token, "subject", m.Subject(), "commit_lsn", lsn, "reason", reason,
		"stream", fanout.DeadLetterStream)
	for _, shape := range shapes {
		if fanout.ValidateHandle(shape) != nil {
			continue
		}
		failure := &fanout.ShapeFailure{Shape: shape, Partition: w.partition, Reason: reason, CommitLSN: lsn, At: time.Now().UTC()}
		err = w.s.retryBus(w.stopCtx, "mark shape failed in "+fanout.FailedBucket, func(ctx context.Context) error {
			_, err := w.s.bus.Failed.Put(ctx, shape, fanout.EncodeJSON(failure))
			return err
		})
		if err != nil {
			// The fragment is safe in the dead-letter stream; only the status mark is missing.
			w.log.Error("could not mark the shape failed; its fragment is in the dead-letter stream", "shape", shape, "err", err)
		}
	}
	return nil
}
