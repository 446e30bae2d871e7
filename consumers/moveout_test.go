package consumers

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
)

// taggedInsert is a row of a shape with one subquery condition: project p.
func taggedInsert(id, p string) fanout.Change {
	return fanout.Change{Op: fanout.OpInsert, Row: fanout.Row{"id": str(id), "project": str(p)}, Tags: []string{"h" + p}, Active: []bool{true}}
}

func moveOut(p string) fanout.Change {
	return fanout.Change{Op: fanout.OpMoveOut, Patterns: []fanout.Pattern{{Pos: 0, Value: "h" + p}}}
}

func sqFrag(lsn uint64, changes ...fanout.Change) *fanout.Fragment {
	return &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", Xid: uint32(lsn), CommitLSN: pglogrepl.LSN(lsn), EndLSN: pglogrepl.LSN(lsn + 8), Last: true, Changes: changes}
}

// ops renders a fragment's changes: insert:1 delete:2 move-out.
func ops(f *fanout.Fragment) string {
	var out []string
	for _, c := range f.Changes {
		switch {
		case c.Row != nil:
			out = append(out, string(c.Op)+":"+*c.Row["id"])
		case c.Old != nil:
			out = append(out, string(c.Op)+":"+*c.Old["id"])
		default:
			out = append(out, string(c.Op))
		}
	}
	return strings.Join(out, " ")
}

func materializedIDs(t *testing.T, dir string) string {
	rows, err := shapelog.Materialize(dir, "sa", []string{"id"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range rows {
		ids = append(ids, *r["id"])
	}
	return strings.Join(ids, ",")
}

// moveOutFixture is a store with partition 0 taken by w, and the
// move-out state of a worker over it; keyed names the shapes with
// subqueries and their keys.
func moveOutFixture(t *testing.T, keyed func(string) ([]string, bool)) (*shapelog.FileStore, shapelog.Writer, *moveOuts) {
	t.Helper()
	st, err := shapelog.NewFileStore(t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	w, err := st.Take(context.Background(), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return st, w, newMoveOuts(st.Dir(), keyed, slog.New(slog.NewTextHandler(io.Discard, nil)), newMetrics(prometheus.NewRegistry()))
}

// everyShape: every shape has subqueries, keyed by id.
func everyShape(string) ([]string, bool) { return []string{"id"}, true }

// A move-out gets the deletes of the rows it drops put before it, from the
// shape's log (built the first time) and from what the worker wrote since;
// a duplicate is left alone.
func TestMoveOutGetsDeletes(t *testing.T) {
	st, w, m := moveOutFixture(t, func(h string) ([]string, bool) { return []string{"id"}, h == "sa" })
	write := func(fs ...*fanout.Fragment) []*fanout.Fragment {
		fs = m.expand(fs)
		if _, err := w.Append(context.Background(), fs); err != nil {
			t.Fatal(err)
		}
		return fs
	}
	write(sqFrag(100, taggedInsert("1", "10"), taggedInsert("2", "20")))
	got := write(sqFrag(200, taggedInsert("3", "10"), moveOut("10")))
	if s := ops(got[0]); s != "insert:3 delete:1 delete:3 move-out" {
		t.Fatalf("move-out fragment: %s", s)
	}
	if ids := materializedIDs(t, st.Dir()); ids != "2" {
		t.Fatalf("rows after the move-out: %s", ids)
	}
	// The state goes on from what the worker wrote.
	got = write(sqFrag(300, taggedInsert("4", "20"), moveOut("20")))
	if s := ops(got[0]); s != "insert:4 delete:2 delete:4 move-out" {
		t.Fatalf("second move-out: %s", s)
	}
	// A redelivered fragment is a duplicate: nothing is added to it.
	dup := m.expand([]*fanout.Fragment{sqFrag(300, taggedInsert("4", "20"), moveOut("20"))})
	if s := ops(dup[0]); s != "insert:4 move-out" {
		t.Fatalf("duplicate: %s", s)
	}
}

// A move-out written without its deletes (the shape's rows were not all
// known then): the next state built finds the rows a client that ignores
// events still holds, and deletes them with the next fragment.
func TestMissedMoveOutDeletesAreMadeUp(t *testing.T) {
	_, w, m := moveOutFixture(t, everyShape)
	if _, err := w.Append(context.Background(), []*fanout.Fragment{sqFrag(100, taggedInsert("1", "10"), taggedInsert("2", "20")), sqFrag(200, moveOut("10"))}); err != nil {
		t.Fatal(err)
	}
	got := m.expand([]*fanout.Fragment{sqFrag(300, taggedInsert("5", "20"), moveOut("30"))})
	if s := ops(got[0]); s != "delete:1 insert:5 move-out" {
		t.Fatalf("fragment after a move-out without deletes: %s", s)
	}
}

// The rows a batch inserts before its first move-out are in the state the
// move-out is expanded with, though they are not on disk yet.
func TestMoveOutSeesRowsEarlierInItsBatch(t *testing.T) {
	_, _, m := moveOutFixture(t, everyShape)
	got := m.expand([]*fanout.Fragment{sqFrag(100, taggedInsert("1", "10")), sqFrag(200, moveOut("10"))})
	if s := ops(got[1]); s != "delete:1 move-out" {
		t.Fatalf("move-out after an insert in the same batch: %s", s)
	}
}

// An insert of a row the shape holds (a move-in bringing a row another
// condition kept; an update seen while a move-in was read) is written as an
// update of the whole row, so a client applying inserts as SQL INSERTs
// does not fail on a duplicate key; an insert of a row it does not hold,
// or holds no more, stays an insert. The state is built on the shape's
// first fragment, not only at a move-out.
func TestInsertOfAHeldRowIsAnUpdate(t *testing.T) {
	st, w, m := moveOutFixture(t, everyShape)
	if _, err := w.Append(context.Background(), []*fanout.Fragment{sqFrag(100, taggedInsert("1", "10"), taggedInsert("2", "20"))}); err != nil {
		t.Fatal(err)
	}
	moveIn := taggedInsert("1", "10")
	moveIn.MoveIn = true
	got := m.expand([]*fanout.Fragment{
		sqFrag(200, moveIn, taggedInsert("3", "10")),
		sqFrag(300, moveOut("20")),
		sqFrag(400, taggedInsert("2", "10")),
	})
	if s := ops(got[0]); s != "update:1 insert:3" || !got[0].Changes[0].MoveIn || got[0].Changes[0].Before != nil {
		t.Fatalf("inserts of a held row and a new one: %s (%+v)", s, got[0].Changes[0])
	}
	if s := ops(got[2]); s != "insert:2" {
		t.Fatalf("insert of a row moved out: %s", s)
	}
	if _, err := w.Append(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	if ids := materializedIDs(t, st.Dir()); ids != "1,2,3" {
		t.Fatalf("rows: %s", ids)
	}
}
