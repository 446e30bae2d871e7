package shapeapi

import (
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

func TestWhereSyntaxErrorIsElectricsWording(t *testing.T) {
	for _, tc := range []struct{ where, want string }{
		// "SELECT 1 WHERE owner = = 1": the second "=" is at 0-based position 23.
		{"owner = = 1", `At location 23: syntax error at or near "="`},
		{"owner = ", `At location 23: syntax error at end of input`},
		{"(owner = 1", `At location 25: syntax error at end of input`},
		{"title = 'x", `At location 23: unterminated quoted string at or near "'x"`},
	} {
		err := whereSyntax(tc.where)
		if err == nil || err.Error() != tc.want {
			t.Errorf("whereSyntax(%q) = %v, want %q", tc.where, err, tc.want)
		}
	}
	for _, ok := range []string{"", "  ", "owner = 1", "title ILIKE $1 AND id > 3"} {
		if err := whereSyntax(ok); err != nil {
			t.Errorf("whereSyntax(%q) = %v", ok, err)
		}
	}
	_, bad := ParseRequest(url.Values{"table": {"items"}, "offset": {"-1"}, "where": {"owner = = 1"}})
	if bad == nil || len(bad.Errors["where"]) != 1 || !strings.HasPrefix(bad.Errors["where"][0], "At location 23: ") {
		t.Fatalf("ParseRequest with a bad where: %v", bad)
	}
	if body := string(bad.Body()); !strings.Contains(body, `"message":"Invalid request"`) || !strings.Contains(body, `"where":["At location 23: syntax error at or near \"=\""]`) {
		t.Fatalf("400 body %s", body)
	}
}

func TestParseSubset(t *testing.T) {
	if sub, errs := ParseSubset(url.Values{"table": {"items"}}); sub != nil || errs != nil {
		t.Fatalf("no subset__ parameters gave %v %v", sub, errs)
	}
	sub, errs := ParseSubset(url.Values{"subset__where": {" title ILIKE $1 "}, "subset__params": {`{"1":"a%"}`},
		"subset__limit": {"10"}, "subset__offset": {"5"}, "subset__order_by": {`"Title" DESC NULLS LAST, id`}})
	if errs != nil {
		t.Fatal(errs)
	}
	want := Subset{Where: "title ILIKE $1", Params: []string{"a%"}, OrderBy: `"Title" DESC NULLS LAST, id`, Limit: 10, Offset: 5}
	if !reflect.DeepEqual(*sub, want) {
		t.Fatalf("got %+v, want %+v", *sub, want)
	}
	if sub, _ := ParseSubset(url.Values{"subset__params": {`["x","y"]`}}); sub == nil || !reflect.DeepEqual(sub.Params, []string{"x", "y"}) || sub.Limit != -1 {
		t.Fatalf("params as an array: %+v", sub)
	}
	for _, tc := range []struct {
		q     url.Values
		field string
		msg   string
	}{
		{url.Values{"subset__where": {"id = = 1"}}, "where", `At location 20: syntax error at or near "="`},
		{url.Values{"subset__limit": {"-1"}, "subset__order_by": {"id"}}, "limit", "must be greater than or equal to 0"},
		{url.Values{"subset__offset": {"x"}, "subset__order_by": {"id"}}, "offset", "is not an integer"},
		{url.Values{"subset__limit": {"3"}}, "order_by", "order_by is required when limit or offset is present"},
		{url.Values{"subset__order_by": {"id DESC,"}}, "order_by", `At location 26: syntax error at end of input`},
		{url.Values{"subset__order_by": {"id; DROP TABLE items"}}, "order_by", "Unexpected `;` in order by"},
		{url.Values{"subset__order_by": {"lower(title)"}}, "order_by", "order_by may hold only plain column names"},
		{url.Values{"subset__order_by": {"items.id"}}, "order_by", "order_by may hold only plain column names"},
		{url.Values{"subset__order_by": {"id USING <"}}, "order_by", "USING is not supported"},
		{url.Values{"subset__order_by": {"id LIMIT 1"}}, "order_by", "order_by must be a list of columns"},
		{url.Values{"subset__params": {`{"2":"x"}`}}, "params", "must be numbered 1 .. 1"},
		{url.Values{"subset__params": {`nope`}}, "params", "is not a JSON array or object"},
	} {
		sub, errs := ParseSubset(tc.q)
		if sub != nil || len(errs[tc.field]) == 0 || !strings.Contains(errs[tc.field][0], tc.msg) {
			t.Errorf("%v: got %+v %v, want %s: %q", tc.q, sub, errs, tc.field, tc.msg)
		}
	}
	// The errors of a GET are under errors.subset, as Electric nests them.
	_, bad := ParseRequest(url.Values{"table": {"items"}, "offset": {"-1"}, "subset__where": {"id = = 1"}})
	if bad == nil || !strings.Contains(string(bad.Body()), `"errors":{"subset":{"where":["At location 20: `) {
		t.Fatalf("400 of a bad subset where: %v", bad)
	}
}

func TestParseSubsetBody(t *testing.T) {
	sub, errs := ParseSubsetBody([]byte(`{"where":"owner = $1","params":{"1":"7"},"limit":3,"offset":0,"order_by":"id DESC","where_expr":{"x":1}}`))
	if errs != nil {
		t.Fatal(errs)
	}
	want := Subset{Where: "owner = $1", Params: []string{"7"}, OrderBy: "id DESC", Limit: 3}
	if !reflect.DeepEqual(*sub, want) {
		t.Fatalf("got %+v, want %+v", *sub, want)
	}
	if sub, errs := ParseSubsetBody([]byte(`{"subset__where":"id > 2","subset__limit":"4","subset__order_by":"id"}`)); errs != nil || sub.Where != "id > 2" || sub.Limit != 4 {
		t.Fatalf("subset__ names in the body: %+v %v", sub, errs)
	}
	if sub, errs := ParseSubsetBody(nil); errs != nil || sub == nil || sub.Limit != -1 || sub.Where != "" {
		t.Fatalf("an empty body is the whole shape: %+v %v", sub, errs)
	}
	for body, field := range map[string]string{`[1]`: "body", `{"limit":1.5,"order_by":"id"}`: "limit", `{"where":5}`: "where", `{"params":[{"a":1}]}`: "params"} {
		if sub, errs := ParseSubsetBody([]byte(body)); sub != nil || errs[field] == nil {
			t.Errorf("body %s: %+v %v, want an error on %s", body, sub, errs, field)
		}
	}
}

func TestSubsetSQL(t *testing.T) {
	sh := &fanout.Shape{Table: "public.Items", Where: "owner = $1", Params: []string{"7"}, PrimaryKey: []string{"id"},
		Schema: []fanout.Column{{Name: "id"}, {Name: "owner"}, {Name: "Title"}}}
	terms, err := parseOrderBy(`"Title" DESC NULLS FIRST, owner NULLS LAST`)
	if err != nil {
		t.Fatal(err)
	}
	orderBy, err := orderBySQL(terms, sh.Schema, sh.PrimaryKey)
	if err != nil {
		t.Fatal(err)
	}
	sub := &Subset{Where: `"Title" LIKE $1 OR "Title" = '$1' OR id IN ($2, $1)`, Params: []string{"a%", "3"}, Limit: 10, Offset: 20}
	q, cols, params, err := subsetSQL(sh, sub, orderBy, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantQ := `SELECT "id", "owner", "Title" FROM "public"."Items" WHERE (owner = $1) AND ("Title" LIKE $2 OR "Title" = '$1' OR id IN ($3, $2))` +
		` ORDER BY "Title" DESC NULLS FIRST, "owner" ASC NULLS LAST, "id" ASC LIMIT 10 OFFSET 20`
	if q != wantQ {
		t.Fatalf("got  %s\nwant %s", q, wantQ)
	}
	if strings.Join(cols, ",") != "id,owner,Title" || len(params) != 3 || string(params[0]) != "7" || string(params[1]) != "a%" || string(params[2]) != "3" {
		t.Fatalf("cols %v params %q", cols, params)
	}
	// No shape where, no order, no limit: the plain subset.
	q, _, params, err = subsetSQL(&fanout.Shape{Table: "s.t", Schema: []fanout.Column{{Name: "id"}}}, &Subset{Where: "id > $1", Params: []string{"1"}, Limit: -1}, "", nil)
	if err != nil || q != `SELECT "id" FROM "s"."t" WHERE (id > $1)` || len(params) != 1 {
		t.Fatalf("got %s %q %v", q, params, err)
	}
	// An order_by column the table does not have.
	terms, _ = parseOrderBy("id, nope DESC")
	if _, err := orderBySQL(terms, sh.Schema, sh.PrimaryKey); err == nil || err.Error() != `At location 22: unknown reference "nope"` {
		t.Fatalf("unknown column: %v", err)
	}
	// A clause that does not parse is located Electric's way, in the
	// statement it is parsed in.
	if _, _, _, err := subsetSQL(sh, &Subset{Where: "id = = 1", Limit: -1}, "", nil); err == nil || err.Error() != `At location 20: syntax error at or near "="` {
		t.Fatalf("subset where that does not parse: %v", err)
	}
	if _, _, _, err := subsetSQL(&fanout.Shape{Table: "s.t", Where: "(id", Schema: sh.Schema}, &Subset{Limit: -1}, "", nil); err == nil || err.Error() != "the shape's where clause: At location 18: syntax error at end of input" {
		t.Fatalf("shape where that does not parse: %v", err)
	}
	// The primary key already named is not appended again.
	terms, _ = parseOrderBy("id DESC")
	if o, _ := orderBySQL(terms, sh.Schema, sh.PrimaryKey); o != `"id" DESC` {
		t.Fatalf("got %s", o)
	}
}

func TestSubsetHeaders(t *testing.T) {
	got := string(subsetHeaders(Relation{Schema: "public", Table: "items"}, 42))
	if got != `{"operation":"insert","relation":["public","items"],"snapshot_mark":42}` {
		t.Fatal(got)
	}
}
