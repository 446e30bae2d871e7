package shapelog

import (
	"reflect"
	"testing"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// tagged is an insert of a shape with one subquery condition, tagged tag.
func tagged(id, tag string) fanout.Change {
	c := insT(id, "t"+id)
	c.Tags, c.Active = []string{tag}, []bool{true}
	return c
}

// A shape with subqueries compacts as it replays: a move-out drops the
// rows it names from the base, the base keeps every row's tags and active
// conditions (so a later move-out still finds them, and a client reading
// the base gets them), and a move-in window open at the compaction still
// holds readers back in the new generation's log until the rows close it.
func TestCompactionOfASubqueryShape(t *testing.T) {
	tw := &twin{t: t, epoch: 1}
	tw.st, _ = newStore(t)
	tw.ref, _ = newStore(t)
	for _, dir := range []string{tw.st.Dir(), tw.ref.Dir()} {
		sw, err := NewSnapshotWriter(dir, "sq", 1, "public.items", []string{"id", "title"}, []string{"id"}, 2, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"1", "2"} {
			if err := sw.AddMeta(row("id", id, "title", "snap"+id), []string{"hA"}, []bool{true}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := sw.Complete(visibility.Snapshot{Xmin: 50, Xmax: 60}); err != nil {
			t.Fatal(err)
		}
	}
	tw.w, tw.refW = take(t, tw.st, 0, 1), take(t, tw.ref, 0, 1)
	moveOut := func(tag string) fanout.Change {
		return fanout.Change{Op: fanout.OpMoveOut, Patterns: []fanout.Pattern{{Pos: 0, Value: tag}}}
	}
	tw.append(frag("sq", 100, 0, true, tagged("3", "hB"), tagged("4", "hA")))
	tw.append(frag("sq", 200, 0, true, moveOut("hA"))) // drops 1, 2 and 4
	opening := frag("sq", 300, 0, true, fanout.Change{Op: fanout.OpMoveIn, Patterns: []fanout.Pattern{{Pos: 0, Value: "hC"}}})
	opening.OpensWindow = true
	tw.append(opening)
	tw.append(frag("sq", 400, 0, true, tagged("5", "hB"))) // inside the window

	tw.compact("sq", CompactOptions{})
	tw.check("sq", "after the compaction")
	chain, err := LoadChain(tw.st.Dir(), "sq")
	if err != nil {
		t.Fatal(err)
	}
	var base []string
	if err := chain.Current().Base.EachRowMeta(func(r fanout.Row, tags []string, active []bool) error {
		base = append(base, *r["id"]+":"+tags[0])
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(base, []string{"3:hB"}) {
		t.Fatalf("base rows with their tags %v, want [3:hB]", base)
	}
	if got, _ := chainPositions(t, tw.st.Dir(), "sq", chain.Current().LogStart()); len(got) != 0 {
		t.Fatalf("records inside the open window were read after the compaction: %v", got)
	}

	closing := frag("sq", 450, 0, true, func() fanout.Change { c := tagged("6", "hC"); c.MoveIn = true; return c }())
	closing.ClosesWindows = 1
	tw.append(closing)
	tw.append(frag("sq", 500, 0, true, moveOut("hB"))) // drops 3 (from the base) and 5
	tw.check("sq", "after the window closed and a move-out of a base row")
	got, _ := chainPositions(t, tw.st.Dir(), "sq", chain.Current().LogStart())
	if want := []fanout.Position{pos(300, 0), pos(400, 0), pos(450, 0), pos(500, 0)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("read after the window closed: %v, want %v", got, want)
	}
	rows, err := Materialize(tw.st.Dir(), "sq", []string{"id"})
	if err != nil {
		t.Fatal(err)
	}
	if r := render(rows); !reflect.DeepEqual(r, []string{"6=t6"}) {
		t.Fatalf("rows %v, want only the row the move-in brought", r)
	}
	// The consumer's state, built from the compacted chain: the move-out
	// of hB was written here without the deletes a consumer puts before
	// it, so a client ignoring events still holds 3 and 5 (extra).
	st, last, full, extra, err := BuildTagState(tw.st.Dir(), "sq", []string{"id"})
	if err != nil || !full || last != pos(500, 0) || st.Len() != 1 || !st.Has(row("id", "6")) || len(extra) != 2 || *extra[0]["id"] != "3" || *extra[1]["id"] != "5" {
		t.Fatalf("tag state after the compaction: %d rows, last %v, snapshot %v, %d extra, %v", st.Len(), last, full, len(extra), err)
	}
}
