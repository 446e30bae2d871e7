package wheresql

import (
	"strings"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

func TestSelectQuotesAndRendersTheParsedClause(t *testing.T) {
	s := &fanout.Shape{Table: "public.Items", Where: "owner = 5 AND \"Title\" LIKE 'a%' -- x", Schema: []fanout.Column{{Name: "id"}, {Name: "owner"}, {Name: "Title"}}}
	q, cols, err := Select(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := `SELECT "id", "owner", "Title" FROM "public"."Items" WHERE (owner = 5 AND "Title" LIKE 'a%')`
	if q != want || strings.Join(cols, ",") != "id,owner,Title" {
		t.Fatalf("got  %s\nwant %s", q, want)
	}
	for _, bad := range []string{"1=1; DROP TABLE x", "owner = (SELECT"} {
		s.Where = bad
		if q, _, err := Select(s, nil); err == nil {
			t.Errorf("clause %q gave SQL %s", bad, q)
		}
	}
}

// The reads run with search_path pg_catalog: a cast to a table's enum type
// is printed qualified by the schema Postgres says the type is in.
func TestSelectQualifiesEnumCasts(t *testing.T) {
	s := &fanout.Shape{Table: "app.things", Where: "m = 'ok'::mood OR ms && '{sad}'::mood[] OR id::int = 1 OR m::text = 'x'",
		Schema: []fanout.Column{{Name: "id"}, {Name: "m"}, {Name: "ms"}}}
	q, _, err := Select(s, TypeNames{"mood": {"app", "Mood"}})
	if err != nil {
		t.Fatal(err)
	}
	want := `SELECT "id", "m", "ms" FROM "app"."things" WHERE (m = 'ok'::app."Mood" OR ms && '{sad}'::app."Mood"[] OR id::int = 1 OR m::text = 'x')`
	if q != want {
		t.Fatalf("got  %s\nwant %s", q, want)
	}
}

func TestSelectAllReadsTheUnionWithEveryParameter(t *testing.T) {
	schema := []fanout.Column{{Name: "id"}, {Name: "owner"}, {Name: "title"}}
	shapes := []*fanout.Shape{
		{Table: "public.items", Where: "owner = $1", Params: []string{"7"}, Schema: schema},
		{Table: "public.items", Where: "title LIKE $1 AND owner > $2", Params: []string{"a%", "3"}, Schema: schema},
		{Table: "public.items", Where: "owner = 9", Schema: schema},
	}
	q, params, cols, err := SelectAll(shapes, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := `SELECT "id", "owner", "title" FROM "public"."items" WHERE (owner IN ($1) OR (title LIKE $2 AND owner > $3) OR owner IN (9))`
	if q != want || strings.Join(cols, ",") != "id,owner,title" || len(params) != 3 || string(params[0]) != "7" || string(params[2]) != "3" {
		t.Fatalf("got  %s %q %v\nwant %s", q, params, cols, want)
	}
	shapes[1].Where = ""
	if q, _, _, err := SelectAll(shapes, nil); err != nil || strings.Contains(q, "WHERE") {
		t.Fatalf("a shape without a clause: %s, %v; want the whole table", q, err)
	}
}
