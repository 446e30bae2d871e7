package ingest

import (
	"context"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/testenv"
)

// The Nats-Msg-Id of a message names its first and last fragment. The
// duplicate window may drop a message published again after a restart only
// if the first one held every fragment the second holds, for the shapes
// routed both times. Here two runs route the same transactions with
// different shape sets and pack each partition's fragments into messages cut
// at random; wherever both runs made a message with the same id, the two
// hold the same fragments of the shapes they share.
func TestMessagesWithOneIDHoldTheSameFragmentsWhateverTheShapeSet(t *testing.T) {
	limits := Limits{MaxFragmentChanges: 7, MaxFragmentBytes: 1 << 20, MaxBufferedBytes: 3000}
	runA := routeWorkload(t, limits, []string{"sa", "sb", "sc", "sd", "sf"})
	runB := routeWorkload(t, limits, []string{"sb", "sd", "se", "sf", "sg"})
	shared := map[string]bool{"sb": true, "sd": true, "sf": true}
	common := 0
	for seed := int64(1); seed <= 200; seed++ {
		a := packAtRandom(runA, rand.New(rand.NewSource(seed)))
		b := packAtRandom(runB, rand.New(rand.NewSource(seed*7919)))
		for id, fa := range a {
			fb, ok := b[id]
			if !ok {
				continue
			}
			common++
			if got, want := only(fb, shared), only(fa, shared); got != want {
				t.Fatalf("seed %d: message %s holds %s in one run and %s in the other", seed, id, want, got)
			}
		}
	}
	if common < 100 {
		t.Fatalf("only %d message ids common to both runs: the test checks too little", common)
	}
}

// routeWorkload routes the same transactions through a router with shapes
// and returns each partition's fragments in the order they were cut.
func routeWorkload(t *testing.T, limits Limits, shapes []string) map[int][]*fanout.Fragment {
	t.Helper()
	reg := match.NewRegistry()
	for i, h := range shapes {
		// Shapes on the same table with where clauses that overlap.
		where := []string{"id % 2 = 0", "id % 3 = 0", "id < 40", "true", "id % 5 = 1", "id > 10", "id % 2 = 1"}[i%7]
		s := &fanout.Shape{Handle: h, Table: "public.items", Where: where, PrimaryKey: []string{"id"},
			Schema: []fanout.Column{{Name: "id", Type: "integer", OID: 23}, {Name: "v", Type: "text", OID: 25}}}
		if err := reg.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	sink := &sinkRecorder{}
	r := NewRouter(reg, 2, limits, NewTracker(0), sink, NewMetrics(nil), quietLog())
	ctx := context.Background()
	for x := 0; x < 6; x++ {
		lsn := pglogrepl.LSN(1000 * (x + 1))
		if err := r.Begin(ctx, Begin{Xid: uint32(x + 10), FinalLSN: lsn}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 20+x*13; i++ {
			if err := r.Change(ctx, insert(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Commit(ctx, Commit{CommitLSN: lsn, EndLSN: lsn + 10}); err != nil {
			t.Fatal(err)
		}
	}
	out := map[int][]*fanout.Fragment{}
	for _, f := range sink.frags {
		p := fanout.Partition(f.Shape, 2)
		out[p] = append(out[p], f)
	}
	return out
}

// packAtRandom cuts each partition's fragments into contiguous messages of
// random lengths and returns message id -> its fragments.
func packAtRandom(parts map[int][]*fanout.Fragment, rnd *rand.Rand) map[string][]*fanout.Fragment {
	out := map[string][]*fanout.Fragment{}
	for p, frags := range parts {
		for len(frags) > 0 {
			n := 1 + rnd.Intn(min(len(frags), 6))
			out[fanout.MsgID(p, frags[:n])] = frags[:n]
			frags = frags[n:]
		}
	}
	return out
}

// only lists the fragments of frags whose shape is in shapes.
func only(frags []*fanout.Fragment, shapes map[string]bool) string {
	var ids []string
	for _, f := range frags {
		if shapes[f.Shape] {
			ids = append(ids, fragmentID(f))
		}
	}
	sort.Strings(ids)
	return strings.Join(ids, ",")
}

// While a partition's message is in flight, its next fragments gather into
// one message; each message stays within the byte bound; every fragment is
// in the stream once and in order, and the transactions count as published
// only once their messages are acked.
func TestBatcherPacksWhatWaitsBehindAMessageInFlight(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub := NewPublisher(bus.JS, PublisherOptions{MaxInflight: 64, MaxInflightBytes: 1 << 24, MaxRetries: 3, MaxBackoff: 100 * time.Millisecond}, quietLog(), NewMetrics(nil))
	defer pub.Close()
	const maxBytes = 4096
	b := NewBatcher(pub, 4, maxBytes, 1<<24)
	defer b.Close()
	tr := NewTracker(0)

	const txns = 1000
	for i := 0; i < txns; i++ {
		lsn := pglogrepl.LSN(100 * (i + 1))
		txn := tr.Begin()
		v := fmt.Sprint(i)
		f := &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", Xid: uint32(i), CommitLSN: lsn, EndLSN: lsn + 50, Last: true,
			Changes: []fanout.Change{{Op: fanout.OpInsert, Row: fanout.Row{"id": &v}}}}
		if err := b.Publish(ctx, txn, fanout.Partition("sa", 4), f); err != nil {
			t.Fatal(err)
		}
		b.Flush() // as the router does at each commit
		txn.Commit(lsn + 50)
	}
	if err := b.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := tr.Published(), pglogrepl.LSN(100*txns+50); got != want {
		t.Fatalf("published %s after the drain, want %s", got, want)
	}
	info, err := bus.Stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	frags := streamFragments(t, bus)
	if len(frags) != txns {
		t.Fatalf("%d fragments in the stream, want %d", len(frags), txns)
	}
	for i, f := range frags {
		if f.CommitLSN != pglogrepl.LSN(100*(i+1)) {
			t.Fatalf("fragment %d is of commit %s: out of order", i, f.CommitLSN)
		}
	}
	if info.State.Msgs >= txns/2 {
		t.Fatalf("%d messages for %d single-fragment transactions: fragments waiting behind a message in flight were not packed", info.State.Msgs, txns)
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := bus.Stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Data) > maxBytes+64 {
			t.Fatalf("message %d is %d bytes, over the bound of %d", seq, len(m.Data), maxBytes)
		}
	}
	t.Logf("%d transactions in %d messages", txns, info.State.Msgs)
}
