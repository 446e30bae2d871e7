package match

import "testing"

func TestCompileErrors(t *testing.T) {
	cases := []struct{ where, err string }{
		{"ownr = 7", `where clause: column "ownr" does not exist; the table's columns are: id, owner, title, flag, price, created, doc`},
		{"owner = 'abc'", `where clause: column "owner" is integer, and constant 'abc' does not convert to it: "abc" is not a valid integer`},
		{"owner = 32768::int2", `where clause: cannot cast 32768 to smallint: "32768" is out of range for type smallint`},
		{"owner LIKE 'a%'", `where clause: LIKE needs a text column, but column "owner" is integer`},
		{"title = 5", `where clause: cannot compare column "title" (text) with 5 (integer); quote the constant: '5'`},
		{"flag = 1", `where clause: cannot compare column "flag" (boolean) with 1 (integer)`},
		{"flag = 'maybe'", `where clause: column "flag" is boolean, and constant 'maybe' does not convert to it: "maybe" is not a valid boolean`},
		{"created = 'yesterday'", `where clause: column "created" is timestamp with time zone, and constant 'yesterday' does not convert to it: "yesterday" is not a valid timestamp with time zone (write ISO form, e.g. '2024-01-31' or '2024-01-31 13:45:00+00')`},
		{"created = '2024-02-30'", `where clause: column "created" is timestamp with time zone, and constant '2024-02-30' does not convert to it: "2024-02-30": date/time field value out of range for timestamp with time zone`},
		{"price = 1e5000", `where clause: column "price" is numeric, and constant 1e5000 does not convert to it: "1e5000": numeric exponent out of the supported range ±1000`},
		{"doc = '{}'", `where clause: column "doc" has type jsonb, which where clauses do not support (supported: smallint, integer, bigint, numeric, real, double precision, text, character varying, character, boolean, uuid, date, timestamp, timestamptz)`},
		{"owner", `where clause: column "owner" is integer, not boolean; compare it with something (e.g. column "owner" = ...)`},
		{"owner = 7; DROP TABLE items", `where clause must be one boolean expression; remove the ';' (at character 10)`},
		{"owner = 7;", `where clause must be one boolean expression; remove the ';' (at character 10)`},
		{"owner = 7 -- mine", `where clause: comments are not allowed (at character 11)`},
		{"owner = /* x */ 7", `where clause: comments are not allowed (at character 9)`},
		{"owner = 7 ORDER BY 1", `where clause must be one boolean expression, without GROUP BY, ORDER BY, LIMIT, UNION or similar clauses: "owner = 7 ORDER BY 1"`},
		{"true UNION SELECT 2", `where clause must be one boolean expression, without GROUP BY, ORDER BY, LIMIT, UNION or similar clauses: "true UNION SELECT 2"`},
		{"owner > 1 AND", `where clause does not parse: syntax error at end of input (at character 14 of the clause)`},
		{"owner = = 1", `where clause does not parse: syntax error at or near "=" (at character 9 of the clause)`},
		{"owner IN (SELECT 1)", `where clause: subqueries are not supported`},
		{"lower(title) = 'a'", `where clause: function lower() is not supported (no function calls or aggregates)`},
		{"count(*) > 1", `where clause: function count() is not supported (no function calls or aggregates)`},
		{"created < CURRENT_DATE", `where clause: CURRENT_DATE, now() and similar are not supported: a shape's filter must not depend on the time it is evaluated`},
		{"owner = $1", `where clause: parameters ($1) are not supported; write the value`},
		{"owner + 1 = 2", `where clause: comparison operands must be a column or a constant; operator "+" is not supported there`},
		{"owner::text = '7'", `where clause: casting column "owner" is not supported; compare the column with a constant of its own type`},
		{"price = '7'::numeric(3,1)", `where clause: casts with type modifiers or arrays (::numeric(...) or ::numeric[]) are not supported; cast to plain numeric`},
		{"price = '7'::money", `where clause: cast to type money is not supported (supported: smallint, integer, bigint, numeric, real, double precision, text, character varying, character, boolean, uuid, date, timestamp, timestamptz)`},
		{"items.owner = 7", `where clause: column reference items.owner: write the bare column name, without a table or schema`},
		{`title LIKE 'a\'`, `where clause: LIKE 'a\': LIKE pattern must not end with the escape character \`},
		{"title LIKE owner", `where clause: the LIKE pattern must be a quoted text constant, not column "owner"`},
		{"title LIKE 'a' ESCAPE '!'", `where clause: LIKE ... ESCAPE is not supported; the escape character is always backslash`},
		{"title SIMILAR TO 'a'", `where clause: SIMILAR TO is not supported in where clauses; use LIKE`},
		{"owner = ANY('{1}')", `where clause: = ANY/ALL (...) is not supported in where clauses; use IN (...)`},
		{"owner ~ 'x'", `where clause: operator "~" is not supported in where clauses (supported: = <> < <= > >=, AND, OR, NOT, IN, LIKE, ILIKE, BETWEEN, IS [NOT] NULL, IS [NOT] DISTINCT FROM)`},
		{`title COLLATE "C" = 'a'`, `where clause: COLLATE is not supported (text compares in byte order)`},
		{"CASE WHEN flag THEN true END", `where clause: CASE is not supported`},
	}
	for _, c := range cases {
		_, err := Compile(c.where, itemsSchema)
		if err == nil {
			t.Errorf("Compile(%q) succeeded, want error %q", c.where, c.err)
			continue
		}
		if err.Error() != c.err {
			t.Errorf("Compile(%q):\n got: %s\nwant: %s", c.where, err, c.err)
		}
	}
}

func TestCompileAcceptsAndIndexes(t *testing.T) {
	cases := []struct {
		where string
		col   string // the equality conjunct the index uses, "" for none
		keys  int
	}{
		{"", "", 0},
		{"owner = 7", "owner", 1},
		{"7 = owner AND title LIKE 'a%'", "owner", 1},
		{"owner IN (1, 2, '3', 2)", "owner", 3},
		{"owner = 1 OR owner = 2", "owner", 2},
		{"owner = 1 OR title = 'x'", "", 0},
		{"owner > 1", "", 0},
		{"flag AND price > 1", "flag", 1},
		{"NOT (owner = 7)", "", 0},
		{"(owner = 7 AND flag) AND title = 'x'", "owner", 1},
		{"title = 'a;b -- /* c'", "title", 1},
	}
	for _, c := range cases {
		p, err := Compile(c.where, itemsSchema)
		if err != nil {
			t.Errorf("Compile(%q): %v", c.where, err)
			continue
		}
		if c.col == "" {
			if len(p.eqs) != 0 {
				t.Errorf("%q: index conjuncts %+v, want none", c.where, p.eqs)
			}
			continue
		}
		if len(p.eqs) == 0 || p.eqs[0].col != c.col || len(p.eqs[0].keys) != c.keys {
			t.Errorf("%q: index conjuncts %+v, want %s with %d keys first", c.where, p.eqs, c.col, c.keys)
		}
	}
}

func TestEqualKeysNormalise(t *testing.T) {
	// Values Postgres finds equal must share an index key.
	same := []struct {
		k    kind
		a, b string
	}{
		{kInt4, "007", "7"}, {kInt8, "-0", "0"}, {kNumeric, "1.50", "1.5"}, {kNumeric, "1e2", "100.000"},
		{kUUID, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "{a0eebc999c0b4ef8bb6d6bb9bd380a11}"},
		{kFloat8, "-0", "0"}, {kFloat8, "NaN", "nan"}, {kBpchar, "ab   ", "ab"},
		{kTimestamptz, "2024-01-02 03:04:05+00", "2024-01-02 05:04:05+02"}, {kBool, "t", "yes"},
	}
	for _, c := range same {
		d := domainOf(c.k)
		va, err := convert(c.a, c.k, d)
		if err != nil {
			t.Fatal(err)
		}
		vb, err := convert(c.b, c.k, d)
		if err != nil {
			t.Fatal(err)
		}
		if key(d, va) != key(d, vb) {
			t.Errorf("%s: %q and %q have keys %q and %q", c.k, c.a, c.b, key(d, va), key(d, vb))
		}
	}
}
