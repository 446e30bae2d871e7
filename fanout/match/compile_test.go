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
		{"owner", `where clause: column "owner" is integer, not boolean; compare it with something (e.g. column "owner" = ...)`},
		{"owner = 7; DROP TABLE items", `where clause must be one boolean expression; remove the ';' (at character 10)`},
		{"owner = 7;", `where clause must be one boolean expression; remove the ';' (at character 10)`},
		{"owner = 7 -- mine", `where clause: comments are not allowed (at character 11)`},
		{"owner = /* x */ 7", `where clause: comments are not allowed (at character 9)`},
		{"owner = 7 ORDER BY 1", `where clause must be one boolean expression, without GROUP BY, ORDER BY, LIMIT, UNION or similar clauses: "owner = 7 ORDER BY 1"`},
		{"true UNION SELECT 2", `where clause must be one boolean expression, without GROUP BY, ORDER BY, LIMIT, UNION or similar clauses: "true UNION SELECT 2"`},
		{"owner > 1 AND", `where clause does not parse: syntax error at end of input (at character 14 of the clause)`},
		{"owner = = 1", `where clause does not parse: syntax error at or near "=" (at character 9 of the clause)`},
		{"owner IN (SELECT 1)", `where clause: subqueries are not supported here`},
		{"created < CURRENT_DATE", `where clause: CURRENT_DATE, now() and similar are not supported: a shape's filter must not depend on the time it is evaluated`},
		{"items.owner = 7", `where clause: column reference items.owner: write the bare column name, without a table or schema`},
		{"doc > '{}'", `where clause: only = and <> are supported on jsonb`},
		{"lower(title) = 7", `where clause: cannot compare text with integer: Postgres has no implicit conversion between them`},
		{"count(*) > 1", `where clause: count(): aggregates, window functions, DISTINCT, ORDER BY, FILTER and VARIADIC are not supported`},
		{"md5(title) = 'a'", `where clause: function md5() is not supported (supported: ` + supportedFunctions + `)`},
		{"owner = $1", `where clause uses $1 but 0 parameter(s) were given; pass a value for each $n (params[1] in the HTTP API, --param with fanoutctl)`},
		{"price ^ 2 > 1", `where clause: numeric ^ is not supported (the matcher does not reproduce Postgres's rounding of numeric powers); cast to double precision`},
		{"created + interval '1 day' * 2 > now()", `where clause: interval * number is not supported (the matcher does not reproduce Postgres's spilling of fractional months and days); write the interval you mean`},
		{"created > now()", `where clause: now() is not supported: a shape's filter must not depend on when or where it is evaluated`},
		{"owner = 1 / 0", `where clause: division by zero`},
		{"owner = 2147483647 + 1", `where clause: integer out of range`},
		{"price = '7'::money", `where clause: cast to type money is not supported (supported: ` + supportedTypes + `; an enum only when a column of the table has that type)`},
		{"price = '7'::numeric(3,1)[]", `where clause: casts to arrays with type modifiers are not supported; cast to numeric[]`},
		{"created::timestamp(3) = '2024-01-01'", `where clause: type modifiers on timestamp are not supported (only character(n), character varying(n), numeric(p[,s]))`},
		{`title LIKE 'a\'`, `where clause: LIKE 'a\': LIKE pattern must not end with escape character`},
		{"title LIKE owner", `where clause: the LIKE pattern must be a quoted text constant or a $n parameter`},
		{"title LIKE 'a' ESCAPE '!!'", `where clause: the ESCAPE of LIKE must be a quoted constant of one character, or '' for none`},
		{"owner = ANY(7)", `where clause: = ANY needs an array on its right, not integer`},
		{"owner ~ 'x'", `where clause: operator "~" is not supported in where clauses (supported: = <> < <= > >= + - * / % ^ |/ ||/ @ & | # ~ || @> <@ && LIKE ILIKE IN ANY ALL BETWEEN IS [NOT] NULL, IS [NOT] DISTINCT FROM, AND OR NOT)`},
		{"created + '1 fortnight' > '2024-01-01'", `where clause: constant '1 fortnight' is not a valid interval: invalid input for type interval: "1 fortnight" is not a valid interval (write e.g. '1 day 02:00:00' or '2 hours 30 minutes')`},
		{"owner % 1.5::float8 = 0", `where clause: operator % is not defined for double precision (Postgres has none); cast to numeric or integer`},
		{"title @> 'a'", `where clause: operator @> needs arrays, not text and unknown`},
		{"CASE WHEN flag THEN 1 ELSE 'x' END = 1", `where clause: constant 'x' is not a valid integer: invalid input for type integer: "x" is not a valid integer`},
		{"title SIMILAR TO 'a'", `where clause: SIMILAR TO is not supported in where clauses; use LIKE`},
		{`title COLLATE "C" = 'a'`, `where clause: COLLATE is not supported (text compares in byte order)`},
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

func TestCompileParams(t *testing.T) {
	p, err := CompileParams("owner = $1 AND title LIKE $2", []string{"7", "a%"}, itemsSchema)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Eval(item(1, 7, "abc")) || p.Eval(item(1, 8, "abc")) || p.Eval(item(1, 7, "b")) {
		t.Error("owner = $1 AND title LIKE $2 with 7, 'a%' evaluates wrong")
	}
	if len(p.eqs) != 1 || p.eqs[0].col != "owner" {
		t.Errorf("owner = $1 should be an indexable equality, got %+v", p.eqs)
	}
	for _, c := range []struct {
		where  string
		params []string
		err    string
	}{
		{"owner = $2", []string{"7"}, "where clause uses $2 but 1 parameter(s) were given; pass a value for each $n (params[2] in the HTTP API, --param with fanoutctl)"},
		{"owner = $1", []string{"7", "8"}, "where clause: parameter $2 was given ('8') but the clause does not use it; remove it or reference it"},
		{"owner = $1", []string{"seven"}, `where clause: column "owner" is integer, and constant $1 ('seven') does not convert to it: "seven" is not a valid integer`},
		{"", []string{"7"}, "where clause is empty but 1 parameter(s) were given; remove them"},
	} {
		_, err := CompileParams(c.where, c.params, itemsSchema)
		if err == nil || err.Error() != c.err {
			t.Errorf("CompileParams(%q, %q):\n got: %v\nwant: %s", c.where, c.params, err, c.err)
		}
	}
}
