package consumers

import (
	"context"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// deadLetter moves a message that cannot be processed to the dead-letter
// stream (original headers kept, plus the reason and the original subject)
// and marks its shape failed, so it never blocks WAL release and is never
// silently dropped. The caller acks it afterwards. Only a NATS outage longer
// than bus_retry_timeout makes it fail.
func (w *worker) deadLetter(m jetstream.Msg, shape string, f *fanout.Fragment, reason string) error {
	token := shape
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
	out.Header.Set(fanout.HeaderDeadReason, reason)
	out.Header.Set(fanout.HeaderDeadSubject, m.Subject())
	out.Data = m.Data()
	// The original Nats-Msg-Id is kept, so dead-lettering a redelivered
	// message twice stores it once.
	err := w.s.retryBus(w.stopCtx, "publish to "+fanout.DeadLetterStream, func(ctx context.Context) error {
		_, err := w.s.bus.JS.PublishMsg(ctx, out)
		return err
	})
	if err != nil {
		return err
	}
	w.s.m.deadLetters.Inc()
	lsn := m.Headers().Get(fanout.HeaderCommitLSN)
	if f != nil {
		lsn = f.CommitLSN.String()
	}
	w.log.Error("message dead-lettered", "shape", token, "subject", m.Subject(), "commit_lsn", lsn, "reason", reason,
		"stream", fanout.DeadLetterStream)
	if token == "invalid" {
		return nil
	}
	failure := &fanout.ShapeFailure{Shape: token, Partition: w.partition, Reason: reason, CommitLSN: lsn, At: time.Now().UTC()}
	err = w.s.retryBus(w.stopCtx, "mark shape failed in "+fanout.FailedBucket, func(ctx context.Context) error {
		_, err := w.s.bus.Failed.Put(ctx, token, fanout.EncodeJSON(failure))
		return err
	})
	if err != nil {
		// The message is safe in the dead-letter stream; only the status mark is missing.
		w.log.Error("could not mark the shape failed; its message is in the dead-letter stream", "shape", token, "err", err)
	}
	return nil
}
