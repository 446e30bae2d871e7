package ingest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// A publish whose predecessor never landed is refused by the stream rather
// than stored ahead of it, and the publisher then sends it again in order.
func TestPublishesLandInOrderWhenOneIsLost(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	ctx := context.Background()

	// The stream's own rule: expecting a last sequence that is not there fails.
	msg := nats.NewMsg(fanout.Subject(1))
	msg.Header.Set(fanout.HeaderMsgID, "second")
	msg.Header.Set(jetstream.ExpectedLastSeqHeader, "1") // the first never landed
	// 10071: JSStreamWrongLastSequenceErr.
	var apiErr *jetstream.APIError
	if _, err := bus.JS.PublishMsg(ctx, msg); !errors.As(err, &apiErr) || apiErr.ErrorCode != 10071 {
		t.Fatalf("publish after a missing predecessor: %v, want wrong last sequence (10071)", err)
	}

	m := NewMetrics(nil)
	p := NewPublisher(bus.JS, PublisherOptions{MaxInflight: 8, MaxInflightBytes: 1 << 20, MaxRetries: 3, MaxBackoff: 100 * time.Millisecond}, quietLog(), m)
	defer p.Close()
	p.nextLast, p.resync = 1, false // as if a first publish was sent and the connection dropped it
	tr := NewTracker(0)
	txn := tr.Begin()
	for seq := 0; seq < 5; seq++ {
		f := &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", CommitLSN: 800, Seq: seq, Last: seq == 4, Changes: []fanout.Change{{Op: fanout.OpTruncate}}}
		if err := publishFragment(ctx, p, txn, 1, f); err != nil {
			t.Fatal(err)
		}
	}
	txn.Commit(900)
	testenv.Eventually(t, 10*time.Second, "all five acked", func() bool { return tr.Published() == 900 })
	frags := streamFragments(t, bus)
	if len(frags) != 5 {
		t.Fatalf("%d fragments in the stream, want 5", len(frags))
	}
	for i, f := range frags {
		if f.Seq != i {
			t.Fatalf("stream order %d holds seq %d: publishes were reordered", i, f.Seq)
		}
	}
}
