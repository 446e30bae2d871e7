package ingest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// Fragments are published with their Msg-Id and headers, acks are counted
// on their transaction, and a change larger than NATS max_payload is
// dead-lettered at once (no futile retries) and its shape marked failed.
func TestPublisher(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	p := newTestPublisher(t, bus, PublisherOptions{MaxInflight: 4, MaxRetries: 3, MaxBackoff: 100 * time.Millisecond})
	ctx := context.Background()
	tr := NewTracker(0)

	txn := tr.Begin()
	for seq := 0; seq < 10; seq++ {
		f := &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", Xid: 9, CommitLSN: 500, Seq: seq, Last: seq == 9, Changes: []fanout.Change{{Op: fanout.OpTruncate}}}
		if err := publishFragment(ctx, p, txn, 3, f); err != nil {
			t.Fatal(err)
		}
	}
	txn.Commit(600)
	testenv.Eventually(t, 10*time.Second, "all acks counted", func() bool { return tr.Published() == 600 })
	frags := streamFragments(t, bus) // checks Msg-Id and commit LSN headers
	if len(frags) != 10 || frags[9].Seq != 9 || !frags[9].Last {
		t.Fatalf("%d fragments in the stream", len(frags))
	}

	// A change larger than max_payload is dead-lettered without its
	// changes, its shape marked failed, and the transaction completes: a
	// failure would come back after every restart and pin WAL for ever.
	big := strings.Repeat("x", 2<<20)
	huge := &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", CommitLSN: 700,
		Changes: []fanout.Change{{Op: fanout.OpInsert, Row: fanout.Row{"v": &big}}}}
	start := time.Now()
	txn = tr.Begin()
	if err := publishFragment(ctx, p, txn, 3, huge); err != nil {
		t.Fatalf("Publish of a 2 MB fragment: %v, want it dead-lettered", err)
	}
	txn.Commit(800)
	testenv.Eventually(t, 10*time.Second, "the oversized transaction counted as published", func() bool { return tr.Published() == 800 })
	if time.Since(start) > 5*time.Second {
		t.Fatalf("the oversized publish took %s: it was retried", time.Since(start))
	}
	if p.Err() != nil {
		t.Fatalf("publisher failed on an oversized fragment: %v", p.Err())
	}
	dl, err := bus.DeadLetter.GetLastMsgForSubject(ctx, fanout.DeadLetterSubject(3, "sa"))
	if err != nil {
		t.Fatalf("no dead letter for the oversized fragment: %v", err)
	}
	if r := dl.Header.Get(fanout.HeaderDeadReason); !strings.Contains(r, "max_payload") || len(dl.Data) > 4096 {
		t.Fatalf("dead letter: reason %q, %d bytes; want a max_payload reason and no changes", r, len(dl.Data))
	}
	if _, err := bus.Failed.Get(ctx, "sa"); err != nil {
		t.Fatalf("shape sa not marked failed: %v", err)
	}
}

// A NATS restart while publishes are in flight: those pending at the
// reconnect fail (nats.go fails them with ErrDisconnected) and are sent
// again, and the stream ends up with every fragment exactly once, in order.
func TestPublisherResendsWhatWasInFlightAtAReconnect(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	p := newTestPublisher(t, bus, PublisherOptions{MaxInflight: 256, MaxRetries: 30, MaxBackoff: 500 * time.Millisecond})
	ctx := context.Background()
	tr := NewTracker(0)

	const n = 3000
	done := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			txn := tr.Begin()
			f := &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", Xid: uint32(i), CommitLSN: pglogrepl.LSN(1000 + i), Last: true,
				Changes: []fanout.Change{{Op: fanout.OpTruncate}}}
			if err := publishFragment(ctx, p, txn, 1, f); err != nil {
				done <- err
				return
			}
			txn.Commit(pglogrepl.LSN(1000 + i))
		}
		done <- nil
	}()
	testenv.Eventually(t, 30*time.Second, "some publishes acked", func() bool { return tr.Published() > 1000+n/10 })
	ns.Shutdown()
	ns.Start(t)
	if err := <-done; err != nil {
		t.Fatalf("publish across the restart: %v", err)
	}
	testenv.Eventually(t, 30*time.Second, "every publish acked", func() bool { return tr.Published() == 1000+n-1 })
	if err := p.Err(); err != nil {
		t.Fatalf("publisher failed: %v", err)
	}
	frags := streamFragments(t, bus)
	if len(frags) != n {
		t.Fatalf("the stream holds %d fragments, want %d", len(frags), n)
	}
	for i, f := range frags {
		if f.Xid != uint32(i) {
			t.Fatalf("fragment %d in the stream is transaction %d: out of order or duplicated", i, f.Xid)
		}
	}
}

// newTestPublisher starts a publisher on bus with opts (1 MB in flight at
// most), closed when the test ends.
func newTestPublisher(t *testing.T, bus *fanout.Bus, opts PublisherOptions) *Publisher {
	opts.MaxInflightBytes, opts.Stream, opts.Failed = 1<<20, bus.Stream, bus.Failed
	p := NewPublisher(bus.JS, opts, quietLog(), NewMetrics(nil))
	t.Cleanup(p.Close)
	return p
}

// After a restart, Postgres sends again what ingest published before it
// died; JetStream deduplicates those publishes without moving the stream's
// sequence. The catch-up must run at async speed (not one refusal, resend
// and resync per duplicate) and every fragment must land once, in order.
func TestRestartedPublisherCatchesUpOverDuplicatesAtFullSpeed(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	ctx := context.Background()
	opts := PublisherOptions{MaxInflight: 64, MaxRetries: 3, MaxBackoff: 100 * time.Millisecond}
	frag := func(i int) *fanout.Fragment {
		return &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", Xid: uint32(i), CommitLSN: pglogrepl.LSN(1000 + i), Last: true,
			Changes: []fanout.Change{{Op: fanout.OpTruncate}}}
	}
	publish := func(p *Publisher, from, to int) {
		tr := NewTracker(0)
		for i := from; i < to; i++ {
			txn := tr.Begin()
			if err := publishFragment(ctx, p, txn, 1, frag(i)); err != nil {
				t.Fatal(err)
			}
			txn.Commit(pglogrepl.LSN(1000 + i))
		}
		testenv.Eventually(t, 30*time.Second, "every publish acked", func() bool { return tr.Published() == pglogrepl.LSN(1000+to-1) })
		if err := p.Err(); err != nil {
			t.Fatalf("publisher failed: %v", err)
		}
	}
	const before, dups, fresh = 500, 300, 200
	first := newTestPublisher(t, bus, opts)
	publish(first, 0, before)
	first.Close()

	// The restarted ingest resumes from an older confirmed position: the
	// last 300 fragments come again, then 200 new ones.
	again := newTestPublisher(t, bus, opts)
	publish(again, before-dups, before+fresh)
	again.mu.Lock()
	resyncs, resent := again.resyncs, again.resent
	again.mu.Unlock()
	t.Logf("catch-up over %d duplicates: %d resyncs, %d publishes sent again alone", dups, resyncs, resent)
	if resent > 0 || resyncs > 1 {
		t.Errorf("catch-up over %d duplicates cost %d resyncs and %d publishes sent again alone, want 1 and 0", dups, resyncs, resent)
	}
	frags := streamFragments(t, bus)
	if len(frags) != before+fresh {
		t.Fatalf("the stream holds %d fragments, want %d", len(frags), before+fresh)
	}
	for i, f := range frags {
		if f.Xid != uint32(i) {
			t.Fatalf("fragment %d in the stream is transaction %d: out of order or duplicated", i, f.Xid)
		}
	}
}

// A new replication session in the same process (Postgres restarted, the
// connection broke) sends WAL again from the confirmed position: with
// Replay, those duplicates cost no refusals either.
func TestReplayedSessionSendsDuplicatesWithoutRefusals(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	ctx := context.Background()
	p := newTestPublisher(t, bus, PublisherOptions{MaxInflight: 64, MaxRetries: 3, MaxBackoff: 100 * time.Millisecond})
	tr := NewTracker(0)
	send := func(from, to int) {
		for i := from; i < to; i++ {
			txn := tr.Begin()
			f := &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", Xid: uint32(i), CommitLSN: pglogrepl.LSN(1000 + i), Last: true,
				Changes: []fanout.Change{{Op: fanout.OpTruncate}}}
			if err := publishFragment(ctx, p, txn, 1, f); err != nil {
				t.Fatal(err)
			}
			txn.Commit(pglogrepl.LSN(1000 + i))
		}
		if err := p.Drain(ctx); err != nil {
			t.Fatal(err)
		}
	}
	send(0, 300)
	p.Replay()
	send(100, 400)
	p.mu.Lock()
	resent := p.resent
	p.mu.Unlock()
	if resent != 0 {
		t.Errorf("a replayed session over 200 duplicates sent %d publishes again alone, want 0", resent)
	}
	frags := streamFragments(t, bus)
	if len(frags) != 400 {
		t.Fatalf("the stream holds %d fragments, want 400", len(frags))
	}
	for i, f := range frags {
		if f.Xid != uint32(i) {
			t.Fatalf("fragment %d in the stream is transaction %d: out of order or duplicated", i, f.Xid)
		}
	}
}
