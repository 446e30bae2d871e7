package wheresql

import "testing"

func TestUnionMergesEqualitiesAndRenumbersParameters(t *testing.T) {
	for _, c := range []struct {
		name    string
		clauses []Clause
		want    string
	}{
		{"one clause", []Clause{{Where: "owner = 5"}}, "owner IN (5)"},
		{"an empty clause is the whole table", []Clause{{Where: "owner = 5"}, {Where: " "}}, ""},
		{"equalities on one column, either side", []Clause{{Where: "owner = 1"}, {Where: "2 = owner"}, {Where: "owner = 3"}},
			"owner IN (1, 2, 3)"},
		{"strings and parameters share a list; integers get their own",
			[]Clause{{Where: "owner = $1", Params: 1}, {Where: "owner = '8'"}, {Where: "owner = 9"}, {Where: "owner = $1", Params: 1}},
			"owner IN ($1, '8', $2) OR owner IN (9)"},
		{"other clauses are ORed as they are, parameters renumbered",
			[]Clause{{Where: "title ILIKE $1 AND id > $2", Params: 2}, {Where: `"Title" = 'a'`}, {Where: "x = '$1' OR id = $1", Params: 1}},
			`(title ILIKE $1 AND id > $2) OR "Title" IN ('a') OR (x = '$1' OR id = $3)`},
		{"not equalities: NULL, a cast, a qualified column, another operator",
			[]Clause{{Where: "owner = NULL"}, {Where: "owner = 5::int"}, {Where: "items.owner = 5"}, {Where: "owner < 5"}},
			"owner = NULL OR owner = 5::int OR items.owner = 5 OR owner < 5"},
		{"booleans and decimals", []Clause{{Where: "done = true"}, {Where: "price = 1.5"}, {Where: "done = false"}, {Where: "price = 2.5"}},
			"done IN (true, false) OR price IN (1.5, 2.5)"},
	} {
		got, err := Union(c.clauses, nil)
		if err != nil || got != c.want {
			t.Errorf("%s: Union = %q, %v\n want %q", c.name, got, err, c.want)
		}
	}
}

func TestUnionRefusesWhatIsNotOneClause(t *testing.T) {
	if out, err := Union([]Clause{{Where: "owner = 1"}, {Where: "1=1; DROP TABLE x"}}, nil); err == nil {
		t.Fatalf("Union accepted a second statement: %q", out)
	}
}

func TestUnionQualifiesCasts(t *testing.T) {
	got, err := Union([]Clause{{Where: "m = 'ok'::mood"}, {Where: "m >= 'ok'"}}, TypeNames{"mood": {"app", "mood"}})
	if want := "m = 'ok'::app.mood OR m >= 'ok'"; err != nil || got != want {
		t.Fatalf("Union = %q, %v; want %q", got, err, want)
	}
}
