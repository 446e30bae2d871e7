package ingest

import (
	"context"
	"fmt"
	"sync"

	"github.com/fanout/pipeline/fanout"
)

// Batcher is the Router's Sink: it packs each partition's fragments into
// bus messages (fanout.EncodeMessage), because JetStream's cost is per
// message (store, ack, tombstone, index), hardly per byte.
//
// Each partition has at most one message in flight. While it is, the
// partition's next fragments gather into the next message, so the batches
// grow exactly as far as the bus is slower than the source: at low load a
// commit goes out alone at once (no latency added, no timer), under load one
// message carries many transactions' fragments. A batch is sent when the
// Router reaches a flush point (a transaction's end or checkpoint, see
// Flush) or when it is full (max message bytes).
//
// A message is always a contiguous run of the partition's fragments in the
// order the Router cuts them, and that order, restricted to any set of
// shapes, does not depend on which other shapes exist. So two messages with
// the same first and last fragment (the Nats-Msg-Id, fanout.MsgID) hold the
// same fragments of every shape routed both times, and the stream's
// duplicate window may drop one of them. A shape routed only the second time
// was added after the first run routed that transaction: its snapshot saw
// the transaction, so it does not need its fragment. Messages cut
// differently after a restart are new to the stream; the shape logs skip the
// fragments they hold already.
type Batcher struct {
	pub       *Publisher
	maxBytes  int // bound of one message's fragments
	maxQueued int // bound of the bytes waiting to be sent, all partitions

	mu       sync.Mutex
	parts    []partitionQueue
	queued   int // bytes waiting to be sent
	inflight int // partitions with a message in flight
	next     int // where the next scan for a batch to send starts (fairness)
	wake     chan struct{}
	room     chan struct{}
	idle     chan struct{} // signalled when a message resolves

	stop chan struct{}
	done chan struct{}
}

type partitionQueue struct {
	batches  []*batch // oldest first; appends go to the last
	inflight bool
}

// batch is one message being gathered, then published.
type batch struct {
	partition int
	frags     []*fanout.Fragment // without their changes, which are in bodies
	bodies    [][]byte           // each fragment's encoding
	owners    []*Txn             // each fragment's transaction
	txns      []*Txn             // the transactions of frags, once each, in commit order
	bytes     int
	ready     bool   // a flush point passed, or the batch is full
	onDone    func() // called once the message is acked or dead-lettered
}

// NewBatcher sends through pub; Close stops it.
func NewBatcher(pub *Publisher, partitions, maxMessageBytes, maxQueuedBytes int) *Batcher {
	b := &Batcher{
		pub: pub, maxBytes: maxMessageBytes, maxQueued: maxQueuedBytes,
		parts: make([]partitionQueue, partitions),
		wake:  make(chan struct{}, 1), room: make(chan struct{}, 1), idle: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	go b.send()
	return b
}

// Publish adds f, of txn, to partition's next message. It waits while the
// bytes waiting to be sent are over their bound.
func (b *Batcher) Publish(ctx context.Context, txn *Txn, partition int, f *fanout.Fragment) error {
	body, err := f.Encode()
	if err != nil {
		return fmt.Errorf("encode fragment %s %s: %w", f.Shape, f.Position(), err)
	}
	size := len(body) + 1
	// From here on f is needed only for its position (the message's id):
	// the changes are in body, and holding them twice doubles memory.
	pos := *f
	pos.Changes = nil
	f = &pos
	if err := b.waitRoom(ctx, size); err != nil {
		return err
	}
	b.mu.Lock()
	q := &b.parts[partition]
	var cur *batch
	if n := len(q.batches); n > 0 && !q.batches[n-1].full(size, b.maxBytes) {
		cur = q.batches[n-1]
	} else {
		if n > 0 {
			q.batches[n-1].ready = true // full: it goes as soon as the partition may send
		}
		cur = &batch{partition: partition}
		q.batches = append(q.batches, cur)
	}
	if cur.append(f, body, txn) {
		// Counted until the publisher has taken the batch over: a
		// transaction is not published while a fragment of it waits here.
		txn.Add()
	}
	b.queued += size
	b.mu.Unlock()
	return nil
}

// append adds f, encoded as body, of txn; it reports whether txn is new to x.
func (x *batch) append(f *fanout.Fragment, body []byte, txn *Txn) bool {
	x.frags = append(x.frags, f)
	x.bodies = append(x.bodies, body)
	x.owners = append(x.owners, txn)
	x.bytes += len(body) + 1
	if n := len(x.txns); n > 0 && x.txns[n-1] == txn {
		return false
	}
	x.txns = append(x.txns, txn)
	return true
}

// full reports whether a fragment of size bytes no longer fits (a batch
// always takes one fragment, however large: the publisher dead-letters
// what the server refuses).
func (x *batch) full(size, maxBytes int) bool {
	return len(x.frags) > 0 && x.bytes+size > maxBytes
}

func (b *Batcher) waitRoom(ctx context.Context, size int) error {
	for {
		b.mu.Lock()
		ok := b.queued == 0 || b.queued+size <= b.maxQueued
		b.mu.Unlock()
		if ok {
			return nil
		}
		b.signal(b.wake) // whatever is queued may go
		select {
		case <-b.room:
		case <-b.pub.Failed():
			return b.pub.Err()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Flush marks everything gathered so far ready to send: the Router calls it
// at the end of each transaction and at each checkpoint.
func (b *Batcher) Flush() {
	b.mu.Lock()
	for i := range b.parts {
		for _, x := range b.parts[i].batches {
			x.ready = true
		}
	}
	b.mu.Unlock()
	b.signal(b.wake)
}

// Drain sends everything gathered, then waits until every message is acked,
// the publisher failed or ctx ends.
func (b *Batcher) Drain(ctx context.Context) error {
	b.Flush()
	for {
		b.mu.Lock()
		empty := b.queued == 0 && b.inflight == 0
		queued, inflight := b.queued, b.inflight
		b.mu.Unlock()
		if empty {
			return b.pub.Drain(ctx)
		}
		select {
		case <-b.idle:
		case <-b.pub.Failed():
			return b.pub.Err()
		case <-ctx.Done():
			return fmt.Errorf("%d bytes of fragments not yet sent and %d partitions' messages unacked: %w", queued, inflight, ctx.Err())
		}
	}
}

// Close stops sending; what is not sent yet is sent again after a restart
// (its transactions were never published, so never confirmed).
func (b *Batcher) Close() {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	<-b.done
}

func (b *Batcher) signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// send is the goroutine that hands ready batches to the publisher, one in
// flight per partition.
func (b *Batcher) send() {
	defer close(b.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-b.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		x := b.take()
		if x == nil {
			select {
			case <-b.wake:
				continue
			case <-b.stop:
				return
			case <-b.pub.Failed():
				return
			}
		}
		err := b.pub.Publish(ctx, x)
		for _, t := range x.txns {
			t.Done() // the publisher counts them now, until the ack
		}
		if err != nil {
			// The publisher failed for good (ingest stops and resumes
			// from the slot) or is closing: nothing more goes out.
			return
		}
	}
}

// take removes the next batch to send: the oldest ready batch of a
// partition with nothing in flight, partitions taken in turn.
func (b *Batcher) take() *batch {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.parts)
	for i := 0; i < n; i++ {
		p := (b.next + i) % n
		q := &b.parts[p]
		if q.inflight || len(q.batches) == 0 || !q.batches[0].ready {
			continue
		}
		x := q.batches[0]
		q.batches[0] = nil
		q.batches = q.batches[1:]
		q.inflight = true
		b.inflight++
		b.queued -= x.bytes
		b.next = p + 1
		x.onDone = func() { b.resolved(p) }
		b.signal(b.room)
		return x
	}
	return nil
}

// resolved is called when partition p's message in flight is acked (or
// dead-lettered): its next batch may go.
func (b *Batcher) resolved(p int) {
	b.mu.Lock()
	b.parts[p].inflight = false
	b.inflight--
	b.mu.Unlock()
	b.signal(b.wake)
	b.signal(b.idle)
}
