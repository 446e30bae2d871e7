package snapshot

import (
	"strings"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

func TestSelectSQLQuotesAndRendersTheParsedClause(t *testing.T) {
	s := &fanout.Shape{Table: "public.Items", Where: "owner = 5 AND \"Title\" LIKE 'a%' -- x", Schema: []fanout.Column{{Name: "id"}, {Name: "owner"}, {Name: "Title"}}}
	q, _, cols, err := selectSQL([]*fanout.Shape{s})
	if err != nil {
		t.Fatal(err)
	}
	want := `SELECT "id", "owner", "Title" FROM "public"."Items" WHERE (owner = 5 AND "Title" LIKE 'a%')`
	if q != want || strings.Join(cols, ",") != "id,owner,Title" {
		t.Fatalf("got  %s\nwant %s", q, want)
	}
	for _, bad := range []string{"1=1; DROP TABLE x", "owner = (SELECT"} {
		s.Where = bad
		if q, _, _, err := selectSQL([]*fanout.Shape{s}); err == nil {
			t.Errorf("clause %q gave SQL %s", bad, q)
		}
	}
}
