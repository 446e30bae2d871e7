package shapelog

import (
	"context"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

func sv(s string) *string { return &s }

// A half-written generation is never found; a complete one is read back
// exactly, and the log's transactions it saw are skipped by Materialize.
func TestSnapshotWriteReadAndHandOff(t *testing.T) {
	dir := t.TempDir()
	cols := []string{"id", "title"}
	w, err := NewSnapshotWriter(dir, "sa", 1, cols, []string{"id"}, 2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i, title := range []string{"a", "b \"quoted\"\n", "c"} {
		if err := w.Add(fanout.Row{"id": sv(string(rune('1' + i))), "title": sv(title)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Add(fanout.Row{"id": sv("4")}); err != nil { // title NULL
		t.Fatal(err)
	}
	if s, err := CurrentSnapshot(dir, "sa"); err != nil || s != nil {
		t.Fatalf("incomplete generation served: %v %v", s, err)
	}
	snap, _ := visibility.Parse("100:110:105")
	if _, err := w.Complete(snap); err != nil {
		t.Fatal(err)
	}
	s, err := CurrentSnapshot(dir, "sa")
	if err != nil || s == nil || s.Generation != 1 || s.Rows != 4 || len(s.Chunks) != 2 {
		t.Fatalf("CurrentSnapshot = %+v, %v", s, err)
	}
	var got []fanout.Row
	if err := s.EachRow(func(r fanout.Row) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || *got[1]["title"] != "b \"quoted\"\n" || got[3]["title"] != nil {
		t.Fatalf("rows read back: %v", got)
	}

	// The log: xid 104 was seen (skip), 105 was in progress (apply), 111 is later (apply).
	st, err := NewFileStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	wr, err := st.Take(context.Background(), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	frag := func(lsn uint64, xid uint32, ch fanout.Change) *fanout.Fragment {
		return &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", Xid: xid, CommitLSN: pglogrepl.LSN(lsn), Last: true, Changes: []fanout.Change{ch}}
	}
	if _, err := wr.Append(context.Background(), []*fanout.Fragment{
		frag(10, 104, fanout.Change{Op: fanout.OpDelete, Old: fanout.Row{"id": sv("1")}}),
		frag(20, 105, fanout.Change{Op: fanout.OpInsert, Row: fanout.Row{"id": sv("5"), "title": sv("e")}}),
		frag(30, 111, fanout.Change{Op: fanout.OpDelete, Old: fanout.Row{"id": sv("2")}}),
	}); err != nil {
		t.Fatal(err)
	}
	wr.Close()
	rows, err := Materialize(dir, "sa", []string{"id"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range rows {
		ids = append(ids, *r["id"])
	}
	if want := "1 3 4 5"; join(ids) != want {
		t.Fatalf("materialized ids %q, want %q", join(ids), want)
	}

	// A newer generation replaces it; leftovers of a crashed one are removed.
	w3, _ := NewSnapshotWriter(dir, "sa", 3, cols, []string{"id"}, 10, 1<<20)
	w3.Add(fanout.Row{"id": sv("9")}) // never completed: a crash
	w4, err := NewSnapshotWriter(dir, "sa", 4, cols, []string{"id"}, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if gens, _ := snapshotGenerations(dir, "sa"); len(gens) != 2 {
		t.Fatalf("generations after a restart: %v, want [1 4]", gens)
	}
	if _, err := w4.Complete(visibility.Snapshot{Xmin: 200, Xmax: 200}); err != nil {
		t.Fatal(err)
	}
	if s, _ := CurrentSnapshot(dir, "sa"); s == nil || s.Generation != 4 || s.Rows != 0 {
		t.Fatalf("after generation 4: %+v", s)
	}
	if ok, err := HasData(dir, "sb"); ok || err != nil {
		t.Fatalf("HasData of an unknown shape: %v %v", ok, err)
	}
	if ok, err := HasData(dir, "sa"); !ok || err != nil {
		t.Fatalf("HasData: %v %v", ok, err)
	}
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out
}
