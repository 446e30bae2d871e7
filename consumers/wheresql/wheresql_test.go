package wheresql

import (
	"errors"
	"testing"
)

func TestDeparsePrintsTheParseTree(t *testing.T) {
	for in, want := range map[string]string{
		`owner = 5 AND "Title" LIKE 'a%' -- x`: `owner = 5 AND "Title" LIKE 'a%'`,
		"title ILIKE $1 AND id > $2":           "title ILIKE $1 AND id > $2",
		"x = '$1'":                             "x = '$1'",
	} {
		got, err := Deparse(in)
		if err != nil || got != want {
			t.Errorf("Deparse(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestDeparseRefusesWhatIsNotOneClause(t *testing.T) {
	for _, bad := range []string{"1=1; DROP TABLE x", "true; SELECT 1"} {
		if out, err := Deparse(bad); err == nil {
			t.Errorf("Deparse(%q) = %q, want an error", bad, out)
		}
	}
}

func TestParseErrorIsLocatedInTheStatement(t *testing.T) {
	// "SELECT 1 WHERE owner = = 1": the second "=" is at 0-based position 23.
	_, err := Deparse("owner = = 1")
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Location != 23 || pe.Message != `syntax error at or near "="` {
		t.Fatalf("Deparse: %#v", err)
	}
	if got := err.Error(); got != `where clause does not parse: syntax error at or near "="` {
		t.Fatalf("error text %q", got)
	}
	if _, err := Deparse("(owner = 1"); !errors.As(err, &pe) || pe.Location != 25 {
		t.Fatalf("unclosed parenthesis: %v", err)
	}
}

// The tables subqueries read are printed with their schema: public when
// the clause names none, as the matcher resolves them.
func TestDeparseQualifiesSubqueryTables(t *testing.T) {
	got, err := Deparse("project_id IN (SELECT project_id FROM members WHERE user_id IN (SELECT id FROM app.users WHERE x = $1))")
	if err != nil {
		t.Fatal(err)
	}
	want := "project_id IN (SELECT project_id FROM public.members WHERE user_id IN (SELECT id FROM app.users WHERE x = $1))"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
