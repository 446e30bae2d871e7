package match

import (
	"fmt"
	"math/rand"
	"reflect"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

// TestRouteKeepsShapesEqualToQuery applies random inserts, updates (moving
// rows in and out, changing keys) and deletes to a table, replays what Route
// emits into one materialized view per shape, and checks after every change
// that each view equals SELECT columns FROM items WHERE where. It runs with
// full old rows (REPLICA IDENTITY FULL) and with key-only ones (DEFAULT).
func TestRouteKeepsShapesEqualToQuery(t *testing.T) {
	for _, fullOld := range []bool{true, false} {
		t.Run(fmt.Sprintf("full_old_row=%v", fullOld), func(t *testing.T) {
			rng := rand.New(rand.NewSource(3))
			r := NewRegistry(WithEvalErrors(func(s *fanout.Shape, err error) { t.Fatalf("%s: %v", s.Handle, err) }))
			wheres := []string{"", "owner = 1", "owner IN (2, 3)", "owner = 4 AND title > 'm'", "owner > 6",
				"title LIKE 'a%' OR owner IS NULL", "NOT (owner = 5)", "flag", "owner BETWEEN 2 AND 5 AND flag IS NOT TRUE"}
			type view struct {
				s    *fanout.Shape
				p    *Predicate
				rows map[string]fanout.Row
			}
			views := map[string]*view{}
			for i, w := range wheres {
				var cols []string
				if i%2 == 1 {
					cols = []string{"title"}
				}
				s := shape(fmt.Sprintf("v%d", i), w, cols...)
				if err := r.Add(s); err != nil {
					t.Fatal(err)
				}
				p, _ := Compile(w, itemsSchema)
				views[s.Handle] = &view{s: s, p: p, rows: map[string]fanout.Row{}}
			}
			table := map[int]fanout.Row{}
			randRow := func(id int) fanout.Row {
				row := item(id, rng.Intn(9), string(rune('a'+rng.Intn(26))))
				if rng.Intn(8) == 0 {
					row["owner"] = nil
				}
				row["flag"] = []*string{str("t"), str("f"), nil}[rng.Intn(3)]
				return row
			}
			keyOnly := func(row fanout.Row) fanout.Row { return fanout.Row{"id": row["id"]} }
			for step := 0; step < 1000; step++ {
				var c RowChange
				id := rng.Intn(40)
				old, exists := table[id]
				switch {
				case !exists:
					c = RowChange{Op: fanout.OpInsert, New: randRow(id)}
					table[id] = c.New
				case rng.Intn(4) == 0:
					c = RowChange{Op: fanout.OpDelete, Old: old}
					if !fullOld {
						c.Old = keyOnly(old)
					}
					delete(table, id)
				default:
					newID := id
					if rng.Intn(5) == 0 {
						if _, taken := table[id+40]; !taken {
							newID = id + 40
						}
					}
					c = RowChange{Op: fanout.OpUpdate, Old: old, New: randRow(newID)}
					if !fullOld {
						c.Old = nil
						if newID != id {
							c.Old = keyOnly(old)
						}
					}
					delete(table, id)
					table[newID] = c.New
				}
				c.Table = "public.items"
				r.Route(c, func(s *fanout.Shape, ch fanout.Change) {
					v := views[s.Handle]
					switch ch.Op {
					case fanout.OpInsert:
						v.rows[*ch.Row["id"]] = ch.Row
					case fanout.OpUpdate:
						if ch.Old != nil {
							delete(v.rows, *ch.Old["id"])
						}
						v.rows[*ch.Row["id"]] = ch.Row
					case fanout.OpDelete:
						delete(v.rows, *ch.Old["id"])
					}
				})
				for _, v := range views {
					want := map[string]fanout.Row{}
					for _, row := range table {
						if v.p.Eval(row) {
							want[*row["id"]] = (&entry{shape: v.s, proj: projection(v.s)}).project(row)
						}
					}
					if !reflect.DeepEqual(render2(v.rows), render2(want)) {
						t.Fatalf("step %d (%s): shape %s (%s) holds %v, query gives %v", step, c.Op, v.s.Handle, v.s.Where, render2(v.rows), render2(want))
					}
				}
			}
		})
	}
}

func projection(s *fanout.Shape) []string {
	if len(s.Columns) == 0 {
		return nil
	}
	return append(append([]string{}, s.PrimaryKey...), s.Columns...)
}

func render2(rows map[string]fanout.Row) map[string]string {
	out := map[string]string{}
	for k, r := range rows {
		out[k] = render(r)
	}
	return out
}
