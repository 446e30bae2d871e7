package match

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// subqueryTables are the tables of TestSubqueriesAgreeWithPostgres: small
// value ranges so that random rows collide, NULLs everywhere, numeric
// values written with different scales (1.0 and 1.00 are equal).
const subqueryTables = `
CREATE TABLE o (id int PRIMARY KEY, a int, b int, t text, n numeric);
CREATE TABLE m (id int PRIMARY KEY, x int, y int, s text, k numeric, flag boolean);
CREATE TABLE p (id int PRIMARY KEY, x bigint, u text);
`

func randomSubqueryRows(rnd *rand.Rand) []string {
	maybe := func(v string) string {
		if rnd.Intn(6) == 0 {
			return "NULL"
		}
		return v
	}
	num := func() string { return maybe(fmt.Sprint(rnd.Intn(5))) }
	txt := func() string { return maybe("'" + string(rune('a'+rnd.Intn(4))) + "'") }
	dec := func() string {
		return maybe([]string{"1", "1.0", "1.00", "2.5", "2.50", "0", "-1"}[rnd.Intn(7)])
	}
	var out []string
	for i := 1; i <= 40; i++ {
		out = append(out, fmt.Sprintf("INSERT INTO o VALUES (%d, %s, %s, %s, %s)", i, num(), num(), txt(), dec()))
	}
	for i := 1; i <= 12; i++ {
		flag := maybe([]string{"true", "false"}[rnd.Intn(2)])
		out = append(out, fmt.Sprintf("INSERT INTO m VALUES (%d, %s, %s, %s, %s, %s)", i, num(), num(), txt(), dec(), flag))
	}
	for i := 0; i <= 6; i++ {
		out = append(out, fmt.Sprintf("INSERT INTO p VALUES (%d, %s, %s)", i, num(), txt()))
	}
	return out
}

// randomSubqueryClause combines plain conditions and subqueries (IN, NOT
// IN, row comparisons, nested, parameters) with AND, OR and NOT.
func randomSubqueryClause(rnd *rand.Rand, depth int) string {
	inner := func() string {
		return []string{"", " WHERE flag", " WHERE y > 1", " WHERE s = 'a'", " WHERE x IS NOT NULL", " WHERE NOT flag OR y = $1",
			" WHERE y IN (SELECT x FROM p WHERE u = 'b')", " WHERE s NOT IN (SELECT u FROM p WHERE x > 1)"}[rnd.Intn(8)]
	}
	atoms := []func() string{
		func() string { return "a IN (SELECT x FROM m" + inner() + ")" },
		func() string { return "a NOT IN (SELECT y FROM m" + inner() + ")" },
		func() string { return "b IN (SELECT x FROM p" + []string{"", " WHERE u = 'c'"}[rnd.Intn(2)] + ")" },
		func() string { return "(a, b) IN (SELECT x, y FROM m" + inner() + ")" },
		func() string { return "(a, t) NOT IN (SELECT y, s FROM m" + inner() + ")" },
		func() string { return "t IN (SELECT s FROM m" + inner() + ")" },
		func() string { return "n IN (SELECT k FROM m" + inner() + ")" },
		func() string { return "a IN (SELECT x FROM p WHERE u IN (SELECT s FROM m WHERE flag))" },
		func() string { return "a > 2" },
		func() string { return "t = 'b'" },
		func() string { return "b IS NULL" },
		func() string { return "n = 1" },
	}
	if depth == 0 || rnd.Intn(3) == 0 {
		return atoms[rnd.Intn(len(atoms))]()
	}
	l, r := randomSubqueryClause(rnd, depth-1), randomSubqueryClause(rnd, depth-1)
	switch rnd.Intn(3) {
	case 0:
		return "(" + l + " AND " + r + ")"
	case 1:
		return "(" + l + " OR " + r + ")"
	}
	return "NOT (" + l + ")"
}

// goResults computes the results of p's subqueries (nested ones first)
// from the tables' rows, as ingest keeps them: a row of a subquery's table
// counts when the subquery's own where matches it.
func goResults(t *testing.T, p *Predicate, rows map[string][]fanout.Row) results {
	res := results{}
	var fill func(p *Predicate)
	fill = func(p *Predicate) {
		if p == nil {
			return
		}
		for _, s := range p.subs {
			if res[s.ID] != nil {
				continue
			}
			fill(s.Where)
			r := NewResult(s)
			for _, row := range rows[s.Table] {
				if s.Where != nil {
					ok, err := s.Where.EvalWith(row, res)
					if err != nil || !ok {
						continue
					}
				}
				id, err := s.RowTuple(row)
				if err != nil {
					t.Fatalf("%s: %v", s.SQL, err)
				}
				r.Add(id)
			}
			res[s.ID] = r
		}
	}
	fill(p)
	return res
}

// TestSubqueriesAgreeWithPostgres checks, on random tables and clauses,
// that the matcher with the subqueries' results computed in Go agrees
// with Postgres's SELECT, and that the normal form's active conditions
// say the same: a row is in exactly when a disjunct has all its
// conditions true.
func TestSubqueriesAgreeWithPostgres(t *testing.T) {
	pgsrv := testenv.StartPostgres(t)
	conn := pgsrv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pgsrv.Exec(t, conn, subqueryTables)
	schema := readSchema(ctx, t, conn, "o")
	tables := []fanout.TableSchema{
		{Table: "public.m", PrimaryKey: []string{"id"}, Schema: readSchema(ctx, t, conn, "m")},
		{Table: "public.p", PrimaryKey: []string{"id"}, Schema: readSchema(ctx, t, conn, "p")},
	}
	checked, pairs, refused := 0, 0, 0
	for seed := int64(1); seed <= 12; seed++ {
		rnd := rand.New(rand.NewSource(seed))
		pgsrv.Exec(t, conn, "TRUNCATE o, m, p")
		for _, ins := range randomSubqueryRows(rnd) {
			pgsrv.Exec(t, conn, ins)
		}
		rows := map[string][]fanout.Row{
			"public.o": readRows(ctx, t, conn, "SELECT * FROM o ORDER BY id"),
			"public.m": readRows(ctx, t, conn, "SELECT * FROM m ORDER BY id"),
			"public.p": readRows(ctx, t, conn, "SELECT * FROM p ORDER BY id"),
		}
		for i := 0; i < 60; i++ {
			where := randomSubqueryClause(rnd, 3)
			var params []string
			if strings.Contains(where, "$1") {
				params = []string{fmt.Sprint(rnd.Intn(4))}
			}
			pred, err := CompileWith(where, params, schema, tables)
			if err != nil {
				if strings.Contains(err.Error(), "used both as IN and as NOT IN") {
					refused++
					continue
				}
				t.Fatalf("CompileWith(%q): %v", where, err)
			}
			if pred.HasSubqueries() {
				checked++
			}
			res := goResults(t, pred, rows)
			sql := "SELECT id FROM o WHERE " + where
			args := []any{}
			for _, p := range params {
				args = append(args, p)
			}
			want := map[string]bool{}
			prows, err := conn.Query(ctx, sql, args...)
			if err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
			for prows.Next() {
				var id int
				if err := prows.Scan(&id); err != nil {
					t.Fatal(err)
				}
				want[fmt.Sprint(id)] = true
			}
			prows.Close()
			for _, r := range rows["public.o"] {
				got, err := pred.EvalWith(r, res)
				if err != nil {
					t.Errorf("%q on row %s: %v", where, *r["id"], err)
				}
				if got != want[*r["id"]] {
					t.Errorf("WHERE %s (params %v), row %s: matcher %v, Postgres %v", where, params, rowText(r), got, want[*r["id"]])
				}
				if dnf := dnfIncludes(pred, pred.Active(r, res)); pred.HasSubqueries() && dnf != got {
					t.Errorf("WHERE %s, row %s: the normal form's active conditions say %v, the clause %v", where, rowText(r), dnf, got)
				}
				pairs++
			}
		}
	}
	t.Logf("%d clauses with subqueries (%d refused for mixed polarity), %d clause x row pairs agree with Postgres", checked, refused, pairs)
}

// dnfIncludes is what a client decides from active conditions: some
// disjunct has all its positions true.
func dnfIncludes(p *Predicate, active []bool) bool {
	for _, d := range p.Disjuncts() {
		all := true
		for _, pos := range d {
			all = all && active[pos]
		}
		if all {
			return true
		}
	}
	return false
}

func rowText(r fanout.Row) string {
	var parts []string
	for _, c := range []string{"id", "a", "b", "t", "n"} {
		parts = append(parts, c+"="+deref(r[c]))
	}
	return strings.Join(parts, " ")
}
