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
