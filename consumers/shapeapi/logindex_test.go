package shapeapi

import (
	"context"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// The log's prefix of transactions the snapshot saw is skipped by xid: a
// read from the snapshot's end starts after it, and the index's recent
// messages never hold a seen transaction.
func TestLogIndexSkipsTheSnapshotsTransactions(t *testing.T) {
	dir := t.TempDir()
	st, err := shapelog.NewFileStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	wr, err := st.Take(context.Background(), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	frag := func(lsn uint64, xid uint32, id string) *fanout.Fragment {
		return &fanout.Fragment{Version: fanout.WireVersion, Shape: "sx", Xid: xid, CommitLSN: pglogrepl.LSN(lsn), Last: true,
			Changes: []fanout.Change{{Op: fanout.OpInsert, Row: fanout.Row{"id": str(id)}}}}
	}
	// Seen: 5, 6 and the straggler 8; not seen: 20 (xmax) and 9 (in progress).
	snap, _ := visibility.Parse("9:20:9")
	seen := func(f *fanout.Fragment) bool { return snap.Visible(f.Xid) }
	if _, err := wr.Append(context.Background(), []*fanout.Fragment{frag(100, 5, "1"), frag(200, 6, "2")}); err != nil {
		t.Fatal(err)
	}
	rel := Relation{Schema: "public", Table: "items", PK: []string{"id"}, Columns: []string{"id"}}
	ix := &logIndex{}
	chain, err := shapelog.LoadChain(dir, "sx")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ix.extend(chain, rel, seen); err != nil {
		t.Fatal(err)
	}
	if _, err := wr.Append(context.Background(), []*fanout.Fragment{frag(300, 20, "3"), frag(400, 8, "4"), frag(500, 9, "5")}); err != nil {
		t.Fatal(err)
	}
	wr.Close()
	if _, err := ix.extend(chain, rel, seen); err != nil {
		t.Fatal(err)
	}
	var first []uint32
	if _, err := shapelog.ReadLog(dir, "sx", ix.seekIn(chain.Generation(0), Offset{}), func(e shapelog.LogEntry, _ shapelog.Cursor) error {
		x, _ := e.Xid()
		first = append(first, x)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(first) != 3 || first[0] != 20 {
		t.Fatalf("a read from the snapshot's end starts at xids %v, want [20 8 9]", first)
	}
	c := NewChunk(1<<20, Offset{Tx: 200, Op: 1 << 30})
	ok, atEnd, _ := ix.fromRecent(Offset{Tx: 200, Op: 1 << 30}, c)
	if !ok || !atEnd || c.Len() != 2 {
		t.Fatalf("recent after the first read: ok %v, at end %v, %d messages (want xids 20 and 9): %s", ok, atEnd, c.Len(), c.Bytes())
	}
}

// The requests one notice wakes read the log once: an index reads the file
// again only when it changed.
func TestLogIndexReadsAnUnchangedLogOnce(t *testing.T) {
	s, wr := readServer(t, 1<<20)
	appendTx := func(lsn uint64) {
		if _, err := wr.Append(context.Background(), []*fanout.Fragment{inserts(lsn, 0, true, int(lsn), 1)}); err != nil {
			t.Fatal(err)
		}
	}
	rel := Relation{Schema: "public", Table: "items", PK: []string{"id"}, Columns: []string{"id"}}
	ix := &logIndex{}
	appendTx(100)
	chain, err := shapelog.LoadChain(s.cfg.Storage.Dir, "sx")
	if err != nil {
		t.Fatal(err)
	}
	for range 20 { // one notice, twenty woken requests
		if _, err := ix.extend(chain, rel, nil); err != nil {
			t.Fatal(err)
		}
	}
	if ix.reads != 1 {
		t.Fatalf("%d reads of a log that did not change, want 1", ix.reads)
	}
	appendTx(200)
	end, err := ix.extend(chain, rel, nil)
	if err != nil {
		t.Fatal(err)
	}
	if last, _ := end.Last(); ix.reads != 2 || last.CommitLSN != 200 {
		t.Fatalf("after an append: %d reads, the index ends at %v; want 2 reads, ending at LSN 200", ix.reads, last)
	}
}
