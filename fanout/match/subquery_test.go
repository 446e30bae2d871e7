package match

import (
	"slices"
	"strings"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

// The tables the subquery tests read: issues (the outer table), members
// and projects.
var (
	issuesSchema = []fanout.Column{
		{Name: "id", Type: "integer", OID: 23},
		{Name: "project_id", Type: "integer", OID: 23},
		{Name: "owner", Type: "text", OID: 25},
		{Name: "title", Type: "text", OID: 25},
		{Name: "big", Type: "bigint", OID: 20},
	}
	membersTable = fanout.TableSchema{Table: "public.members", PrimaryKey: []string{"id"}, Schema: []fanout.Column{
		{Name: "id", Type: "integer", OID: 23},
		{Name: "user_id", Type: "integer", OID: 23},
		{Name: "project_id", Type: "bigint", OID: 20},
		{Name: "role", Type: "text", OID: 25},
		{Name: "tags", Type: "text[]", OID: 1009, ElemOID: 25},
	}}
	projectsTable = fanout.TableSchema{Table: "public.projects", PrimaryKey: []string{"id"}, Schema: []fanout.Column{
		{Name: "id", Type: "integer", OID: 23},
		{Name: "org", Type: "text", OID: 25},
		{Name: "archived", Type: "boolean", OID: 16},
	}}
	subTables = []fanout.TableSchema{membersTable, projectsTable}
)

func compileSub(t *testing.T, where string, params ...string) *Predicate {
	t.Helper()
	p, err := CompileWith(where, params, issuesSchema, subTables)
	if err != nil {
		t.Fatalf("CompileWith(%q): %v", where, err)
	}
	return p
}

func TestSubqueryAccepted(t *testing.T) {
	cases := []struct {
		where     string
		params    []string
		subs      int      // distinct subqueries of the clause itself
		positions int      // conditions of the normal form
		sql       []string // the subqueries' SQL, parameters written in
	}{
		{"project_id IN (SELECT project_id FROM members WHERE user_id = $1)", []string{"7"}, 1, 1,
			[]string{"SELECT project_id FROM members WHERE user_id = '7'"}},
		{"project_id = ANY (SELECT project_id FROM members)", nil, 1, 1, []string{"SELECT project_id FROM members"}},
		{"project_id NOT IN (SELECT project_id FROM members WHERE role = 'gone')", nil, 1, 1, nil},
		{"(project_id, owner) IN (SELECT project_id, role FROM members)", nil, 1, 1, nil},
		{"project_id IN (SELECT m.project_id FROM members m WHERE m.user_id = 1)", nil, 1, 1, nil},
		{"project_id IN (SELECT members.project_id FROM public.members WHERE members.user_id = 1)", nil, 1, 1, nil},
		{"title = 'x' OR project_id IN (SELECT project_id FROM members)", nil, 1, 2, nil},
		{"(title = 'x' OR owner = 'y') AND project_id IN (SELECT project_id FROM members)", nil, 1, 4, nil},
		{"NOT (title = 'x' AND project_id NOT IN (SELECT project_id FROM members))", nil, 1, 2, nil},
		{"project_id IN (SELECT project_id FROM members WHERE project_id IN (SELECT id FROM projects WHERE org = $1))", []string{"acme"}, 1, 1,
			[]string{"SELECT project_id FROM members WHERE project_id IN (SELECT id FROM projects WHERE org = 'acme')"}},
		{"project_id IN (SELECT id FROM projects) AND big IN (SELECT project_id FROM members)", nil, 2, 2, nil},
		{"project_id IN (SELECT id FROM projects) OR project_id IN (SELECT id FROM projects)", nil, 1, 2, nil},
	}
	for _, c := range cases {
		p := compileSub(t, c.where, c.params...)
		if got := len(p.Subqueries()); got != c.subs {
			t.Errorf("%q: %d subqueries, want %d", c.where, got, c.subs)
		}
		if got := p.Positions(); got != c.positions {
			t.Errorf("%q: %d positions, want %d", c.where, got, c.positions)
		}
		for i, sql := range c.sql {
			if got := p.Subqueries()[i].SQL; got != sql {
				t.Errorf("%q: subquery %d SQL %q, want %q", c.where, i, got, sql)
			}
		}
		for _, s := range p.Subqueries() {
			if s.ID == "" || s.SQL == "" {
				t.Errorf("%q: subquery without ID or SQL: %+v", c.where, s)
			}
		}
	}
}

func TestSubqueryRefused(t *testing.T) {
	cases := []struct{ where, err string }{
		{"EXISTS (SELECT 1 FROM members)", "EXISTS (SELECT ...) is not supported"},
		{"project_id = (SELECT project_id FROM members LIMIT 1)", "a scalar subquery such as col = (SELECT ...) is not supported"},
		{"project_id > ANY (SELECT project_id FROM members)", "> ANY (SELECT ...) is not supported"},
		{"project_id <> ALL (SELECT project_id FROM members)", "<> ALL (SELECT ...) is not supported"},
		{"project_id IN (SELECT DISTINCT project_id FROM members)", "DISTINCT is not supported"},
		{"project_id IN (SELECT project_id FROM members GROUP BY project_id)", "GROUP BY / HAVING is not supported"},
		{"project_id IN (SELECT project_id FROM members ORDER BY 1)", "ORDER BY is not supported"},
		{"project_id IN (SELECT project_id FROM members LIMIT 5)", "LIMIT / OFFSET is not supported"},
		{"project_id IN (WITH x AS (SELECT 1) SELECT project_id FROM members)", "WITH is not supported"},
		{"project_id IN (SELECT project_id FROM members UNION SELECT id FROM projects)", "UNION / INTERSECT / EXCEPT is not supported"},
		{"project_id IN (SELECT project_id FROM members, projects)", "must read exactly one table"},
		{"project_id IN (SELECT project_id FROM members JOIN projects ON true)", "must read exactly one table"},
		{"project_id IN (SELECT * FROM members)", "not *"},
		{"project_id IN (SELECT user_id + 1 FROM members)", "must select plain columns of its table"},
		{"project_id IN (SELECT user_id, role FROM members)", "selects 2 column(s) but is compared with 1"},
		{"project_id + 1 IN (SELECT user_id FROM members)", "must be a column or a row of columns"},
		{"owner IN (SELECT user_id FROM members)", `cannot compare column "owner" (text) with column "user_id" of table public.members (integer)`},
		{"project_id IN (SELECT tags FROM members)", "only scalar numbers, text"},
		{"project_id IN (SELECT user_id FROM members WHERE members.id = issues.id)", "a correlated subquery"},
		{"project_id IN (SELECT user_id FROM members WHERE title = 'x')", `column "title" does not exist`},
		{"project_id IN (SELECT user_id FROM nowhere)", "reads table public.nowhere, whose schema was not loaded"},
		{"(project_id IN (SELECT user_id FROM members)) IS TRUE", "a subquery must be a condition of its own"},
		{"coalesce(project_id IN (SELECT user_id FROM members), false)", "subquer"},
		{"project_id IN (SELECT user_id FROM members) OR NOT project_id IN (SELECT user_id FROM members)", "used both as IN and as NOT IN"},
		{"project_id IN (SELECT user_id FROM members WHERE user_id = $1)", "uses $1 but 0 parameter(s) were given"},
	}
	for _, c := range cases {
		_, err := CompileWith(c.where, nil, issuesSchema, subTables)
		if err == nil {
			t.Errorf("CompileWith(%q) succeeded, want an error containing %q", c.where, c.err)
			continue
		}
		if !strings.Contains(err.Error(), c.err) {
			t.Errorf("CompileWith(%q):\n got %v\nwant it to contain %q", c.where, err, c.err)
		}
	}
	// Without the tables (subset__where): refused, whatever the subquery.
	if _, err := CompileParams("project_id IN (SELECT user_id FROM members)", nil, issuesSchema); err == nil || !strings.Contains(err.Error(), "subqueries are not supported here") {
		t.Errorf("CompileParams with a subquery: %v", err)
	}
	// An unused parameter is refused; one used only inside a subquery counts.
	if _, err := CompileWith("project_id IN (SELECT project_id FROM members WHERE user_id = $1)", []string{"1", "2"}, issuesSchema, subTables); err == nil || !strings.Contains(err.Error(), "parameter $2 was given") {
		t.Errorf("unused parameter: %v", err)
	}
}

func TestSubqueryTables(t *testing.T) {
	got, err := SubqueryTables("a IN (SELECT b FROM t WHERE c IN (SELECT d FROM s.u)) OR x IN (SELECT y FROM t)")
	if err != nil || strings.Join(got, ",") != "public.t,s.u" {
		t.Errorf("SubqueryTables = %v, %v", got, err)
	}
}

// results is a Results over fixed tuples, by subquery ID.
type results map[string]*Result

func (r results) Result(s *Subquery) *Result { return r[s.ID] }

// resultOf builds s's result from rows of its table.
func resultOf(t *testing.T, s *Subquery, rows ...fanout.Row) *Result {
	t.Helper()
	r := NewResult(s)
	for _, row := range rows {
		id, err := s.RowTuple(row)
		if err != nil {
			t.Fatal(err)
		}
		r.Add(id)
	}
	return r
}

func TestSubqueryEval(t *testing.T) {
	p := compileSub(t, "project_id IN (SELECT project_id FROM members WHERE user_id = 1) OR title = 'pinned'")
	s := p.Subqueries()[0]
	res := results{s.ID: resultOf(t, s, fanout.Row{"project_id": str("10")}, fanout.Row{"project_id": str("20")}, fanout.Row{"project_id": str("10")})}
	for _, c := range []struct {
		row  fanout.Row
		want bool
	}{
		{fanout.Row{"id": str("1"), "project_id": str("10"), "title": str("a")}, true},
		{fanout.Row{"id": str("2"), "project_id": str("30"), "title": str("a")}, false},
		{fanout.Row{"id": str("3"), "project_id": str("30"), "title": str("pinned")}, true},
		{fanout.Row{"id": str("4"), "project_id": nil, "title": str("a")}, false},
	} {
		got, err := p.EvalWith(c.row, res)
		if err != nil || got != c.want {
			t.Errorf("row %v: %v, %v; want %v", c.row, got, err, c.want)
		}
	}
	if _, err := p.EvalWith(fanout.Row{"project_id": str("10")}, nil); err == nil {
		t.Errorf("evaluating without results must fail")
	}
	// One of the two rows giving 10 goes: 10 stays.
	if left := res[s.ID].Remove("10"); left {
		t.Errorf("10 left with a row still giving it")
	}
	if left := res[s.ID].Remove("10"); !left {
		t.Errorf("10 did not leave with its last row")
	}
}

func TestSubqueryNullSemantics(t *testing.T) {
	in := compileSub(t, "project_id IN (SELECT project_id FROM members)")
	notIn := compileSub(t, "project_id NOT IN (SELECT project_id FROM members)")
	s := in.Subqueries()[0]
	row := func(v *string) fanout.Row { return fanout.Row{"id": str("1"), "project_id": v} }
	check := func(name string, res results, r fanout.Row, wantIn, wantNotIn bool) {
		t.Helper()
		gi, _ := in.EvalWith(r, res)
		gn, _ := notIn.EvalWith(r, res)
		if gi != wantIn || gn != wantNotIn {
			t.Errorf("%s: IN %v NOT IN %v, want %v %v", name, gi, gn, wantIn, wantNotIn)
		}
	}
	empty := results{s.ID: NewResult(s)}
	check("empty result, NULL left", empty, row(nil), false, true)
	check("empty result", empty, row(str("1")), false, true)
	one := results{s.ID: resultOf(t, s, fanout.Row{"project_id": str("1")})}
	check("NULL left", one, row(nil), false, false)
	check("member", one, row(str("1")), true, false)
	check("not a member", one, row(str("2")), false, true)
	withNull := results{s.ID: resultOf(t, s, fanout.Row{"project_id": str("1")}, fanout.Row{"project_id": nil})}
	check("not a member, NULL in the result", withNull, row(str("2")), false, false)
	check("member, NULL in the result", withNull, row(str("1")), true, false)
}

func TestSubqueryRowComparison(t *testing.T) {
	p := compileSub(t, "(project_id, owner) NOT IN (SELECT project_id, role FROM members)")
	s := p.Subqueries()[0]
	res := results{s.ID: resultOf(t, s,
		fanout.Row{"project_id": str("1"), "role": str("a")},
		fanout.Row{"project_id": str("2"), "role": nil})}
	for _, c := range []struct {
		pid, owner *string
		want       bool // NOT IN is TRUE
	}{
		{str("1"), str("a"), false}, // equal: IN is TRUE
		{str("1"), str("b"), true},  // unequal to both ((2,NULL) differs on 1)
		{str("2"), str("x"), false}, // (2,NULL) might equal: NULL
		{str("3"), nil, true},       // differs from both on the first column
		{str("1"), nil, false},      // might equal (1,a): NULL
	} {
		got, _ := p.EvalWith(fanout.Row{"id": str("1"), "project_id": c.pid, "owner": c.owner}, res)
		if got != c.want {
			t.Errorf("(%v,%v) NOT IN: %v, want %v", deref(c.pid), deref(c.owner), got, c.want)
		}
	}
}

func deref(p *string) string {
	if p == nil {
		return "NULL"
	}
	return *p
}

// The comparison domain decides equality: a bigint result and an integer
// column compare as integers, a numeric one by value (1.0 = 1.00).
func TestSubqueryDomains(t *testing.T) {
	p := compileSub(t, "project_id IN (SELECT project_id FROM members)") // integer IN (bigint)
	s := p.Subqueries()[0]
	res := results{s.ID: resultOf(t, s, fanout.Row{"project_id": str("5")})}
	if ok, _ := p.EvalWith(fanout.Row{"project_id": str("5")}, res); !ok {
		t.Errorf("integer 5 IN (bigint 5) is false")
	}
	id, _, _ := s.LeftTuple(fanout.Row{"project_id": str("5")})
	rid, _ := s.RowTuple(fanout.Row{"project_id": str("5")})
	if id != rid {
		t.Errorf("left tuple %q, result tuple %q", id, rid)
	}
}

func TestDNFTagsAndActive(t *testing.T) {
	const h = "s1"
	p := compileSub(t, "(title = 'x' OR owner = 'y') AND project_id IN (SELECT project_id FROM members)")
	// (title = 'x' AND p IN ...) OR (owner = 'y' AND p IN ...): positions 0,1 | 2,3.
	if got := p.Disjuncts(); len(got) != 2 || len(got[0]) != 2 || got[1][0] != 2 {
		t.Fatalf("disjuncts %v", got)
	}
	s := p.Subqueries()[0]
	res := results{s.ID: resultOf(t, s, fanout.Row{"project_id": str("5")})}
	row := fanout.Row{"id": str("1"), "project_id": str("5"), "title": str("x"), "owner": str("z")}
	hash := TagHash(h, "5")
	tags := p.Tags(h, row)
	if want := []string{"1/" + hash + "//", "//1/" + hash}; strings.Join(tags, ",") != strings.Join(want, ",") {
		t.Errorf("tags %v, want %v", tags, want)
	}
	active := p.Active(row, res)
	if want := []bool{true, true, false, true}; !slices.Equal(active, want) {
		t.Errorf("active %v, want %v", active, want)
	}
	positions, neg := p.SubqueryPositions(s)
	if len(positions) != 2 || positions[0] != 1 || positions[1] != 3 || neg {
		t.Errorf("subquery positions %v negated %v", positions, neg)
	}
	// NOT IN: the condition is negated at its position.
	q := compileSub(t, "project_id NOT IN (SELECT project_id FROM members)")
	qs := q.Subqueries()[0]
	if _, neg := q.SubqueryPositions(qs); !neg {
		t.Errorf("NOT IN position is not negated")
	}
	qres := results{qs.ID: resultOf(t, qs, fanout.Row{"project_id": str("5")})}
	if a := q.Active(fanout.Row{"project_id": str("6")}, qres); !slices.Equal(a, []bool{true}) {
		t.Errorf("NOT IN active %v", a)
	}
	// A NULL left side hashes as NULL.
	if tags := q.Tags(h, fanout.Row{"project_id": nil}); tags[0] != TagHash(h, nullElement) {
		t.Errorf("NULL tag %v", tags)
	}
}
