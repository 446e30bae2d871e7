package shapeapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// compactedShape is shape "sx": a snapshot of rows 1-3, then transactions
// 100..500 inserting or updating rows, with a compaction (retain) after
// transaction 300 and more transactions after it.
func compactedShape(t *testing.T, retain time.Duration) (*Server, *shapelog.FileStore, shapelog.Writer, *snapshotView) {
	t.Helper()
	s, wr := readServer(t, 1<<20)
	dir := s.cfg.Storage.Dir
	sw, err := shapelog.NewSnapshotWriter(dir, "sx", 1, "public.items", []string{"id"}, []string{"id"}, 2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"1", "2", "3"} {
		if err := sw.Add(fanout.Row{"id": str(id)}); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := sw.Complete(visibility.Snapshot{Xmin: 1, Xmax: 1})
	if err != nil {
		t.Fatal(err)
	}
	st, err := shapelog.NewFileStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := wr.Append(ctx, []*fanout.Fragment{inserts(uint64(100*i), 0, true, 10*i, 2)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Compact(ctx, wr, "sx", shapelog.CompactOptions{ChunkRows: 2, Retain: retain}); err != nil {
		t.Fatal(err)
	}
	for i := 4; i <= 5; i++ {
		if _, err := wr.Append(ctx, []*fanout.Fragment{inserts(uint64(100*i), 0, true, 10*i, 2)}); err != nil {
			t.Fatal(err)
		}
	}
	return s, st, wr, &snapshotView{snap: snap}
}

func (s *Server) testView(t *testing.T, snap *snapshotView) *shapeView {
	t.Helper()
	chain, err := s.chainOf("sx", true)
	if err != nil {
		t.Fatal(err)
	}
	return &shapeView{shape: &fanout.Shape{Handle: "sx"}, rel: readRel, snap: snap, chain: chain}
}

// readFrom reads the shape as a client from offset o: the base rows, then
// the log, response by response, up to the end; it returns the ids in the
// order served.
func readFrom(t *testing.T, s *Server, v *shapeView, o Offset) ([]string, error) {
	t.Helper()
	var ids []string
	for range 100 {
		at, err := v.locate(&Request{Offset: o})
		if err != nil {
			return ids, err
		}
		if at.inBase {
			g, err := v.generation(at.gen)
			if err != nil {
				return ids, err
			}
			n := int64(0)
			if err := v.eachBaseMessage(g.Base, at.row, func(msg []byte) error {
				ids = append(ids, messageID(t, msg))
				n++
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			o = BaseOffset(at.gen, at.row+n)
			continue
		}
		p, err := s.planLog("sx", v, at)
		if err != nil {
			return ids, err
		}
		if err := s.eachLogMessage("sx", v, p, func(msg []byte) error {
			ids = append(ids, messageID(t, msg))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if p.atEnd {
			return ids, nil
		}
		o = p.lastOffset()
	}
	t.Fatal("no end after 100 reads")
	return nil, nil
}

func messageID(t *testing.T, msg []byte) string {
	var m struct {
		Value map[string]string `json:"value"`
	}
	if err := json.Unmarshal(msg, &m); err != nil {
		t.Fatalf("message %s: %v", msg, err)
	}
	return m.Value["id"]
}

// Reads of a compacted shape: -1 starts at the current base; an offset
// handed out before the compaction, in the initial snapshot or in
// generation 0's log, resumes exactly through the newer log; one past the
// retain is refused.
func TestReadsAcrossCompactedGenerations(t *testing.T) {
	s, _, _, snap := compactedShape(t, time.Hour)
	v := s.testView(t, snap)
	if cur := v.chain.Current().Number; cur != 1 {
		t.Fatalf("current generation %d", cur)
	}
	for _, c := range []struct {
		name string
		from Offset
		want []string
	}{
		{"a new client", StartOffset, []string{"1", "2", "3", "10", "11", "20", "21", "30", "31", "40", "41", "50", "51"}},
		{"one inside the initial snapshot", BaseOffset(0, 2), []string{"3", "10", "11", "20", "21", "30", "31", "40", "41", "50", "51"}},
		{"one in the old log", LastOp(fanout.Position{CommitLSN: 200}), []string{"30", "31", "40", "41", "50", "51"}},
		{"one at the compaction's end", Offset{Tx: 300, Op: 2}, []string{"40", "41", "50", "51"}},
		{"one after the base", BaseOffset(1, 9), []string{"40", "41", "50", "51"}},
		{"one in the new log", Offset{Tx: 400, Op: 2}, []string{"50", "51"}},
	} {
		got, err := readFrom(t, s, v, c.from)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s (offset %s): %v %v, want %v", c.name, c.from, got, err, c.want)
		}
	}
}

func TestReadsOfExpiredGenerationsAreRefused(t *testing.T) {
	s, _, _, snap := compactedShape(t, time.Millisecond)
	time.Sleep(2 * time.Millisecond) // the retain recorded: generation 0 is served for 1ms
	v := s.testView(t, snap)
	for _, o := range []Offset{BaseOffset(0, 2), LastOp(fanout.Position{CommitLSN: 200}), {Op: 1}} {
		if _, err := readFrom(t, s, v, o); !errors.Is(err, shapelog.ErrExpired) {
			t.Errorf("offset %s of generation 0 after its retain: %v, want expired", o, err)
		}
	}
	if got, err := readFrom(t, s, v, Offset{Tx: 300, Op: 2}); err != nil || len(got) != 4 {
		t.Errorf("an offset at the compaction's end: %v %v", got, err)
	}
}

// A chain loaded before a compaction does not hide what the writer
// appends to the new log: a read that reaches the end looks for a newer
// generation (Chain.Stale) and goes on there.
func TestAReadWithAnOldChainSeesTheNewLog(t *testing.T) {
	s, st, wr, snap := compactedShape(t, time.Hour)
	v := s.testView(t, snap)
	ctx := context.Background()
	if _, err := st.Compact(ctx, wr, "sx", shapelog.CompactOptions{Retain: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := wr.Append(ctx, []*fanout.Fragment{inserts(600, 0, true, 60, 1)}); err != nil {
		t.Fatal(err)
	}
	got, err := readFrom(t, s, v, Offset{Tx: 500, Op: 2})
	if err != nil || fmt.Sprint(got) != "[60]" {
		t.Fatalf("read with a chain from before the compaction: %v %v, want [60]", got, err)
	}
	if v.chain.Current().Number != 2 {
		t.Fatalf("the view's chain was not reloaded: current %d", v.chain.Current().Number)
	}
}

func TestInitialCacheControlFollowsRetain(t *testing.T) {
	if got := InitialCacheControl(10 * time.Minute); got != "public, max-age=150, s-maxage=150, stale-while-revalidate=150" {
		t.Fatalf("InitialCacheControl(10m) = %q", got)
	}
	_ = pglogrepl.LSN(0)
}
