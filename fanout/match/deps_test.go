package match

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// routed is what Route emitted, per shape, in order.
type routed map[string][]fanout.Change

func (rt routed) emit(s *fanout.Shape, ch fanout.Change) { rt[s.Handle] = append(rt[s.Handle], ch) }

func issuesShape(handle, where string, params ...string) *fanout.Shape {
	return &fanout.Shape{Handle: handle, Table: "public.issues", Where: where, Params: params, PrimaryKey: []string{"id"}, Schema: issuesSchema, Tables: subTables}
}

// load answers the registry's load requests from rows per table, with a
// snapshot that saw every transaction up to xid 100 and a WAL position.
func load(t *testing.T, r *Registry, rows map[string][]fanout.Row) {
	t.Helper()
	for _, req := range r.TakeLoads() {
		l := DepLoad{Subqueries: req.Subqueries, Rows: map[string][]fanout.Row{}, Snapshot: visibility.Snapshot{Xmin: 100, Xmax: 100}, WalLSN: 1000}
		for _, s := range req.Subqueries {
			for _, row := range rows[s.Table] {
				if s.Where == nil || s.Where.HasSubqueries() {
					l.Rows[s.ID] = append(l.Rows[s.ID], project(row, s.Needed()))
					continue
				}
				if ok, _ := s.Where.EvalWith(row, r); ok {
					l.Rows[s.ID] = append(l.Rows[s.ID], project(row, s.Needed()))
				}
			}
		}
		r.Loaded(l)
	}
}

func member(id, user, project int) fanout.Row {
	return fanout.Row{"id": str(fmt.Sprint(id)), "user_id": str(fmt.Sprint(user)), "project_id": str(fmt.Sprint(project)), "role": str("dev"), "tags": nil}
}

func issue(id, project int, title string) fanout.Row {
	return fanout.Row{"id": str(fmt.Sprint(id)), "project_id": str(fmt.Sprint(project)), "owner": str("o"), "title": str(title), "big": str("1")}
}

func TestDependencyLifecycle(t *testing.T) {
	r := NewRegistry()
	sh := issuesShape("s1", "project_id IN (SELECT project_id FROM members WHERE user_id = $1)", "7")
	if err := r.Add(sh); err != nil {
		t.Fatal(err)
	}
	if !r.IsWaiting("s1") {
		t.Fatal("a shape whose subquery is not loaded is routed")
	}
	rt := routed{}
	// While it loads, a change of members is kept (xid 150: the snapshot
	// will not see it), and issues are not routed to the waiting shape.
	r.BeginTxn(150, 900)
	r.Route(RowChange{Table: "public.members", Op: fanout.OpInsert, New: member(3, 7, 30)}, rt.emit)
	r.Route(RowChange{Table: "public.issues", Op: fanout.OpInsert, New: issue(1, 10, "a")}, rt.emit)
	if len(rt) != 0 {
		t.Fatalf("routed to a waiting shape: %v", rt)
	}
	load(t, r, map[string][]fanout.Row{"public.members": {member(1, 7, 10), member(2, 8, 20)}})
	if !r.IsWaiting("s1") {
		t.Fatal("routed before the stream passed the load's snapshot")
	}
	r.BeginTxn(160, 1100) // past the WAL position read with the snapshot
	if r.IsWaiting("s1") || strings.Join(r.TakeReady(), ",") != "s1" {
		t.Fatal("not routed once the stream passed the snapshot")
	}
	res := r.Result(firstSub(r, "s1"))
	if res.Len() != 2 || !res.Has("10") || !res.Has("30") {
		t.Fatalf("result %v: want 10 (loaded) and 30 (kept while loading)", res.counts)
	}

	r.Route(RowChange{Table: "public.issues", Op: fanout.OpInsert, New: issue(1, 10, "a")}, rt.emit)
	r.Route(RowChange{Table: "public.issues", Op: fanout.OpInsert, New: issue(2, 20, "b")}, rt.emit)
	got := rt["s1"]
	if len(got) != 1 || got[0].Op != fanout.OpInsert || *got[0].Row["id"] != "1" {
		t.Fatalf("routed %+v, want the insert of issue 1 only", got)
	}
	if h := TagHash("s1", "10"); len(got[0].Tags) != 1 || got[0].Tags[0] != h || len(got[0].Active) != 1 || !got[0].Active[0] {
		t.Errorf("insert tags %v active %v, want [%s] [true]", got[0].Tags, got[0].Active, h)
	}

	// A member joins project 20: a move-in event, a pending move-in, and an
	// update of issue 2 (which the client does not hold) as a whole insert.
	rt = routed{}
	r.BeginTxn(170, 1200)
	r.Route(RowChange{Table: "public.members", Op: fanout.OpInsert, New: member(4, 7, 20)}, rt.emit)
	if got := rt["s1"]; len(got) != 1 || got[0].Op != fanout.OpMoveIn || got[0].Patterns[0].Value != TagHash("s1", "20") {
		t.Fatalf("move-in: %+v", got)
	}
	mis := r.TakeMoveIns()
	if len(mis) != 1 || mis[0].Handle != "s1" || strings.Join(mis[0].Tuples, ",") != "20" || mis[0].Xid != 170 {
		t.Fatalf("move-ins %+v", mis)
	}
	old, upd := issue(2, 20, "b"), issue(2, 20, "b2")
	r.Route(RowChange{Table: "public.issues", Op: fanout.OpUpdate, Old: old, OldFull: true, New: upd}, rt.emit)
	if got := rt["s1"][1]; got.Op != fanout.OpInsert || *got.Row["title"] != "b2" {
		t.Fatalf("update of a pending row: %+v, want an insert of the whole row", got)
	}
	rows := r.MoveInRows("s1", []fanout.Row{issue(2, 20, "b2"), issue(5, 99, "not in")})
	if len(rows) != 1 || !rows[0].MoveIn || *rows[0].Row["id"] != "2" {
		t.Fatalf("move-in rows %+v", rows)
	}
	r.MoveInDone("s1", mis[0].Sub, mis[0].Tuples)
	rt = routed{}
	r.Route(RowChange{Table: "public.issues", Op: fanout.OpUpdate, Old: upd, OldFull: true, New: issue(2, 20, "b3")}, rt.emit)
	if got := rt["s1"]; len(got) != 1 || got[0].Op != fanout.OpUpdate {
		t.Fatalf("update once placed: %+v", got)
	}

	// Member 1 leaves project 10: a move-out of its hash.
	rt = routed{}
	r.Route(RowChange{Table: "public.members", Op: fanout.OpDelete, Old: fanout.Row{"id": str("1")}}, rt.emit)
	if got := rt["s1"]; len(got) != 1 || got[0].Op != fanout.OpMoveOut || got[0].Patterns[0] != (fanout.Pattern{Pos: 0, Value: TagHash("s1", "10")}) {
		t.Fatalf("move-out: %+v", got)
	}
	// An issue of project 10 no longer reaches the shape.
	rt = routed{}
	r.Route(RowChange{Table: "public.issues", Op: fanout.OpInsert, New: issue(9, 10, "x")}, rt.emit)
	if len(rt) != 0 {
		t.Fatalf("routed after the move-out: %v", rt)
	}
	// A member row moving to another project: out of 30, into 40.
	rt = routed{}
	r.Route(RowChange{Table: "public.members", Op: fanout.OpUpdate, Old: member(3, 7, 30), OldFull: true, New: member(3, 7, 40)}, rt.emit)
	if got := rt["s1"]; len(got) != 2 || got[0].Op != fanout.OpMoveOut || got[1].Op != fanout.OpMoveIn {
		t.Fatalf("member moved between projects: %+v", got)
	}
	r.Remove("s1")
	if len(r.deps) != 0 || len(r.depTables) != 0 {
		t.Errorf("removing the last shape left results: %v", r.deps)
	}
}

// firstSub is the first subquery of a shape's compiled clause.
func firstSub(r *Registry, handle string) *Subquery {
	return r.shapes[handle].pred.Subqueries()[0]
}

// subqueryRegistry has n shapes `project_id IN (SELECT project_id FROM
// members WHERE user_id = $1)`, one per user, each user a member of 3 of
// n projects.
func subqueryRegistry(tb testing.TB, n int) *Registry {
	tb.Helper()
	r := NewRegistry()
	var members []fanout.Row
	for u := 0; u < n; u++ {
		if err := r.Add(issuesShape(fmt.Sprintf("u%d", u), "project_id IN (SELECT project_id FROM members WHERE user_id = $1)", fmt.Sprint(u))); err != nil {
			tb.Fatal(err)
		}
		for j := 0; j < 3; j++ {
			members = append(members, member(len(members)+1, u, (u*7+j*13)%n))
		}
	}
	for _, req := range r.TakeLoads() {
		l := DepLoad{Subqueries: req.Subqueries, Rows: map[string][]fanout.Row{}, Snapshot: visibility.Snapshot{Xmin: 100, Xmax: 100}, WalLSN: 1000}
		byUser := map[string][]fanout.Row{}
		for _, m := range members {
			byUser[*m["user_id"]] = append(byUser[*m["user_id"]], m)
		}
		for _, s := range req.Subqueries {
			u := strings.TrimSuffix(strings.TrimPrefix(s.WhereSQL, "user_id = '"), "'")
			l.Rows[s.ID] = byUser[u]
		}
		r.Loaded(l)
	}
	r.BeginTxn(200, 2000)
	if r.Waiting() != 0 {
		tb.Fatalf("%d shapes still wait", r.Waiting())
	}
	return r
}

// The index from subquery values to shapes: a change is evaluated against
// the shapes whose results hold its value only, not all of them.
func TestSubqueryIndexRoutesByValue(t *testing.T) {
	const n = 2000
	r := subqueryRegistry(t, n)
	rt := routed{}
	before := r.examined
	r.Route(RowChange{Table: "public.issues", Op: fanout.OpInsert, New: issue(1, 13, "a")}, rt.emit)
	examined := r.examined - before
	if examined > 10 {
		t.Errorf("an insert examined %d of %d shapes, want only those whose results hold its project", examined, n)
	}
	// Exactly the users who are members of project 13 got it.
	want := 0
	for u := 0; u < n; u++ {
		for j := 0; j < 3; j++ {
			if (u*7+j*13)%n == 13 {
				want++
				break
			}
		}
	}
	if len(rt) != want || want == 0 {
		t.Errorf("routed to %d shapes, want %d", len(rt), want)
	}
	// A member joining moves the value into one user's index.
	r.Route(RowChange{Table: "public.members", Op: fanout.OpInsert, New: member(999999, 5, 1777)}, routed{}.emit)
	rt = routed{}
	r.Route(RowChange{Table: "public.issues", Op: fanout.OpInsert, New: issue(2, 1777, "b")}, rt.emit)
	if _, ok := rt["u5"]; !ok {
		t.Errorf("a value that entered user 5's result does not route to its shape: %v", rt)
	}
	// And leaving takes it out.
	r.Route(RowChange{Table: "public.members", Op: fanout.OpDelete, Old: fanout.Row{"id": str("999999")}}, routed{}.emit)
	rt = routed{}
	r.Route(RowChange{Table: "public.issues", Op: fanout.OpInsert, New: issue(3, 1777, "c")}, rt.emit)
	if _, ok := rt["u5"]; ok {
		t.Errorf("a value that left user 5's result still routes to its shape")
	}
}

// BenchmarkRouteSubqueryShapes routes an insert among 10,000 shapes
// `project_id IN (SELECT project_id FROM members WHERE user_id = $1)`, and,
// for comparison, among 10,000 equality shapes `project_id = $1`.
func BenchmarkRouteSubqueryShapes(b *testing.B) {
	const n = 10_000
	sub := subqueryRegistry(b, n)
	eq := NewRegistry()
	for u := 0; u < n; u++ {
		if err := eq.Add(issuesShape(fmt.Sprintf("e%d", u), "project_id = $1", fmt.Sprint(u))); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		r    *Registry
	}{{"subquery", sub}, {"equality", eq}} {
		b.Run(c.name, func(b *testing.B) {
			rows := make([]fanout.Row, 256)
			for i := range rows {
				rows[i] = issue(i, (i*37)%n, "t")
			}
			emitted := 0
			emit := func(*fanout.Shape, fanout.Change) { emitted++ }
			i := 0
			for b.Loop() {
				c.r.Route(RowChange{Table: "public.issues", Op: fanout.OpInsert, New: rows[i%len(rows)]}, emit)
				i++
			}
			b.ReportMetric(float64(emitted)/float64(b.N), "shapes/op")
		})
	}
}

// A restart: the results are loaded again (at a later point) and rewound,
// with the rows as they were before the changes since, to where the stream
// starts again; the shapes reading them wait until then.
func TestRewoundResults(t *testing.T) {
	r := NewRegistry()
	if err := r.Add(issuesShape("s1", "project_id IN (SELECT project_id FROM members WHERE user_id = 7)")); err != nil {
		t.Fatal(err)
	}
	load(t, r, map[string][]fanout.Row{"public.members": {member(1, 7, 10)}})
	r.BeginTxn(200, 2000)
	if r.IsWaiting("s1") {
		t.Fatal("not routed")
	}
	req := r.ReloadAll()
	if !r.IsWaiting("s1") || len(req.Subqueries) != 1 {
		t.Fatalf("ReloadAll: waiting %v, request %v", r.IsWaiting("s1"), req)
	}
	// Now: member 1 moved to project 20, member 2 (user 7, project 30) was
	// added, member 3 (user 7, project 40) deleted; before those changes:
	// member 1 in project 10, no member 2, member 3 in project 40.
	s := req.Subqueries[0]
	now := []fanout.Row{project(member(1, 7, 20), s.Needed()), project(member(2, 7, 30), s.Needed())}
	r.LoadedAt(DepLoad{Subqueries: req.Subqueries, Rows: map[string][]fanout.Row{s.ID: now}, Snapshot: visibility.Snapshot{Xmin: 300, Xmax: 300}, WalLSN: 3000},
		[]RewindRow{
			{Table: "public.members", Key: fanout.Row{"id": str("1")}, Old: member(1, 7, 10)},
			{Table: "public.members", Key: fanout.Row{"id": str("2")}},
			{Table: "public.members", Key: fanout.Row{"id": str("3")}, Old: member(3, 7, 40)},
		})
	if r.IsWaiting("s1") {
		t.Fatal("still waiting after LoadedAt")
	}
	res := r.Result(firstSub(r, "s1"))
	var got []string
	res.Each(func(id string) { got = append(got, id) })
	sort.Strings(got)
	if strings.Join(got, ",") != "10,40" {
		t.Fatalf("rewound result %v, want 10,40", got)
	}
}
