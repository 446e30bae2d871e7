package ingest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// Fragments are published with their Msg-Id and headers, acks are counted
// on their transaction, and a change larger than NATS max_payload fails at
// once with an error that says what to change (no futile retries).
func TestPublisher(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	p := NewPublisher(bus.JS, PublisherOptions{MaxInflight: 4, MaxInflightBytes: 1 << 20, MaxRetries: 3, MaxBackoff: 100 * time.Millisecond, Stream: bus.Stream},
		quietLog(), NewMetrics(nil))
	defer p.Close()
	ctx := context.Background()
	tr := NewTracker(0)

	txn := tr.Begin()
	for seq := 0; seq < 10; seq++ {
		f := &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", Xid: 9, CommitLSN: 500, Seq: seq, Last: seq == 9, Changes: []fanout.Change{{Op: fanout.OpTruncate}}}
		if err := p.Publish(ctx, txn, 3, f); err != nil {
			t.Fatal(err)
		}
	}
	txn.Commit(600)
	testenv.Eventually(t, 10*time.Second, "all acks counted", func() bool { return tr.Published() == 600 })
	frags := streamFragments(t, bus) // checks Msg-Id and commit LSN headers
	if len(frags) != 10 || frags[9].Seq != 9 || !frags[9].Last {
		t.Fatalf("%d fragments in the stream", len(frags))
	}

	big := strings.Repeat("x", 2<<20)
	huge := &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", CommitLSN: 700,
		Changes: []fanout.Change{{Op: fanout.OpInsert, Row: fanout.Row{"v": &big}}}}
	start := time.Now()
	err := p.Publish(ctx, tr.Begin(), 3, huge)
	if err == nil || !strings.Contains(err.Error(), "max_payload") {
		t.Fatalf("Publish of a 2 MB fragment returned %v, want a max_payload error", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("the oversized publish took %s: it was retried", time.Since(start))
	}
	if p.Err() == nil {
		t.Fatal("publisher did not fail for good")
	}
}
