package match

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// defaultBudget is configs/shapeapi.yaml's.
var defaultBudget = Budget{MaxNodes: 500, MaxDepth: 32, MaxFunctions: 32, MaxListItems: 1000}

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
	ors := make([]string, 200)
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
		{"owner IN (" + list(1001, ",") + ")", nil, LimitListItems},
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
		{"owner IN (" + list(1000, ",") + ")", nil},
		{"owner = ANY($1)", []string{"{" + list(1000, ",") + "}"}},
		{"title = '{a,b}' OR title = $1", []string{"{\"a,b\",c}"}},
		{nested("lower", 10), nil},
		{strings.Join(ors[:50], " OR "), nil},
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
