package match

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

// defaultBudget is configs/shapeapi.yaml's.
var defaultBudget = Budget{MaxNodes: 256, MaxDepth: 32, MaxFunctions: 32, MaxListItems: 1000}

func TestVetRefusesOtherSchemas(t *testing.T) {
	for _, where := range []string{
		"id OPERATOR(x.=) 1",
		"id OPERATOR(public.=) 1",
		"public.lower(title) = 'a'",
		"title::public.mood = 'a'",
		"CAST(title AS myschema.t) = 'a'",
		"id OPERATOR(x.=) ANY('{1,2}')",
		"(id OPERATOR(x.+) 1) = 2",
	} {
		err := Vet(where, nil, Budget{})
		if err == nil || !strings.Contains(err.Error(), "only pg_catalog may qualify") {
			t.Errorf("Vet(%q) = %v, want a refusal of the schema", where, err)
		}
	}
	for _, where := range []string{
		"id = 1", "id::int = 1", "id::pg_catalog.int4 = 1", "id OPERATOR(pg_catalog.=) 1",
		"pg_catalog.lower(title) = 'a'", "title::varchar(3) = 'a'", "m = 'happy'::mood",
	} {
		if err := Vet(where, nil, Budget{}); err != nil {
			t.Errorf("Vet(%q) = %v", where, err)
		}
	}
}

func nested(fn string, depth int) string {
	return strings.Repeat(fn+"(", depth) + "title" + strings.Repeat(")", depth) + " = 'x'"
}

func TestVetBudget(t *testing.T) {
	list := func(n int, sep string) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = fmt.Sprint(i)
		}
		return strings.Join(parts, sep)
	}
	ors := make([]string, 100)
	for i := range ors {
		ors[i] = fmt.Sprintf("(owner = %d AND title = 'x')", i)
	}
	for _, tc := range []struct {
		where  string
		params []string
		limit  BudgetLimit
	}{
		{nested("concat", 1000), nil, LimitDepth},
		{nested("lower", 40), nil, LimitDepth},
		{strings.Repeat("length(title) > 1 AND ", 40) + "true", nil, LimitFunctions},
		{"owner IN (" + list(300, ",") + ")", nil, LimitNodes},
		{"nums && ARRAY[" + list(1001, ",") + "]", nil, LimitListItems},
		{"nums && '{" + list(1001, ",") + "}'", nil, LimitListItems},
		{"owner = ANY($1)", []string{"{" + list(1001, ",") + "}"}, LimitListItems},
		{strings.Join(ors, " OR "), nil, LimitNodes},
	} {
		err := Vet(tc.where, tc.params, defaultBudget)
		var be *BudgetError
		if !errors.As(err, &be) || be.Limit != tc.limit {
			t.Errorf("Vet(%.60q...) = %v, want limit %d", tc.where, err, tc.limit)
		}
	}
	for _, ok := range []struct {
		where  string
		params []string
	}{
		{"owner IN (" + list(250, ",") + ")", nil},
		{"owner = ANY('{" + list(1000, ",") + "}')", nil},
		{"owner = ANY($1)", []string{"{" + list(1000, ",") + "}"}},
		{"title = '{a,b}' OR title = $1", []string{"{\"a,b\",c}"}},
		{nested("lower", 10), nil},
		{strings.Join(ors[:40], " OR "), nil},
	} {
		if err := Vet(ok.where, ok.params, defaultBudget); err != nil {
			t.Errorf("Vet(%.60q...) = %v", ok.where, err)
		}
	}
	if err := Vet(nested("concat", 1000), nil, Budget{}); err != nil {
		t.Errorf("a zero budget limits nothing: %v", err)
	}
}

func TestArrayLiteralItems(t *testing.T) {
	for s, want := range map[string]int{
		"{}": 1, "{1,2,3}": 3, `{"a,b",c}`: 2, "{{1,2},{3,4}}": 2, `{"a\"b",c}`: 2, "plain": 0, "{1,2": 0,
	} {
		if got := arrayLiteralItems(s); got != want {
			t.Errorf("arrayLiteralItems(%q) = %d, want %d", s, got, want)
		}
	}
}

// BenchmarkRouteAtTheBudget is what one shape whose clause is at the
// default budget costs per change of its table (no equality index), next
// to the clause of issue 27's finding (concat nested 1,000 deep).
func BenchmarkRouteAtTheBudget(b *testing.B) {
	ors := make([]string, 0, 51)
	for i := range 51 { // 256 nodes: OR and 51 × (AND, =, column, =, column)
		ors = append(ors, fmt.Sprintf("(owner = %d AND title = 'x%d')", i+100, i))
	}
	list1000 := strings.TrimSuffix(strings.Repeat("5,", 1000), ",")
	list250 := strings.TrimSuffix(strings.Repeat("5,", 250), ",")
	cases := []struct{ name, where string }{
		{"depth-32", nested("concat", 30)},
		{"functions-32", strings.Repeat("length(title) > 1 AND ", 31) + "length(title) > 0"},
		{"nodes-256", strings.Join(ors, " OR ")},
		{"in-list-250", "title = 'y' OR owner IN (" + list250 + ")"},
		{"expr-in-list-250", "owner + 0 IN (" + list250 + ")"},
		{"any-array-1000", "title = 'y' OR owner = ANY('{" + list1000 + "}')"},
		{"over-budget-concat-1000", nested("concat", 1000)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if err := Vet(c.where, nil, defaultBudget); (err == nil) != !strings.HasPrefix(c.name, "over") {
				b.Fatalf("Vet: %v", err)
			}
			r := NewRegistry()
			s := shape("s1", c.where)
			s.Schema = richSchema
			if err := r.Add(s); err != nil {
				b.Fatal(err)
			}
			row := richItem(1, 7, "abc", "happy", "{red,blue,x7}")
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r.Route(RowChange{Table: "public.items", Op: fanout.OpInsert, New: row}, func(*fanout.Shape, fanout.Change) {})
			}
		})
	}
}
