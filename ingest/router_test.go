package ingest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/visibility"
)

// sinkRecorder is a Sink that acks at once and keeps the fragments.
type sinkRecorder struct {
	frags   []*fanout.Fragment
	flushes int
}

func (s *sinkRecorder) Publish(_ context.Context, txn *Txn, _ int, f *fanout.Fragment) error {
	c := *f
	c.Changes = append([]fanout.Change(nil), f.Changes...)
	s.frags = append(s.frags, &c)
	txn.Add()
	txn.Done()
	return nil
}

func (s *sinkRecorder) Flush() { s.flushes++ }

func testRouter(t *testing.T, limits Limits, shapes ...string) (*Router, *sinkRecorder, *Tracker) {
	t.Helper()
	reg := match.NewRegistry()
	for _, h := range shapes {
		s := &fanout.Shape{Handle: h, Table: "public.items", PrimaryKey: []string{"id"},
			Schema: []fanout.Column{{Name: "id", Type: "integer", OID: 23}, {Name: "v", Type: "text", OID: 25}}}
		if err := reg.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	sink := &sinkRecorder{}
	tr := NewTracker(0)
	return NewRouter(reg, 8, limits, tr, sink, NewMetrics(nil), quietLog()), sink, tr
}

func insert(id int) match.RowChange {
	v, s := fmt.Sprint(id), "payload"
	return match.RowChange{Table: "public.items", Op: fanout.OpInsert, New: fanout.Row{"id": &v, "v": &s}}
}

// runTxn feeds one transaction of n inserts.
func runTxn(t *testing.T, r *Router, n int) {
	t.Helper()
	ctx := context.Background()
	if err := r.Begin(ctx, Begin{Xid: 7, FinalLSN: 1000, CommitTime: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if err := r.Change(ctx, insert(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Truncate(ctx, []string{"public.items", "public.other"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(ctx, Commit{CommitLSN: 1000, EndLSN: 1100}); err != nil {
		t.Fatal(err)
	}
}

// A shape's part of a transaction is split at max_fragment_changes, Seq
// counts up, only the last has Last set, and the published LSN moves to the
// transaction's end.
func TestRouterSplitsAtFragmentLimit(t *testing.T) {
	r, sink, tr := testRouter(t, Limits{MaxFragmentChanges: 10, MaxFragmentBytes: 1 << 20, MaxBufferedBytes: 1 << 30}, "sa")
	runTxn(t, r, 25)
	if len(sink.frags) != 3 {
		t.Fatalf("%d fragments, want 3", len(sink.frags))
	}
	total := 0
	for i, f := range sink.frags {
		if f.Seq != i || f.Last != (i == 2) || f.CommitLSN != 1000 || f.Xid != 7 || f.Shape != "sa" {
			t.Fatalf("fragment %d = seq %d last %v commit %s xid %d", i, f.Seq, f.Last, f.CommitLSN, f.Xid)
		}
		total += len(f.Changes)
	}
	if total != 26 || sink.frags[2].Changes[len(sink.frags[2].Changes)-1].Op != fanout.OpTruncate {
		t.Fatalf("%d changes in all, want 25 inserts and the truncate last", total)
	}
	if sink.frags[2].EndLSN != 1100 {
		t.Fatalf("last fragment end LSN %s", sink.frags[2].EndLSN)
	}
	if tr.Published() != 1100 {
		t.Fatalf("published = %s, want the transaction end", tr.Published())
	}
}

// Buffered changes stay within a checkpoint (max_buffered_bytes of decoded
// changes): every buffer is published there, and a rerun of the same transaction gives the same
// fragments (same Nats-Msg-Ids).
func TestRouterBoundsBufferedBytesDeterministically(t *testing.T) {
	limits := Limits{MaxFragmentChanges: 1000, MaxFragmentBytes: 1 << 20, MaxBufferedBytes: 2000}
	ids := func() []string {
		r, sink, _ := testRouter(t, limits, "sa", "sb", "sc")
		runTxn(t, r, 100)
		var out []string
		for _, f := range sink.frags {
			out = append(out, fmt.Sprintf("%s/%d", fragmentID(f), len(f.Changes)))
		}
		return out
	}
	first, second := ids(), ids()
	if len(first) < 6 {
		t.Fatalf("only %d fragments: the byte bound did not flush early", len(first))
	}
	if fmt.Sprint(first) != fmt.Sprint(second) {
		t.Fatalf("fragments differ between runs:\n%v\n%v", first, second)
	}
}

// fragmentsOf lists one shape's fragments as msg-id/changes.
func fragmentsOf(sink *sinkRecorder, shape string) []string {
	var out []string
	for _, f := range sink.frags {
		if f.Shape == shape {
			out = append(out, fmt.Sprintf("%s/%d", fragmentID(f), len(f.Changes)))
		}
	}
	return out
}

// Issue 19 item 5: a shape's cut points do not depend on which other shapes
// exist (a transaction re-read after a reconnect with a different shape set
// must give the same fragments for the shapes routed both times).
func TestRouterCutPointsIgnoreOtherShapes(t *testing.T) {
	limits := Limits{MaxFragmentChanges: 1000, MaxFragmentBytes: 1 << 20, MaxBufferedBytes: 2000}
	alone, aloneSink, _ := testRouter(t, limits, "sa")
	runTxn(t, alone, 100)
	crowd, crowdSink, _ := testRouter(t, limits, "sa", "sb", "sc", "sd")
	runTxn(t, crowd, 100)
	a, c := fragmentsOf(aloneSink, "sa"), fragmentsOf(crowdSink, "sa")
	if len(a) < 3 {
		t.Fatalf("only %d fragments: the checkpoints did not cut", len(a))
	}
	if fmt.Sprint(a) != fmt.Sprint(c) {
		t.Fatalf("shape sa is cut differently with other shapes present:\nalone %v\nwith  %v", a, c)
	}
}

// Issue 19 item 5: a shape added inside a transaction takes effect after it.
func TestRouterAppliesShapesBetweenTransactions(t *testing.T) {
	r, sink, _ := testRouter(t, Limits{MaxFragmentChanges: 1000, MaxFragmentBytes: 1 << 20, MaxBufferedBytes: 1 << 30})
	ctx := context.Background()
	if err := r.Begin(ctx, Begin{Xid: 7, FinalLSN: 1000}); err != nil {
		t.Fatal(err)
	}
	r.Change(ctx, insert(1))
	sb := &fanout.Shape{Handle: "sb", Table: "public.items", PrimaryKey: []string{"id"},
		Schema: []fanout.Column{{Name: "id", Type: "integer", OID: 23}, {Name: "v", Type: "text", OID: 25}}}
	r.Apply(ShapeUpdate{Handle: "sb", Shape: sb, Revision: 9})
	if rev, _ := r.Applied(); rev != 0 {
		t.Fatalf("revision %d applied inside a transaction", rev)
	}
	r.Change(ctx, insert(2))
	if err := r.Commit(ctx, Commit{CommitLSN: 1000, EndLSN: 1100}); err != nil {
		t.Fatal(err)
	}
	if len(sink.frags) != 0 {
		t.Fatalf("shape added mid-transaction got %d fragments of it", len(sink.frags))
	}
	if rev, n := r.Applied(); rev != 9 || n != 1 {
		t.Fatalf("Applied() = %d, %d; want revision 9 after 1 routed transaction", rev, n)
	}
	if !r.decoded.routedWithin(7, 1) || r.decoded.routedWithin(7, 0) {
		t.Fatal("xid 7 not remembered as the first routed transaction")
	}
}

func TestDecodedXidsForgetsOldest(t *testing.T) {
	d := newDecodedXids(3)
	for x := uint32(1); x <= 5; x++ {
		d.add(x)
	}
	for x, want := range map[uint32]bool{1: false, 2: false, 3: true, 5: true} {
		if got := d.routedWithin(x, 5); got != want {
			t.Errorf("routedWithin(%d) = %v, want %v", x, got, want)
		}
	}
	if d.routedWithin(5, 4) {
		t.Error("xid 5 counted within the first 4")
	}
}

// A routed commit the snapshot does not see is listed whether it is in the
// xip list or at or past xmax: a commit waiting for a synchronous standby,
// with no transaction ended after it, is past xmax and in no xip list
// (TestSnapshotWaitsForCommitInvisibleBehindSyncStandby's "727:727:").
func TestDecodedXidsInvisibleToASnapshot(t *testing.T) {
	d := newDecodedXids(16)
	for _, x := range []uint32{720, 722, 725, 727} {
		d.add(x)
	}
	for _, c := range []struct {
		snap   string
		routed uint64
		want   []uint64
	}{
		{"727:727:", 4, []uint64{727}},
		{"722:728:722,725", 4, []uint64{722, 725}},
		{"722:728:722,725", 2, []uint64{722}},
		{"728:728:", 4, nil},
	} {
		snap, err := visibility.Parse(c.snap)
		if err != nil {
			t.Fatal(err)
		}
		if got := d.invisible(snap, c.routed); !slices.Equal(got, c.want) {
			t.Errorf("snapshot %s, first %d routed: invisible %v, want %v", c.snap, c.routed, got, c.want)
		}
	}
}
