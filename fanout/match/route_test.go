package match

import (
	"fmt"
	"math/rand"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

func shape(handle, where string, cols ...string) *fanout.Shape {
	return &fanout.Shape{Handle: handle, Table: "public.items", Where: where, Columns: cols,
		PrimaryKey: []string{"id"}, Schema: itemsSchema}
}

// item is a full items row; "-" stands for NULL.
func item(id, owner int, title string) fanout.Row {
	r := fanout.Row{"id": str(fmt.Sprint(id)), "owner": str(fmt.Sprint(owner)), "title": str(title),
		"flag": str("t"), "price": str("1.50"), "created": str("2024-01-02 03:04:05+00"), "doc": str("{}")}
	if title == "-" {
		r["title"] = nil
	}
	return r
}

func keyRow(id int) fanout.Row { return fanout.Row{"id": str(fmt.Sprint(id))} }

// route runs Route and renders what each shape got, sorted, e.g.
// "a insert row{id=1 title=abc}".
func route(t *testing.T, r *Registry, c RowChange) []string {
	t.Helper()
	var out []string
	r.Route(c, func(s *fanout.Shape, ch fanout.Change) {
		line := s.Handle + " " + string(ch.Op)
		if ch.Row != nil {
			line += " row" + render(ch.Row)
		}
		if ch.Old != nil {
			line += " old" + render(ch.Old)
		}
		if ch.Before != nil {
			line += " before" + render(ch.Before)
		}
		out = append(out, line)
	})
	sort.Strings(out)
	return out
}

func render(r fanout.Row) string {
	var parts []string
	for k, v := range r {
		s := "NULL"
		if v != nil {
			s = *v
		}
		parts = append(parts, k+"="+s)
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, " ") + "}"
}

func full(id, owner int, title string) string {
	return render(item(id, owner, title))
}

func newItemsRegistry(t *testing.T) *Registry {
	t.Helper()
	r := NewRegistry(WithEvalErrors(func(s *fanout.Shape, err error) { t.Errorf("shape %s: %v", s.Handle, err) }))
	for _, s := range []*fanout.Shape{
		shape("a", "owner = 7", "title"), // projected: id and title
		shape("b", "title LIKE 'a%'"),
		shape("c", "owner = 8"),
	} {
		if err := r.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func TestRoute(t *testing.T) {
	cases := []struct {
		name string
		c    RowChange
		want []string
	}{
		{"insert matches two shapes, projected for a",
			RowChange{Op: fanout.OpInsert, New: item(1, 7, "abc")},
			[]string{"a insert row{id=1 title=abc}", "b insert row" + full(1, 7, "abc")}},
		{"insert matches none",
			RowChange{Op: fanout.OpInsert, New: item(1, 9, "xyz")}, nil},
		{"insert with NULL title matches no LIKE",
			RowChange{Op: fanout.OpInsert, New: item(1, 8, "-")},
			[]string{"c insert row" + full(1, 8, "-")}},
		{"update moves the row from a to c, stays in b",
			RowChange{Op: fanout.OpUpdate, Old: item(1, 7, "abc"), New: item(1, 8, "abc")},
			[]string{"a delete old{id=1}", "b update row" + full(1, 8, "abc"), "c insert row" + full(1, 8, "abc")}},
		{"update that changes the key",
			RowChange{Op: fanout.OpUpdate, Old: item(1, 7, "abc"), New: item(2, 7, "abc")},
			[]string{"a update row{id=2 title=abc} old{id=1}", "b update row" + full(2, 7, "abc") + " old{id=1}"}},
		{"update out of every shape",
			RowChange{Op: fanout.OpUpdate, Old: item(1, 7, "abc"), New: item(1, 9, "xyz")},
			[]string{"a delete old{id=1}", "b delete old{id=1}"}},
		{"update touching no shape",
			RowChange{Op: fanout.OpUpdate, Old: item(1, 9, "xyz"), New: item(1, 10, "xyz")}, nil},
		{"update without old row: new decides, upsert or delete by key",
			RowChange{Op: fanout.OpUpdate, New: item(1, 7, "xyz")},
			[]string{"a update row{id=1 title=xyz}", "b delete old{id=1}", "c delete old{id=1}"}},
		{"update with key-only old row and a new key",
			RowChange{Op: fanout.OpUpdate, Old: keyRow(1), New: item(2, 8, "abc")},
			[]string{"a delete old{id=1}", "b update row" + full(2, 8, "abc") + " old{id=1}", "c update row" + full(2, 8, "abc") + " old{id=1}"}},
		{"update with an unchanged TOASTed title taken from the old row",
			RowChange{Op: fanout.OpUpdate, Old: item(1, 8, "abc"), New: without(item(1, 7, "abc"), "title")},
			[]string{"a insert row{id=1 title=abc}", "b update row" + full(1, 7, "abc"), "c delete old{id=1}"}},
		{"delete with the full old row",
			RowChange{Op: fanout.OpDelete, Old: item(1, 7, "xyz")},
			[]string{"a delete old{id=1}"}},
		{"delete with a key-only old row goes to every shape",
			RowChange{Op: fanout.OpDelete, Old: keyRow(1)},
			[]string{"a delete old{id=1}", "b delete old{id=1}", "c delete old{id=1}"}},
		{"other table",
			RowChange{Table: "public.other", Op: fanout.OpInsert, New: item(1, 7, "abc")}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newItemsRegistry(t)
			if c.c.Table == "" {
				c.c.Table = "public.items"
			}
			if got := route(t, r, c.c); !reflect.DeepEqual(got, c.want) {
				t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
			}
		})
	}
}

// With the whole old row (REPLICA IDENTITY FULL), changes carry Before: the
// old key and changed projected columns on updates, the whole projected old
// row on deletes and moves out; nothing without it.
func TestRouteBefore(t *testing.T) {
	priced := func(r fanout.Row, price string) fanout.Row { r["price"] = str(price); return r }
	cases := []struct {
		name string
		c    RowChange
		want []string
	}{
		{"update of a non-key column: its old value and the key",
			RowChange{Op: fanout.OpUpdate, Old: item(1, 7, "abc"), OldFull: true, New: item(1, 7, "abd")},
			[]string{"a update row{id=1 title=abd} before{id=1 title=abc}", "b update row" + full(1, 7, "abd") + " before{id=1 title=abc}"}},
		{"update of a column a does not keep: a's before is the key alone",
			RowChange{Op: fanout.OpUpdate, Old: item(1, 7, "abc"), OldFull: true, New: priced(item(1, 7, "abc"), "2.00")},
			[]string{"a update row{id=1 title=abc} before{id=1}", "b update row" + render(priced(item(1, 7, "abc"), "2.00")) + " before{id=1 price=1.50}"}},
		{"a key change: the old key",
			RowChange{Op: fanout.OpUpdate, Old: item(1, 7, "abc"), OldFull: true, New: item(2, 7, "abc")},
			[]string{"a update row{id=2 title=abc} old{id=1} before{id=1}", "b update row" + full(2, 7, "abc") + " old{id=1} before{id=1}"}},
		{"a move out gets the whole old row, a move in none",
			RowChange{Op: fanout.OpUpdate, Old: item(1, 7, "abc"), OldFull: true, New: item(1, 8, "abc")},
			[]string{"a delete old{id=1} before{id=1 title=abc}", "b update row" + full(1, 8, "abc") + " before{id=1 owner=7}", "c insert row" + full(1, 8, "abc")}},
		{"delete: the whole projected old row",
			RowChange{Op: fanout.OpDelete, Old: item(1, 7, "abc"), OldFull: true},
			[]string{"a delete old{id=1} before{id=1 title=abc}", "b delete old{id=1} before" + full(1, 7, "abc")}},
		{"an unchanged TOASTed title is not a change",
			RowChange{Op: fanout.OpUpdate, Old: item(1, 7, "abc"), OldFull: true, New: without(priced(item(1, 7, "abc"), "2.00"), "title")},
			[]string{"a update row{id=1 title=abc} before{id=1}", "b update row" + render(priced(item(1, 7, "abc"), "2.00")) + " before{id=1 price=1.50}"}},
		{"REPLICA IDENTITY DEFAULT: no old row, no before",
			RowChange{Op: fanout.OpUpdate, New: item(1, 7, "abd")},
			[]string{"a update row{id=1 title=abd}", "b update row" + full(1, 7, "abd"), "c delete old{id=1}"}},
		{"REPLICA IDENTITY DEFAULT: a key-only old row gives no before",
			RowChange{Op: fanout.OpUpdate, Old: keyRow(1), New: item(2, 7, "abc")},
			[]string{"a update row{id=2 title=abc} old{id=1}", "b update row" + full(2, 7, "abc") + " old{id=1}", "c delete old{id=1}"}},
		{"REPLICA IDENTITY DEFAULT: a delete by key gives no before",
			RowChange{Op: fanout.OpDelete, Old: keyRow(1)},
			[]string{"a delete old{id=1}", "b delete old{id=1}", "c delete old{id=1}"}},
		{"an old row without every column (not really full) gives no before on updates",
			RowChange{Op: fanout.OpUpdate, Old: without(item(1, 7, "abc"), "doc"), OldFull: true, New: item(1, 7, "abd")},
			[]string{"a update row{id=1 title=abd}", "b update row" + full(1, 7, "abd")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newItemsRegistry(t)
			c.c.Table = "public.items"
			if got := route(t, r, c.c); !reflect.DeepEqual(got, c.want) {
				t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
			}
		})
	}
}

// Shapes keeping every column share one Before, and routing modifies
// neither it nor the change's rows.
func TestRouteBeforeIsSharedAndRowsUntouched(t *testing.T) {
	r := NewRegistry()
	for _, s := range []*fanout.Shape{shape("x", "owner = 7"), shape("y", "owner > 6"), shape("z", "owner = 7", "title")} {
		if err := r.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	old, newRow := item(1, 7, "abc"), item(1, 7, "abd")
	oldCopy, newCopy := render(old), render(newRow)
	befores := map[string]fanout.Row{}
	r.Route(RowChange{Table: "public.items", Op: fanout.OpUpdate, Old: old, OldFull: true, New: newRow}, func(s *fanout.Shape, ch fanout.Change) {
		befores[s.Handle] = ch.Before
	})
	if len(befores) != 3 || reflect.ValueOf(befores["x"]).UnsafePointer() != reflect.ValueOf(befores["y"]).UnsafePointer() {
		t.Errorf("shapes keeping every column should share one Before: %v", befores)
	}
	if render(befores["z"]) != "{id=1 title=abc}" {
		t.Errorf("projected shape's Before %s", render(befores["z"]))
	}
	if render(old) != oldCopy || render(newRow) != newCopy {
		t.Errorf("routing changed the change's rows: old %s, new %s", render(old), render(newRow))
	}
}

func TestUnreadableRowValueIsReported(t *testing.T) {
	var reported []string
	r := NewRegistry(WithEvalErrors(func(s *fanout.Shape, err error) { reported = append(reported, s.Handle+": "+err.Error()) }))
	if err := r.Add(shape("a", "owner = 7")); err != nil {
		t.Fatal(err)
	}
	if err := r.Add(shape("b", "owner IS NULL")); err != nil {
		t.Fatal(err)
	}
	row := item(1, 7, "x")
	row["owner"] = str("seven")
	got := route(t, r, RowChange{Table: "public.items", Op: fanout.OpInsert, New: row})
	// The value counts as NULL: a does not match, b does.
	if want := []string{"b insert row" + render(row)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
	sort.Strings(reported)
	want := []string{`a: column "owner": row value "seven" is not a valid integer`, `b: column "owner": row value "seven" is not a valid integer`}
	if !reflect.DeepEqual(reported, want) {
		t.Fatalf("reported %q, want %q", reported, want)
	}
}

func without(r fanout.Row, col string) fanout.Row {
	delete(r, col)
	return r
}

func TestRegistryAddReplaceRemove(t *testing.T) {
	r := newItemsRegistry(t)
	if err := r.Add(shape("a", "owner = 9")); err != nil { // replace a
		t.Fatal(err)
	}
	if err := r.Add(shape("d", "ownr = 9")); err == nil || !strings.Contains(err.Error(), `shape d on public.items: where clause: column "ownr" does not exist`) {
		t.Fatalf("bad shape: %v", err)
	}
	if r.Len() != 3 {
		t.Fatalf("Len = %d, want 3", r.Len())
	}
	if s, ok := r.Get("a"); !ok || s.Where != "owner = 9" {
		t.Fatalf("Get(a) = %v %v", s, ok)
	}
	got := route(t, r, RowChange{Table: "public.items", Op: fanout.OpInsert, New: item(1, 9, "x")})
	if want := []string{"a insert row" + full(1, 9, "x")}; !reflect.DeepEqual(got, want) {
		t.Fatalf("replaced shape: got %v want %v", got, want)
	}
	var all []string
	r.ShapesOf("public.items", func(s *fanout.Shape) { all = append(all, s.Handle) })
	sort.Strings(all)
	if strings.Join(all, ",") != "a,b,c" {
		t.Fatalf("ShapesOf = %v", all)
	}
	r.Remove("a")
	r.Remove("nope")
	if _, ok := r.Get("a"); ok || r.Len() != 2 {
		t.Fatal("a still registered")
	}
	if got := route(t, r, RowChange{Table: "public.items", Op: fanout.OpInsert, New: item(1, 9, "x")}); got != nil {
		t.Fatalf("removed shape still routed: %v", got)
	}
	r.Remove("b")
	r.Remove("c")
	if len(r.tables) != 0 {
		t.Fatalf("empty registry keeps table indexes: %v", r.tables)
	}
}

// TestIndexAgreesWithFullScan adds and removes random shapes and checks that
// the index routes exactly like evaluating every shape.
func TestIndexAgreesWithFullScan(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	r := NewRegistry()
	live := map[string]*Predicate{}
	wheres := func(i int) string {
		switch i % 6 {
		case 0:
			return fmt.Sprintf("owner = %d", rng.Intn(20))
		case 1:
			return fmt.Sprintf("owner IN (%d, %d, '%03d')", rng.Intn(20), rng.Intn(20), rng.Intn(20))
		case 2:
			return fmt.Sprintf("owner = %d AND title > 'm'", rng.Intn(20))
		case 3:
			return fmt.Sprintf("owner > %d", rng.Intn(20))
		case 4:
			return fmt.Sprintf("title = '%c' AND owner < 10", 'a'+rng.Intn(5))
		}
		return "flag"
	}
	for round := 0; round < 20; round++ {
		for i := 0; i < 200; i++ {
			h := fmt.Sprintf("s%d", rng.Intn(600))
			if rng.Intn(3) == 0 {
				r.Remove(h)
				delete(live, h)
				continue
			}
			s := shape(h, wheres(i))
			if err := r.Add(s); err != nil {
				t.Fatal(err)
			}
			p, err := Compile(s.Where, s.Schema)
			if err != nil {
				t.Fatal(err)
			}
			live[h] = p
		}
		if r.Len() != len(live) {
			t.Fatalf("Len %d, want %d", r.Len(), len(live))
		}
		for i := 0; i < 50; i++ {
			row := item(1, rng.Intn(22), string(rune('a'+rng.Intn(26))))
			if i%5 == 0 {
				row = without(row, "owner") // every shape indexed on owner is a candidate, once
			}
			ops := []fanout.Op{fanout.OpInsert}
			if _, ok := row["owner"]; ok {
				ops = append(ops, fanout.OpDelete) // a full old row: deleted from the shapes it matched
			}
			for _, op := range ops {
				c := RowChange{Table: "public.items", Op: op, New: row}
				if op == fanout.OpDelete {
					c = RowChange{Table: "public.items", Op: op, Old: row, OldFull: true}
				}
				got := map[string]bool{}
				r.Route(c, func(s *fanout.Shape, _ fanout.Change) {
					if got[s.Handle] {
						t.Fatalf("%s: shape %s emitted twice", op, s.Handle)
					}
					got[s.Handle] = true
				})
				for h, p := range live {
					if p.Eval(row) != got[h] {
						t.Fatalf("round %d: %s: shape %s (%s) on row %s: index says %v", round, op, h, p, render(row), got[h])
					}
				}
			}
		}
	}
}

// TestIndexTouchesOnlyMatchingShapes: with 100K equality shapes a change
// evaluates only the shapes of its own values.
func TestIndexTouchesOnlyMatchingShapes(t *testing.T) {
	const n = 100_000
	r := NewRegistry()
	for i := 0; i < n; i++ {
		if err := r.Add(shape(fmt.Sprintf("s%d", i), fmt.Sprintf("owner = %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Add(shape("scan", "title LIKE 'a%'")); err != nil {
		t.Fatal(err)
	}
	before := r.examined
	got := route(t, r, RowChange{Table: "public.items", Op: fanout.OpInsert, New: item(1, 4242, "abc")})
	if want := []string{"s4242 insert row" + full(1, 4242, "abc"), "scan insert row" + full(1, 4242, "abc")}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
	if evals := r.examined - before; evals != 2 {
		t.Fatalf("insert examined %d shapes, want 2 (its bucket and the scan list)", evals)
	}
	before = r.examined
	got = route(t, r, RowChange{Table: "public.items", Op: fanout.OpUpdate, Old: item(1, 10, "x"), New: item(1, 20, "x")})
	if want := []string{"s10 delete old{id=1}", "s20 insert row" + full(1, 20, "x")}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
	if evals := r.examined - before; evals != 6 { // 3 candidates, old and new row each
		t.Fatalf("update examined %d shapes, want 6", evals)
	}
	for i := 0; i < n; i += 2 {
		r.Remove(fmt.Sprintf("s%d", i))
	}
	if got := route(t, r, RowChange{Table: "public.items", Op: fanout.OpInsert, New: item(1, 4242, "x")}); got != nil {
		t.Fatalf("removed shape routed: %v", got)
	}
	if got := route(t, r, RowChange{Table: "public.items", Op: fanout.OpInsert, New: item(1, 4243, "x")}); len(got) != 1 {
		t.Fatalf("remaining shape not routed: %v", got)
	}
}

var benchRegistries = map[int]*Registry{}

func benchRoute(b *testing.B, n int) {
	r := benchRegistries[n]
	if r == nil {
		r = NewRegistry()
		for i := 0; i < n; i++ {
			if err := r.Add(shape(fmt.Sprintf("s%d", i), fmt.Sprintf("owner = %d", i))); err != nil {
				b.Fatal(err)
			}
		}
		benchRegistries[n] = r
	}
	rows := make([]fanout.Row, 1024)
	for i := range rows {
		rows[i] = item(i, rand.Intn(n), "abc")
	}
	routeInserts(b, r, rows)
}

// routeInserts routes b.N inserts of rows, in turn, through r, each of
// which must reach exactly one shape.
func routeInserts(b *testing.B, r *Registry, rows []fanout.Row) {
	b.ReportAllocs()
	b.ResetTimer()
	emitted := 0
	for i := 0; i < b.N; i++ {
		r.Route(RowChange{Table: "public.items", Op: fanout.OpInsert, New: rows[i%len(rows)]},
			func(*fanout.Shape, fanout.Change) { emitted++ })
	}
	if emitted != b.N {
		b.Fatalf("emitted %d for %d inserts", emitted, b.N)
	}
}

// BenchmarkRoute1K and BenchmarkRoute300K should cost the same per change.
func BenchmarkRoute1K(b *testing.B)   { benchRoute(b, 1_000) }
func BenchmarkRoute300K(b *testing.B) { benchRoute(b, 300_000) }

// TestIndexDecidesOneEquality: a shape whose where clause is one equality
// keeps no predicate, and its keys give the predicate's answer (and error)
// on every row, NULLs, missing and unreadable values included.
func TestIndexDecidesOneEquality(t *testing.T) {
	wheres := []string{"owner = 7", "owner IN (1, 7, NULL)", "owner = NULL", "flag", "flag = false",
		"title = 'x'", "price = 1.5", "owner = 7.0", "created = '2024-01-02 05:04:05+02'",
		"owner = ANY('{1,7,NULL}')", "title = ANY(ARRAY['x', 'y'])", "owner = ANY(NULL::int[])"}
	rows := []fanout.Row{item(1, 7, "x"), item(1, 1, "y"), item(1, 8, "-"), without(item(1, 7, "x"), "owner"),
		{"id": str("1"), "owner": nil, "flag": nil, "price": nil, "title": nil, "created": nil}}
	odd := item(1, 7, "x")
	odd["owner"], odd["flag"], odd["price"], odd["created"] = str("seven"), str("maybe"), str("1.50"), str("2024-01-02 03:04:05+00")
	rows = append(rows, odd)
	for i, w := range wheres {
		r := NewRegistry()
		if err := r.Add(shape("a", w)); err != nil {
			t.Fatal(err)
		}
		e := r.shapes["a"]
		if e.pred != nil {
			t.Errorf("%q keeps a predicate; the index should decide", w)
			continue
		}
		p, err := Compile(w, itemsSchema)
		if err != nil {
			t.Fatal(err)
		}
		for j, row := range rows {
			got, gotErr := e.decide(row)
			want, wantErr := p.EvalErr(row)
			if got != want || fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
				t.Errorf("%d %q on row %d %s: index says %v (%v), predicate %v (%v)", i, w, j, render(row), got, gotErr, want, wantErr)
			}
		}
	}
}

// richSchema is itemsSchema with an enum and an array column.
var richSchema = append(append([]fanout.Column(nil), itemsSchema...),
	fanout.Column{Name: "m", Type: "mood", OID: 90001, Enum: &[]string{"sad", "ok", "happy"}},
	fanout.Column{Name: "tags", Type: "text[]", OID: 1009, ElemOID: 25})

func richItem(id, owner int, title, m, tags string) fanout.Row {
	r := item(id, owner, title)
	r["m"], r["tags"] = str(m), str(tags)
	return r
}

// TestRouteRichClauses: enum equalities and $n equalities are indexed (and
// decided by the index when they are the whole clause); the other new
// clauses are evaluated.
func TestRouteRichClauses(t *testing.T) {
	r := NewRegistry(WithEvalErrors(func(s *fanout.Shape, err error) { t.Errorf("shape %s: %v", s.Handle, err) }))
	add := func(h, where string, params ...string) {
		s := shape(h, where)
		s.Schema, s.Params = richSchema, params
		if err := r.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	add("enum", "m = 'happy'")
	add("enumin", "m IN ('sad', 'ok')")
	add("param", "owner = $1", "7")
	add("lower", "lower(title) = 'abc'")
	add("tags", "tags @> '{red}' AND owner + 1 > 5")
	add("any", "owner = ANY($1)", "{9,7,NULL}")
	add("enumtext", "m::text IN ('happy', 'nope')")
	for h, indexed := range map[string]bool{"enum": true, "enumin": true, "param": true, "lower": false, "tags": false, "any": true, "enumtext": true} {
		e := r.shapes[h]
		if (e.col != nil) != indexed || (indexed && e.pred != nil) {
			t.Errorf("shape %s: indexed %v, keeps a predicate %v; want indexed %v and decided by the index", h, e.col != nil, e.pred != nil, indexed)
		}
	}
	got := route(t, r, RowChange{Table: "public.items", Op: fanout.OpInsert, New: richItem(1, 7, "ABC", "happy", "{red,blue}")})
	var handles []string
	for _, l := range got {
		handles = append(handles, strings.Fields(l)[0])
	}
	if strings.Join(handles, ",") != "any,enum,enumtext,lower,param,tags" {
		t.Errorf("routed to %v, want any, enum, enumtext, lower, param, tags", handles)
	}
	got = route(t, r, RowChange{Table: "public.items", Op: fanout.OpUpdate, Old: richItem(1, 7, "ABC", "happy", "{red,blue}"), New: richItem(1, 3, "x", "ok", "{}")})
	want := []string{"any delete old{id=1}", "enum delete old{id=1}", "enumin insert row" + render(richItem(1, 3, "x", "ok", "{}")), "enumtext delete old{id=1}", "lower delete old{id=1}", "param delete old{id=1}", "tags delete old{id=1}"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("update moving the row:\n got %q\nwant %q", got, want)
	}
}

// BenchmarkRouteOperators is the routing cost of the general evaluator's
// clauses: an insert routed through 100 shapes of one kind of clause (on the
// scan list, so each is evaluated), reported per shape evaluated; enum and
// $n equalities are indexed and cost what owner = N does.
func BenchmarkRouteOperators(b *testing.B) {
	clauses := []struct{ name, where string }{
		{"column-equality", "owner = %d"},
		{"param-equality", "owner = $1"},
		{"enum-equality", "m = 'happy'"},
		{"arithmetic", "owner * 2 + 1 > %d"},
		{"lower", "lower(title) = 'abc%d'"},
		{"concat-like", "title || '-' || owner LIKE 'a%%%d'"},
		{"coalesce-cast", "coalesce(price, 0)::int > %d"},
		{"timestamp+interval", "created + interval '1 day' > '2024-01-01'::timestamptz + interval '%d hours'"},
		{"array-contains", "tags @> ARRAY['red', 'x%d']"},
		{"any", "'x%d' = ANY(tags)"},
		{"case", "CASE WHEN owner > %d THEN 'hi' ELSE 'lo' END = 'hi'"},
	}
	for _, c := range clauses {
		b.Run(c.name, func(b *testing.B) {
			r := NewRegistry()
			const n = 100
			for i := 0; i < n; i++ {
				w := c.where
				var params []string
				if strings.Contains(w, "$1") {
					params = []string{fmt.Sprint(i)}
				} else if strings.Contains(w, "%d") {
					w = fmt.Sprintf(w, i)
				}
				s := shape(fmt.Sprintf("s%d", i), w)
				s.Schema, s.Params = richSchema, params
				if err := r.Add(s); err != nil {
					b.Fatal(err)
				}
			}
			row := richItem(1, 7, "abc", "happy", "{red,blue,x7}")
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r.Route(RowChange{Table: "public.items", Op: fanout.OpInsert, New: row}, func(*fanout.Shape, fanout.Change) {})
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/shape")
		})
	}
}
