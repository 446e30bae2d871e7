package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// PublisherOptions bound what is in flight and how long failures are retried.
type PublisherOptions struct {
	MaxInflight      int
	MaxInflightBytes int
	MaxRetries       int
	MaxBackoff       time.Duration
	// Stream, when set, is watched so that publishes wait for room
	// instead of being refused by a full stream.
	Stream jetstream.Stream
	// Failed, when set, is where a shape is marked failed when one of its
	// fragments is too large to publish (see deadLetterOversized).
	Failed jetstream.KeyValue
}

// Publisher sends fragments to the FANOUT stream asynchronously. At most
// MaxInflight publishes (and MaxInflightBytes) await their ack at once;
// Publish waits when full. Each ack is counted on its transaction's Txn.
// A failed publish is sent again, same Nats-Msg-Id, with bounded backoff;
// when the retries are exhausted the publisher fails (Err) for good.
type Publisher struct {
	js      jetstream.JetStream
	opts    PublisherOptions
	log     *slog.Logger
	metrics *Metrics

	mu       sync.Mutex
	inflight int
	bytes    int
	space    chan struct{} // signalled when an in-flight publish resolves
	failed   chan struct{} // closed on the first unrecoverable failure
	failErr  error
	room     *streamRoom // nil: no room check
	retrying bool        // a failed publish is being sent again: hold new ones
	pending  chan pendingPub
	// nextLast is the stream sequence the next publish tells the stream to
	// expect as its last (Nats-Expected-Last-Sequence): the sequence the
	// previous publish will get. So when one publish is lost (a dropped
	// connection, a leader change) every later one is refused too, instead
	// of landing ahead of it: each shape's fragments stay in commit order,
	// which the consumers' position order relies on. ingest is the only
	// publisher to FANOUT (deploy/nats/nats.conf), so the sequences are
	// known ahead; after any retry, the next publish waits for what is in
	// flight and reads the stream's last sequence again (resync), which
	// also recovers from a message someone else published.
	//
	// Not Nats-Expected-Last-Msg-Id: a replicated stream checks that one
	// only when replicas apply the message, and a replica restarted after
	// the stream's last message was acked away (work queue) no longer knows
	// it and stops applying for good (nats-server 2.15.3). Sequence checks
	// happen before the message is proposed. Guarded by mu.
	nextLast uint64
	resync   bool // nextLast is unknown (start, or after a retry)
	// dupsAhead counts the next publishes that the stream already holds
	// (ingest restarted, or Postgres sent a stretch of WAL again): they are
	// sent without the expected-last-sequence header and do not advance
	// nextLast, since JetStream deduplicates them (Nats-Msg-Id) without
	// moving its sequence. Chaining them would have each next publish
	// refused (10071) and sent again alone: catch-up at one round trip per
	// fragment. See probe. Guarded by mu.
	dupsAhead uint64
	// resyncs and resent count resyncs and publishes sent again alone
	// after the stream refused or lost them (each one a round trip with
	// nothing else in flight). Guarded by mu.
	resyncs, resent uint64
	ackerDone       chan struct{}
	abandon         chan struct{} // closed by Close: stop retrying
	closeOnce       sync.Once
}

type pendingPub struct {
	future jetstream.PubAckFuture
	msg    *nats.Msg
	batch  *batch
	size   int
	kind   sendKind
}

// sendKind is how a publish is checked against the stream's sequence.
type sendKind int

const (
	chained     sendKind = iota // expects the previous publish's sequence
	probe                       // first after a resync: chained, and awaited before the next is sent
	presumedDup                 // the stream holds it already: no expectation
)

// NewPublisher starts the goroutine that awaits acks; Close stops it.
func NewPublisher(js jetstream.JetStream, opts PublisherOptions, log *slog.Logger, m *Metrics) *Publisher {
	p := &Publisher{
		js: js, opts: opts, log: log, metrics: m,
		space:     make(chan struct{}, 1),
		failed:    make(chan struct{}),
		resync:    true,
		pending:   make(chan pendingPub, opts.MaxInflight),
		ackerDone: make(chan struct{}),
		abandon:   make(chan struct{}),
	}
	if opts.Stream != nil {
		p.room = &streamRoom{stream: opts.Stream, log: log}
	}
	go p.awaitAcks()
	return p
}

// Replay tells the publisher that what follows may be WAL sent again (a new
// replication session resumes from the confirmed position, behind what was
// published): the next publish resyncs and probes, so a stretch of
// duplicates goes out as such instead of being refused one by one.
func (p *Publisher) Replay() {
	p.mu.Lock()
	p.resync = true
	p.mu.Unlock()
}

// Err is the unrecoverable failure, once there is one.
func (p *Publisher) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failErr
}

// Failed is closed when the publisher failed for good.
func (p *Publisher) Failed() <-chan struct{} { return p.failed }

// Inflight is the number of publishes awaiting an ack.
func (p *Publisher) Inflight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inflight
}

// Publish sends x as one message on its partition's subject; each of its
// transactions counts it until JetStream acks it, and x.onDone is called
// then (or once it is dead-lettered).
func (p *Publisher) Publish(ctx context.Context, x *batch) error {
	first := x.frags[0]
	msg := nats.NewMsg(fanout.Subject(x.partition))
	msg.Data = fanout.EncodeMessage(x.partition, x.bodies)
	msg.Header.Set(fanout.HeaderMsgID, fanout.MsgID(x.partition, x.frags))
	msg.Header.Set(fanout.HeaderCommitLSN, first.CommitLSN.String())
	msg.Header.Set(fanout.HeaderXid, strconv.FormatUint(uint64(first.Xid), 10))
	msg.Header.Set(fanout.HeaderShape, first.Shape)
	msg.Header.Set(fanout.HeaderFragments, strconv.Itoa(len(x.frags)))
	size := len(msg.Data) + 256

	if p.room != nil {
		if err := p.room.wait(ctx, size); err != nil {
			return err
		}
	}
	if err := p.reserve(ctx, size); err != nil {
		return err
	}
	kind, err := p.expectLast(ctx, msg)
	if err != nil {
		p.release(size)
		return err
	}
	x.add()
	fut, err := p.js.PublishMsgAsync(msg)
	if errors.Is(err, nats.ErrMaxPayload) {
		p.unexpect(kind) // refused before sending: the stream's sequence did not move
		p.release(size)
		x.done()
		if len(x.frags) > 1 {
			// Over the server's max_payload with several fragments: send
			// them in two messages (the batcher bounds messages below it,
			// so only a server configured lower than it comes here).
			h1, h2 := x.split()
			if err := p.Publish(ctx, h1); err != nil {
				return err
			}
			return p.Publish(ctx, h2)
		}
		// One fragment this large is one row change this large (the router
		// splits anything else). Retrying cannot help, and failing would
		// pin WAL for ever (the same change comes again after every
		// restart): dead-letter it.
		if err := p.deadLetterOversized(ctx, x.partition, first, msg); err != nil {
			p.fail(err)
			return err
		}
		x.resolved()
		return nil
	}
	if err != nil {
		// Not even sent (for example the reconnect buffer is full): once
		// everything sent before it is resolved, send it synchronously, so
		// it lands after them and before anything published later.
		if werr := p.awaitEarlier(ctx); werr != nil {
			p.release(size)
			return werr
		}
		err := p.retry(ctx, msg, err)
		p.mu.Lock()
		p.resync = true
		p.mu.Unlock()
		if err != nil {
			p.release(size)
			p.fail(err)
			return err
		}
		p.sent(x, len(x.frags))
		p.release(size)
		return nil
	}
	x.frags, x.bodies, x.owners = nil, nil, nil // all in msg now; msg is what a retry sends
	select {
	case p.pending <- pendingPub{future: fut, msg: msg, batch: x, size: size, kind: kind}:
	case <-p.failed:
		return p.Err()
	}
	if kind == probe {
		return p.awaitIdle(ctx) // its ack says whether duplicates lie ahead
	}
	return nil
}

// sent counts x as acked by JetStream.
func (p *Publisher) sent(x *batch, fragments int) {
	p.metrics.Messages.Inc()
	p.metrics.Fragments.Add(float64(fragments))
	x.done()
	x.resolved()
}

// add counts x's message on each of its transactions, until done.
func (x *batch) add() {
	for _, t := range x.txns {
		t.Add()
	}
}

func (x *batch) done() {
	for _, t := range x.txns {
		t.Done()
	}
}

func (x *batch) resolved() {
	if x.onDone != nil {
		x.onDone()
	}
}

// split cuts x into two contiguous halves; the second one resolves x.
func (x *batch) split() (*batch, *batch) {
	half := len(x.frags) / 2
	h1 := &batch{partition: x.partition}
	h2 := &batch{partition: x.partition, onDone: x.onDone}
	for i := range x.frags {
		h := h1
		if i >= half {
			h = h2
		}
		h.append(x.frags[i], x.bodies[i], x.owners[i])
	}
	return h1, h2
}

// deadLetterOversized handles a fragment over the NATS server's
// max_payload: a single row change this large (the router splits anything
// else) cannot be published. Its headers and a body without the changes go
// to the dead-letter stream with the reason, and its shape is marked failed
// in the failed bucket (fanoutctl status shows it): the shape's log misses
// this change and must be rebuilt, but WAL is released and nothing is lost
// silently. It fails only if NATS refuses the dead letter for all retries.
func (p *Publisher) deadLetterOversized(ctx context.Context, partition int, f *fanout.Fragment, msg *nats.Msg) error {
	reason := fmt.Sprintf("fragment is %d bytes, over the NATS server's max_payload: a single row change this large cannot be published; "+
		"its changes are not in this message (re-read them from Postgres by rebuilding the shape; raise max_payload in the NATS server config to carry such rows)",
		len(msg.Data))
	stub := *f
	stub.Changes = []fanout.Change{}
	body, err := stub.Encode()
	if err != nil {
		return fmt.Errorf("encode dead letter of fragment %s: %w", msg.Header.Get(fanout.HeaderMsgID), err)
	}
	out := nats.NewMsg(fanout.DeadLetterSubject(partition, f.Shape))
	for k, vs := range msg.Header {
		// Nats-Expected-* are conditions on the FANOUT stream; the
		// dead-letter stream would refuse the message with them.
		if !strings.HasPrefix(k, "Nats-Expected-") {
			out.Header[k] = append([]string(nil), vs...)
		}
	}
	out.Header.Set(fanout.HeaderDeadReason, reason)
	out.Header.Set(fanout.HeaderDeadSubject, msg.Subject)
	out.Data = body
	// The Nats-Msg-Id is kept: after a restart the same dead letter is stored once.
	if err = p.publishSync(ctx, out); err != nil {
		if err = p.retry(ctx, out, err); err != nil {
			return fmt.Errorf("dead-letter oversized fragment %s: %w", msg.Header.Get(fanout.HeaderMsgID), err)
		}
	}
	p.log.Error("fragment over the NATS max_payload dead-lettered; its shape is marked failed and misses this change",
		"shape", f.Shape, "commit_lsn", f.CommitLSN.String(), "seq", f.Seq, "bytes", len(msg.Data), "stream", fanout.DeadLetterStream)
	if p.opts.Failed == nil {
		return nil
	}
	failure := &fanout.ShapeFailure{Shape: f.Shape, Partition: partition, Reason: reason, CommitLSN: f.CommitLSN.String(), At: time.Now().UTC()}
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = p.opts.Failed.Put(fctx, f.Shape, fanout.EncodeJSON(failure))
	cancel()
	if err != nil {
		// The dead letter is stored; only the status mark is missing.
		p.log.Error("could not mark the shape failed; its oversized fragment is in the dead-letter stream", "shape", f.Shape, "err", err)
	}
	return nil
}

// expectLast sets msg's Nats-Expected-Last-Sequence; at the start and after
// a retry it first waits until nothing else is in flight and reads the
// stream's last sequence, and msg is then the probe: its ack, awaited before
// anything else is sent, tells whether the stream held it already. If it
// did, at sequence s, while the stream's last sequence is l, the next l-s
// publishes are what ingest published after it the last time (ingest is
// the stream's only publisher, and cuts the same WAL into the same
// fragments), so they are sent as presumed duplicates.
func (p *Publisher) expectLast(ctx context.Context, msg *nats.Msg) (sendKind, error) {
	p.mu.Lock()
	resync := p.resync
	if !resync && p.dupsAhead > 0 {
		p.dupsAhead--
		p.mu.Unlock()
		return presumedDup, nil
	}
	p.mu.Unlock()
	kind := chained
	if resync {
		kind = probe
		p.mu.Lock()
		p.resyncs++
		p.mu.Unlock()
		if err := p.awaitEarlier(ctx); err != nil {
			return 0, err
		}
		last, err := p.streamLastSeq(ctx)
		if err != nil {
			return 0, err
		}
		p.mu.Lock()
		p.nextLast, p.resync, p.dupsAhead = last, false, 0
		p.mu.Unlock()
	}
	p.mu.Lock()
	msg.Header.Set(jetstream.ExpectedLastSeqHeader, strconv.FormatUint(p.nextLast, 10))
	p.nextLast++
	p.mu.Unlock()
	return kind, nil
}

// unexpect takes back what expectLast counted for a message that was not
// sent. A probe that was not sent told nothing: the next publish probes.
func (p *Publisher) unexpect(kind sendKind) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch kind {
	case presumedDup:
		p.dupsAhead++ // it was not in the stream the last time either
	case probe:
		p.nextLast--
		p.resync = true
	default:
		p.nextLast--
	}
}

// acked takes what JetStream said of a resolved publish of kind into account.
func (p *Publisher) acked(kind sendKind, msg *nats.Msg, ack *jetstream.PubAck) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case kind == probe && ack.Duplicate:
		p.nextLast-- // the stream did not move
		if p.nextLast > ack.Sequence {
			p.dupsAhead = p.nextLast - ack.Sequence
			p.log.Info("the stream already holds what ingest sends now (a restart, or WAL sent again); sending those publishes as duplicates without a sequence check",
				"duplicates_ahead", p.dupsAhead, "from_msg_id", msg.Header.Get(fanout.HeaderMsgID))
		}
	case kind == chained && ack.Duplicate:
		// The stream did not move: the publishes chained after this one
		// expect one too many and are refused and sent again; the next
		// one resyncs and probes.
		p.resync = true
	case kind == presumedDup && !ack.Duplicate:
		// The stream did not hold it: this run cuts the WAL differently
		// from the last (or another publisher wrote to the stream). The
		// chain is off by this one; resync before the next publish.
		p.log.Warn("a publish presumed to be a duplicate was new to the stream; resyncing the sequence chain",
			"msg_id", msg.Header.Get(fanout.HeaderMsgID), "sequence", ack.Sequence)
		p.resync, p.dupsAhead = true, 0
	}
}

// awaitIdle waits until nothing is in flight.
func (p *Publisher) awaitIdle(ctx context.Context) error {
	for {
		p.mu.Lock()
		n, err := p.inflight, p.failErr
		p.mu.Unlock()
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		select {
		case <-p.space:
		case <-p.failed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// streamLastSeq reads the FANOUT stream's last sequence, retrying with
// backoff up to MaxRetries times.
func (p *Publisher) streamLastSeq(ctx context.Context) (uint64, error) {
	backoff := 100 * time.Millisecond
	var err error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var st jetstream.Stream
		if st, err = p.js.Stream(actx, fanout.StreamName); err == nil {
			var info *jetstream.StreamInfo
			if info, err = st.Info(actx); err == nil {
				cancel()
				return info.State.LastSeq, nil
			}
		}
		cancel()
		if attempt >= p.opts.MaxRetries || ctx.Err() != nil {
			return 0, fmt.Errorf("read the last sequence of stream %s failed %d times, last: %w (check that NATS runs and ingest may read stream info)", fanout.StreamName, attempt, err)
		}
		p.log.Warn("reading the stream's last sequence failed; retrying", "attempt", attempt, "err", err)
		if err := p.pause(ctx, backoff, "read the last sequence of stream "+fanout.StreamName, err); err != nil {
			return 0, err
		}
		backoff = min(2*backoff, p.opts.MaxBackoff)
	}
}

// awaitEarlier waits until the publish being made is the only one in flight.
func (p *Publisher) awaitEarlier(ctx context.Context) error {
	for {
		p.mu.Lock()
		n, err := p.inflight, p.failErr
		p.mu.Unlock()
		if err != nil {
			return err
		}
		if n <= 1 {
			return nil
		}
		select {
		case <-p.space:
		case <-p.failed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// reserve waits until one more publish of size bytes fits in flight.
func (p *Publisher) reserve(ctx context.Context, size int) error {
	for {
		p.mu.Lock()
		if p.failErr != nil {
			err := p.failErr
			p.mu.Unlock()
			return err
		}
		if p.inflight == 0 || (!p.retrying && p.inflight < p.opts.MaxInflight && p.bytes+size <= p.opts.MaxInflightBytes) {
			p.inflight++
			p.bytes += size
			p.metrics.Inflight.Set(float64(p.inflight))
			p.mu.Unlock()
			return nil
		}
		p.mu.Unlock()
		select {
		case <-p.space:
		case <-p.failed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *Publisher) release(size int) {
	p.mu.Lock()
	p.inflight--
	p.bytes -= size
	p.metrics.Inflight.Set(float64(p.inflight))
	p.mu.Unlock()
	select {
	case p.space <- struct{}{}:
	default:
	}
}

func (p *Publisher) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failErr == nil {
		p.failErr = err
		close(p.failed)
	}
}

// awaitAcks resolves publishes in the order they were sent. A failed one is
// retried synchronously before the next is looked at.
func (p *Publisher) awaitAcks() {
	defer close(p.ackerDone)
	for pp := range p.pending {
		if p.Err() != nil {
			p.release(pp.size) // failed for good: nothing more counts
			continue
		}
		select {
		case ack := <-pp.future.Ok():
			p.acked(pp.kind, pp.msg, ack)
		case err := <-pp.future.Err():
			// Hold new publishes while this one is sent again, so that
			// as few as possible land before it.
			p.setRetrying(true)
			p.mu.Lock()
			p.resent++
			p.mu.Unlock()
			rerr := p.retry(context.Background(), pp.msg, err)
			p.mu.Lock()
			p.resync = true
			p.mu.Unlock()
			p.setRetrying(false)
			if rerr != nil {
				p.fail(rerr)
				p.release(pp.size)
				continue
			}
		}
		n, _ := strconv.Atoi(pp.msg.Header.Get(fanout.HeaderFragments))
		p.sent(pp.batch, n)
		p.release(pp.size)
	}
}

func (p *Publisher) setRetrying(on bool) {
	p.mu.Lock()
	p.retrying = on
	p.mu.Unlock()
	if !on {
		select {
		case p.space <- struct{}{}:
		default:
		}
	}
}

// retry sends msg again with backoff until JetStream acks it or the retries
// are exhausted. The Nats-Msg-Id makes a second copy a no-op. Retries run
// only once every earlier publish is resolved, so the expected-last-sequence
// check is dropped: its job, refusing msg while an earlier one is missing,
// is done. The first resend is at once: the failure may be old news (a
// publish sent while the stream had no leader, resolved only after the
// earlier ones were retried), and after an outage up to max_inflight of
// them wait in line; backoff starts only if the resend fails too.
func (p *Publisher) retry(ctx context.Context, msg *nats.Msg, first error) error {
	msg.Header.Del(jetstream.ExpectedLastSeqHeader)
	err := p.publishSync(ctx, msg)
	if err == nil {
		return nil
	}
	p.log.Debug("publish failed, and its immediate resend too", "msg_id", msg.Header.Get(fanout.HeaderMsgID), "first_err", first, "err", err)
	backoff := 100 * time.Millisecond
	for attempt := 1; attempt <= p.opts.MaxRetries; attempt++ {
		p.metrics.PublishRetries.Inc()
		p.log.Warn("publish to JetStream failed; retrying", "subject", msg.Subject,
			"msg_id", msg.Header.Get(fanout.HeaderMsgID), "attempt", attempt, "of", p.opts.MaxRetries, "err", err)
		if err := p.pause(ctx, backoff, "publish "+msg.Header.Get(fanout.HeaderMsgID), err); err != nil {
			return err
		}
		backoff = min(2*backoff, p.opts.MaxBackoff)
		if err = p.publishSync(ctx, msg); err == nil {
			return nil
		}
	}
	hint := "check that NATS runs and is reachable"
	if isStreamFull(err) {
		hint = "the FANOUT stream is full (bus.max_bytes): consumers are not acking; check them and flushd (fanoutctl status)"
	}
	return fmt.Errorf("publish %s to JetStream failed %d times, last: %w (%s; ingest exits and resumes from the slot when restarted)",
		msg.Header.Get(fanout.HeaderMsgID), p.opts.MaxRetries, err, hint)
}

// publishSync publishes msg and waits for JetStream's ack, at most 10 s.
func (p *Publisher) publishSync(ctx context.Context, msg *nats.Msg) error {
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := p.js.PublishMsg(actx, msg)
	return err
}

// pause waits d between two attempts at what, whose last failure was last.
// It fails when ctx ends, or when Close abandons the retries.
func (p *Publisher) pause(ctx context.Context, d time.Duration, what string, last error) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-p.abandon:
		return fmt.Errorf("%s abandoned at shutdown: %w", what, last)
	}
}

// isStreamFull recognises the stream's MaxBytes + DiscardNew refusal.
func isStreamFull(err error) bool {
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "maximum bytes") || strings.Contains(msg, "resource limits") || strings.Contains(msg, "insufficient resources")
}

// Drain waits until nothing is in flight, the publisher failed or ctx ends.
func (p *Publisher) Drain(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		p.mu.Lock()
		n, err := p.inflight, p.failErr
		p.mu.Unlock()
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%d publishes still unacked: %w", n, ctx.Err())
		}
	}
}

// Close stops retrying and waits for the ack goroutine to resolve what was
// sent (each within the ack timeout). Call Drain first to wait for acks.
// No Publish may be called after Close.
func (p *Publisher) Close() {
	p.closeOnce.Do(func() { close(p.abandon); close(p.pending) })
	<-p.ackerDone
}
