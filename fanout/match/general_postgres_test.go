package match

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// richTable has the types of the general evaluator: enums, arrays, time,
// interval, json, jsonb, character(n) and varchar(n), with NULLs, boundaries
// (integer limits, infinities, NaN), empty and multidimensional arrays.
const richTable = `
CREATE TABLE r (
	id int PRIMARY KEY,
	i2 smallint, i4 integer, i8 bigint, n numeric, f4 real, f8 double precision,
	tx text, vc varchar(5), ch char(4), b boolean, u uuid,
	ts timestamp, tz timestamptz, d date, tm time, iv interval,
	e mood, ea mood[], ia int[], ta text[], j jsonb, js json
);
INSERT INTO r VALUES
 (1, 2, 7, 10, 12.50, 0.5, 0.1, 'abc', 'Abc', 'ab', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '2024-01-31 10:00:00', '2024-01-31 10:00:00+00', '2024-01-31', '10:30:00', '1 mon 2 days 03:00:00',
  'happy', '{happy,sad}', '{1,2,3}', '{a,b}', '{"a": 1, "b": [1, 2]}', '{"a":1}'),
 (2, -3, -7, -10, -1.5, -2.5, -1e10, 'ABC', 'x y', 'ab  ', false, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12',
  '1999-12-31 23:59:59.5', '1999-12-31 23:59:59-05', '2000-02-29', '23:59:59.999999', '-1 days +01:00:00',
  'sad', '{}', '{}', '{}', '[]', '[]'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 32767, 2147483647, 9223372036854775807, 'NaN', 'NaN', 'Infinity', '', '', '', true, '00000000-0000-0000-0000-000000000000',
  'infinity', '-infinity', 'infinity', '24:00:00', '178000000 years',
  'meh', '{meh,NULL}', '{NULL,5}', '{NULL,"x y"}', 'null', 'null'),
 (5, -32768, -2147483648, -9223372036854775808, 0, '-Infinity', 0, 'a%b', 'a_b', 'a', false, 'ffffffff-ffff-ffff-ffff-ffffffffffff',
  '-infinity', 'infinity', '-infinity', '00:00:00', '00:00:00',
  'ok', '{ok,ok}', '{{1,2},{3,4}}', '{"{}","a,b"}', '"str"', '"str"'),
 (6, 0, 0, 0, 1.5, 1.5, 1.5, 'a\b', 'é', 'é', NULL, NULL,
  '2024-02-29 00:00:00', '2024-03-31 12:00:00+00', '2024-01-01', '12:00:00', '1 day',
  NULL, '{sad}', '{7,7}', '{"",NULL}', '{"b": 2.50, "a": {"c": null}}', '{"b":2.50}'),
 (7, 7, 12, 12, 0.333, 1e-30, 1e300, 'hello world', 'HELLO', 'zz', true, NULL,
  '0044-03-15 12:00:00 BC', '2024-06-30 23:00:00-02', '0044-03-15 BC', '00:00:00.5', '-3 mons -0.5 sec',
  'happy', NULL, '{-2147483648,2147483647}', '{z}', '{"a": 1.0, "b": [1, 2]}', '{}'),
 (8, 1, 1, 1, 123456789012345678901234567890.123456789, 3.4e38, -0, 'abc ', 'abd', 'abd', false, '12345678-1234-1234-1234-123456789abc',
  '2024-12-31 23:59:59.999999', '2024-02-29 12:00:00+05:30', '2024-12-31', '01:02:03', '2 years 11 mons 30 days 23:59:59.999999',
  'meh', '{happy}', '{3}', '{abc}', '{"a": 1}', '[1, 2]');
`

// richPredicates are hand-written clauses over the new operators and types.
var richPredicates = []string{
	// arithmetic, overflow, division by zero
	"i4 + 1 > 7", "i4 + 2147483647 > 0", "i2 * i2 > 0", "i2 * 1000 > 0", "i8 - 1 < 0", "i8 + i8 = 0", "-i4 < 0", "@ i4 > 5", "@ i8 > 0",
	"i4 / i2 = 3", "i4 / 0 = 1", "i4 % i2 = 1", "i4 % 0 = 1", "i8 / -1 > 0", "i4 / -1 > 0", "i2 / -1 > 0",
	"i4 & 5 = 5", "i4 | 8 = 15", "i4 # 3 = 4", "~i2 = -3", "i2 & i4 = 2",
	"n + 1 > 13", "n * 2 = 25", "n * n > 100", "n / 3 > 4", "n / 3 = 4.1666666666666667", "n / 0 > 1", "n % 5 = 2.5", "n % 0 = 1",
	"(n / 3)::text = '4.1666666666666667'", "(1 / n)::text LIKE '0.08%'", "n - n = 0", "(n * 1.10)::text = '13.7500'",
	"f8 * 2 > 0", "f8 * 1e300 > 0", "f8 / 0 > 0", "f8 / f4 > 0", "f4 * 2 = 1", "f4 * 1e38 > 0", "f4 + f8 > 0", "f8 ^ 2 > 1", "f8 ^ 0.5 > 0",
	"|/ f8 > 0.3", "|/ i4 > 2", "||/ f8 > 0", "i4 ^ 2 = 49", "f8 - f8 = 0", "f4 / f4 = 1", "0 ^ f8 = 0",
	"i4 * 1.5 > 10", "i2 + f4 > 0", "i4 + n > 0", "n + f8 > 0",
	// strings
	"lower(tx) = 'abc'", "upper(vc) = 'ABC'", "lower(vc) LIKE 'a%'", "tx || vc = 'abcAbc'", "tx || 'x' = 'abcx'", "ch || 'x' = 'abx'",
	"concat(ch, 'x') = 'ab  x'", "concat(tx, i4, NULL, b) = 'abc7t'", "concat_ws('-', tx, vc, i4) LIKE 'abc-%'", "length(ch) = 2",
	"length(tx) = 3", "char_length(vc) = 1", "octet_length(vc) = 2", "tx || i4 = 'abc7'", "i4 || tx = '7abc'", "tx || NULL IS NULL",
	"tx LIKE 'a!%b' ESCAPE '!'", "tx LIKE 'a\\%b'", "tx NOT LIKE 'a%'", "tx NOT ILIKE 'A%'", "vc ILIKE 'a_B'", "tx LIKE 'a%b' ESCAPE ''",
	"lower(tx) LIKE '%o w%'", "upper(tx) ILIKE 'ABC%'", "like(tx, 'ab%')", "coalesce(tx, 'none') = 'none'", "coalesce(vc, tx, 'z') = 'Abc'",
	"nullif(tx, 'abc') IS NULL", "nullif(i4, 7) = 7", "greatest(i2, i4, 5) = 7", "least(i2, i4) = -7", "greatest(tx, vc) = 'abc'",
	"least(tx, vc, 'b') = 'Abc'", "greatest(NULL, i4) = 7", "coalesce(i2, i4, 0) = 0",
	// casts
	"i4::text = '7'", "n::text = '12.50'", "n::int = 13", "n::int4 = -2", "n::int8 > 0", "f8::int = 0", "f8::int8 > 0", "f4::int = 2",
	"tx::int = 1", "'12'::int + i4 = 19", "n::float8 > 12", "f8::numeric = 0.1", "f4::numeric = 0.5", "i8::int2 = 10", "i4::int2 > 0",
	"ch::text = 'ab'", "ch::varchar = 'ab'", "b::int = 1", "i4::bool", "ts::date = '2024-01-31'", "tz::date > '2024-01-01'",
	"ts::time = '10:00'", "d::timestamp = '2024-01-31'", "d::timestamptz < tz", "e::text = 'happy'", "u::text LIKE 'a0ee%'",
	"j::text = '{\"a\": 1, \"b\": [1, 2]}'", "n::numeric(5,1) = 12.5", "n::numeric(3,1) > 0", "tx::varchar(2) = 'ab'", "tx::char(2) = 'ab'",
	"int4(n) = 13", "text(i4) = '7'", "CAST(i4 AS bigint) = 7", "f8::text = '0.1'", "f4::text = '0.5'", "f8::text = '1e+300'",
	"(f8 * 10)::text = '1'", "ts::text = '2024-01-31 10:00:00'", "tz::text LIKE '2024-%'", "d::text = '0044-03-15 BC'",
	"iv::text = '1 mon 2 days 03:00:00'", "tm::text = '10:30:00'", "ia::text = '{1,2,3}'", "ta::text LIKE '%x y%'", "b::text = 'true'",
	"i4::float4 = 7", "i8::float4 > 1e18", "f8::float4 > 0", "i4::numeric / 2 = 3.5", "'1 day'::interval < iv",
	// dates, times, intervals
	"d + 1 = '2024-02-01'", "d - 1 = '2024-01-30'", "d - d = 0", "d - '2024-01-01'::date = 30", "d + 7 > '2024-02-01'", "1 + d > '2024-01-01'",
	"d + iv > '2024-03-01'", "d + interval '1 month' = '2024-02-29'", "ts + iv > '2024-03-02'", "ts + interval '1 mon' = '2024-02-29 10:00'",
	"ts - interval '1 day' < ts", "tz - iv < tz", "tz - tz = '0'", "ts - '2024-01-01'::timestamp > '30 days'", "tz - '2024-01-01 00:00:00+00' > '1 day'",
	"(ts - '2024-01-01'::timestamp)::text = '30 days 10:00:00'", "(tz - '2024-01-01+00'::timestamptz)::text LIKE '%days%'",
	"d + tm > '2024-01-31'", "(d + tm)::text = '2024-01-31 10:30:00'", "tm + iv > '00:00'", "(tm + interval '14 hours')::text = '00:30:00'",
	"tm - tm = '0'", "tm - '10:00'::time = '30 minutes'", "tm > '10:00'", "tm BETWEEN '00:00' AND '12:00'", "tm = '24:00'",
	"iv > '1 month'", "iv = '32 days 03:00:00'", "iv = '1 mon 2 days 3 hours'", "iv < '0'", "-iv > '0'", "iv + iv > '2 months'",
	"iv - interval '1 day' = '1 mon 1 day 03:00:00'", "justify_days(iv) > '1 mon'", "justify_hours(iv)::text = '1 mon 2 days 03:00:00'",
	"justify_interval(iv)::text LIKE '%'", "justify_days('35 days'::interval)::text = '1 mon 5 days'", "justify_interval('-1 day 25 hours'::interval)::text = '01:00:00'",
	"iv = '1.5 days'", "iv > '2 hours 30 minutes'", "iv = '@ 1 day ago'", "iv < '-1 day'", "iv = '24 hours'", "iv = '1 day'",
	"timezone('UTC', tz) = '2024-01-31 10:00'", "tz AT TIME ZONE 'Europe/Paris' > '2024-01-01'", "(tz AT TIME ZONE 'Europe/Paris')::text = '2024-01-31 11:00:00'",
	"(ts AT TIME ZONE 'America/New_York')::text = '2024-01-31 15:00:00+00'", "ts AT TIME ZONE 'UTC' = tz", "timezone('Asia/Kolkata', tz)::time = '15:30'",
	"ts > '2024-01-31T09:00:00'", "tz > '2024-01-31 11:00:00+02'", "d < '2024-02-01'::timestamp", "ts + interval '1000000 years' > ts",
	"d + 2147483647 > d", "d - 2147483647 < d", "ts - '-infinity'::timestamp > '0'", "d - 'infinity'::date = 0",
	// enums
	"e = 'happy'", "e <> 'sad'", "e < 'ok'", "e > 'meh'", "e >= 'meh'", "e IN ('sad', 'meh')", "e NOT IN ('happy')", "e = 'nope'",
	"e::text < 'm'", "e BETWEEN 'meh' AND 'happy'", "e IS NULL", "e = ANY(ea)", "ea @> '{sad}'", "ea && ARRAY['ok'::mood]", "'happy' = ANY(ea)",
	"greatest(e, 'ok') = 'happy'", "ea = '{happy,sad}'", "array_ndims(ea) = 1", "e = 'happy'::mood",
	// arrays
	"ia @> '{1,2}'", "ia @> ARRAY[1,2]", "ia <@ ARRAY[1,2,3,4]", "ia <@ '{1,2,3,5,7}'", "ia && ARRAY[5, 3]", "ia && '{}'", "ia @> '{}'", "'{}' <@ ia",
	"3 = ANY(ia)", "i4 = ANY(ia)", "i4 <> ALL(ia)", "2 < ALL(ia)", "0 < ALL(ia)", "5 = ANY('{1,5}')", "i4 = ANY(ARRAY[7, 12])", "i2 >= ANY(ia)",
	"array_ndims(ia) = 1", "array_ndims(ia) IS NULL", "array_ndims(ia) = 2", "cardinality(ia) = 0", "cardinality(ia) = 4", "array_length(ia, 1) = 2",
	"array_length(ia, 2) = 2", "array_length(ia, 3) IS NULL", "ia = '{1,2,3}'", "ia = ARRAY[1,2,3]", "ia = '{}'", "ia = ARRAY[]::int[]", "ia <> '{7,7}'",
	"ia > '{1,2}'", "ia < '{2}'", "ia || 4 = '{1,2,3,4}'", "0 || ia = '{0,1,2,3}'", "ia || ia = '{1,2,3,1,2,3}'", "(ia || NULL::int) = '{1,2,3,NULL}'",
	"ia || '{9}' = '{1,2,3,9}'", "cardinality(ia || ia) = 6", "ta @> ARRAY['a']", "ta = ARRAY['a','b']", "'x y' = ANY(ta)", "'' = ANY(ta)",
	"ta && '{abc,z}'", "ta || 'q'::text = '{a,b,q}'", "ia @> ARRAY[NULL::int]", "ia && ARRAY[NULL::int, 5]", "NULL = ANY(ia)", "5 = ANY(NULL::int[])",
	"ia = '{{1,2},{3,4}}'", "ia @> '{{4}}'", "i4 IN (i2, 12)", "lower(tx) IN ('abc', 'hello world')", "i4 + 0 NOT IN (7, NULL)",
	// uuid, json, jsonb
	"u = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "u < 'b0000000-0000-0000-0000-000000000000'", "u IN ('{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', '00000000000000000000000000000000')",
	"j = '{\"b\": [1, 2], \"a\": 1}'", "j = '{\"a\": 1.0, \"b\": [1,2]}'", "j <> '[]'", "j IS NULL", "js IS NULL", "j = 'null'", "j = '\"str\"'",
	"j = '{\"a\":{\"c\":null},\"b\":2.5}'", "js::jsonb = '{\"a\":1}'", "js::text = '{\"a\":1}'", "j::text = '{\"a\": {\"c\": null}, \"b\": 2.50}'",
	"j IS DISTINCT FROM '[]'", "coalesce(j, '{}') = '{}'",
	// CASE, boolean values
	"CASE WHEN i4 > 5 THEN 'big' ELSE 'small' END = 'big'", "CASE i4 WHEN 7 THEN true WHEN 12 THEN false END", "CASE WHEN b THEN i4 END > 0",
	"CASE WHEN i4 = 0 THEN 0 ELSE 100 / i4 END > 10", "coalesce(b, false)", "coalesce(i4 > 5, true)", "NOT coalesce(b, true)", "(i4 > 5) = b",
	"CASE WHEN tx IS NULL THEN 'null' WHEN tx = '' THEN 'empty' ELSE tx END = 'empty'", "nullif(b, true) IS NULL",
	// logic
	"i4 > 0 AND i4 / i2 > 1", "i4 = 0 OR 100 / i4 > 10", "(i4 + 1 > 0) IS TRUE", "(tx || 'a' = 'a') IS NOT FALSE",
}

// richAtoms are the parts the generated predicates combine.
var richAtoms = []string{
	"i2 + i4 > 0", "i4 * 2 = 14", "i8 * i8 > 0", "i4 / i2 >= 1", "i4 % 3 = 1", "n / 3 > 0.1", "n * n < 1000", "n % 2 = 0.5", "f8 / f4 > 1",
	"f4 * 2 < 1", "f8 ^ 2 > 10", "|/ f8 < 1", "@ i4 = 7", "-i2 > 0", "i4 & 5 = 4", "i4 | i2 < 0", "i4 # 3 > 0", "~i2 < 0", "i2 * i2 > 100",
	"lower(tx) = 'abc'", "upper(vc) LIKE 'A%'", "tx || vc LIKE '%b%'", "concat(tx, i4, ch) <> ''", "ch || 'x' = 'abx'", "length(ch) < 2",
	"concat_ws('-', tx, vc) LIKE '%-%'", "coalesce(tx, vc, 'z') = 'z'", "nullif(tx, 'abc') IS NULL", "greatest(tx, vc) > 'a'", "least(i4, i2) < 0",
	"tx LIKE 'a!%%' ESCAPE '!'", "lower(vc) NOT ILIKE '%B%'",
	"i4::text = '7'", "n::int4 > 1", "f8::int4 > 0", "i8::int2 <> 0", "ch::text = 'ab'", "b::int = 0", "ts::date < d", "e::text > 'n'", "n::numeric(4,2) > 1",
	"f8::text LIKE '1%'", "f4::text LIKE '%e%'", "n::text LIKE '%.%'", "iv::text LIKE '%day%'", "tm::text LIKE '%:00'", "ts::text LIKE '%BC'",
	"d + 1 > '2024-01-01'", "d - d = 0", "d + iv < '2024-06-01'", "ts + iv > '2024-01-01'", "tz - iv < '2024-06-01'", "ts - d::timestamp < '1 day'",
	"tz - tz = '0'", "tm + iv > '12:00'", "tm - '06:00'::time > '0'", "iv > '1 day'", "justify_interval(iv) < '1 year'", "justify_hours(iv) = '1 day'",
	"iv + interval '1 day' > '2 days'", "tz AT TIME ZONE 'Europe/Paris' > '2024-01-01'", "d + tm > '2024-01-01'",
	"e = 'happy'", "e < 'ok'", "e IN ('sad', 'meh')", "e = ANY(ea)", "ea @> '{sad}'",
	"ia @> '{1}'", "ia <@ '{1,2,3}'", "ia && '{5,7}'", "3 = ANY(ia)", "i4 = ANY(ia)", "i4 <> ALL(ia)", "2 < ALL(ia)", "array_ndims(ia) = 1",
	"cardinality(ia) > 1", "ia = '{}'", "ia || 4 = '{4}'", "ta @> '{a}'", "'x y' = ANY(ta)",
	"u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "j = '{\"a\": 1}'", "j IS NULL", "js IS NOT NULL",
	"CASE WHEN i4 > 5 THEN 'big' ELSE 'small' END = 'big'", "coalesce(b, i4 > 0)", "b", "i4 IS NULL", "tx IS NOT NULL",
}

func generatedRichPredicates(seed int64, n int) []string {
	rng := rand.New(rand.NewSource(seed))
	atom := func() string { return richAtoms[rng.Intn(len(richAtoms))] }
	var out []string
	for len(out) < n {
		switch rng.Intn(5) {
		case 0:
			out = append(out, atom())
		case 1:
			out = append(out, fmt.Sprintf("%s AND %s", atom(), atom()))
		case 2:
			out = append(out, fmt.Sprintf("%s OR NOT (%s)", atom(), atom()))
		case 3:
			out = append(out, fmt.Sprintf("(%s) IS NOT TRUE AND (%s OR %s)", atom(), atom(), atom()))
		default:
			out = append(out, fmt.Sprintf("NOT (%s OR %s) OR (%s) IS NULL", atom(), atom(), atom()))
		}
	}
	return out
}

// paramPredicates are clauses with $n and the values they are given.
var paramPredicates = []struct {
	where  string
	params []string
}{
	{"i4 = $1", []string{"7"}}, {"tx = $1 OR vc = $2", []string{"abc", "HELLO"}}, {"e = $1", []string{"meh"}},
	{"ia @> $1", []string{"{1,2}"}}, {"$1 = ANY(ia)", []string{"5"}}, {"d > $1", []string{"2024-01-01"}},
	{"iv > $1", []string{"1 day"}}, {"lower(tx) LIKE $1", []string{"a%"}}, {"n > $1::numeric", []string{"1.5"}},
	{"i4 + $1 > $2", []string{"3", "10"}}, {"tz >= $1 AND tz < $2", []string{"2024-01-01 00:00+00", "2024-12-31 00:00+00"}},
	{"i4 = ANY($1)", []string{"{7,12,99}"}}, {"tx = ANY($1) OR i4 <> ALL($2)", []string{`{abc,"hello world",NULL}`, "{7,12}"}},
	{"j = $1", []string{`{"a":1}`}}, {"u = $1", []string{"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"}}, {"b = $1", []string{"t"}},
}

// substituteParams writes the clause Postgres evaluates: $n as a quoted literal.
func substituteParams(where string, params []string) string {
	for i := len(params); i >= 1; i-- {
		where = strings.ReplaceAll(where, fmt.Sprintf("$%d", i), quote(params[i-1]))
	}
	return where
}

// pgOutcome is Postgres's value of a clause on one row.
type pgOutcome struct {
	val tri
	err bool
}

func TestGeneralAgreesWithPostgres(t *testing.T) {
	pgsrv := testenv.StartPostgres(t)
	conn := pgsrv.Connect(t)
	pgsrv.Exec(t, conn, "SET TimeZone = 'UTC'")
	// The enum gets a label added out of order, so enumsortorder is not the OID order.
	pgsrv.Exec(t, conn, "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
	pgsrv.Exec(t, conn, "ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok'")
	pgsrv.Exec(t, conn, richTable)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	schema := readRichSchema(ctx, t, conn, "r")
	rows := readRows(ctx, t, conn, "SELECT * FROM r ORDER BY id")

	type clause struct {
		where  string
		params []string
	}
	var clauses []clause
	for _, w := range richPredicates {
		clauses = append(clauses, clause{where: w})
	}
	for _, w := range generatedRichPredicates(16, 3000) {
		clauses = append(clauses, clause{where: w})
	}
	for _, w := range generatedExprPredicates(61, 4000) {
		clauses = append(clauses, clause{where: w})
	}
	for _, p := range paramPredicates {
		clauses = append(clauses, clause{p.where, p.params})
	}
	pairs, agreed, refused, bothErr := 0, 0, 0, 0
	for _, cl := range clauses {
		sql := substituteParams(cl.where, cl.params)
		pred, cerr := CompileParams(cl.where, cl.params, schema)
		outcomes := postgresOutcomes(ctx, t, conn, sql, rows)
		if cerr != nil {
			allErr := true
			for _, o := range outcomes {
				allErr = allErr && o.err
			}
			switch {
			case allErr:
				bothErr++
				pairs += len(rows)
				agreed += len(rows)
			case strings.Contains(cerr.Error(), "not supported"):
				refused++
				t.Logf("refused: %s: %v", cl.where, cerr)
			default:
				t.Errorf("WHERE %s: Compile fails (%v), Postgres evaluates it", cl.where, cerr)
			}
			continue
		}
		for i, r := range rows {
			pairs++
			o := outcomes[i]
			got, gerr := evalTri(pred, r)
			switch {
			case o.err && gerr != nil, !o.err && gerr == nil && got == o.val:
				agreed++
			case o.err:
				t.Errorf("WHERE %s on row %s: Postgres fails, the matcher says %v", cl.where, *r["id"], got)
			case gerr != nil:
				t.Errorf("WHERE %s on row %s: the matcher fails (%v), Postgres says %v", cl.where, *r["id"], gerr, o.val)
			default:
				t.Errorf("WHERE %s on row %s: the matcher says %v, Postgres says %v", cl.where, *r["id"], got, o.val)
			}
		}
	}
	t.Logf("%d clauses x %d rows: %d of %d predicate x row pairs agree with Postgres (%d clauses fail in both at compile time); %d clauses refused as not supported",
		len(clauses), len(rows), agreed, pairs, bothErr, refused)
}

// evalTri evaluates the clause's three-valued result on row.
func evalTri(p *Predicate, row fanout.Row) (tri, error) {
	if p.root == nil {
		return tTrue, nil
	}
	c := evalCtx{row: row}
	v := p.root.eval(&c)
	if c.failed != nil {
		return tNull, c.failed
	}
	if c.err != nil {
		return tNull, c.err
	}
	return v, nil
}

func (t tri) String() string { return [...]string{"false", "true", "NULL"}[t] }

// postgresOutcomes evaluates sql on every row: in one query, or row by row
// when the query fails (to learn which rows fail).
func postgresOutcomes(ctx context.Context, t *testing.T, conn *pgx.Conn, sql string, rows []fanout.Row) []pgOutcome {
	t.Helper()
	out := make([]pgOutcome, len(rows))
	read := func(q string) (map[string]*bool, error) {
		res, err := conn.Query(ctx, q)
		if err != nil {
			return nil, err
		}
		defer res.Close()
		m := map[string]*bool{}
		for res.Next() {
			var id int
			var v *bool
			if err := res.Scan(&id, &v); err != nil {
				return nil, err
			}
			m[fmt.Sprint(id)] = v
		}
		return m, res.Err()
	}
	set := func(i int, v *bool) {
		switch {
		case v == nil:
			out[i] = pgOutcome{val: tNull}
		case *v:
			out[i] = pgOutcome{val: tTrue}
		default:
			out[i] = pgOutcome{val: tFalse}
		}
	}
	if m, err := read("SELECT id, (" + sql + ")::boolean FROM r ORDER BY id"); err == nil {
		for i, r := range rows {
			set(i, m[*r["id"]])
		}
		return out
	}
	for i, r := range rows {
		m, err := read(fmt.Sprintf("SELECT id, (%s)::boolean FROM r WHERE id = %s", sql, *r["id"]))
		if err != nil {
			out[i] = pgOutcome{err: true}
			continue
		}
		set(i, m[*r["id"]])
	}
	return out
}

// readRichSchema reads columns as shapes.LoadSchema does, enum labels and
// array element types included.
func readRichSchema(ctx context.Context, t *testing.T, conn *pgx.Conn, table string) []fanout.Column {
	t.Helper()
	rows, err := conn.Query(ctx, `SELECT a.attname, format_type(a.atttypid, NULL), a.atttypid::int8,
		(CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE 0 END)::int8,
		COALESCE((SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e
			WHERE e.enumtypid = CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE t.oid END), '{}')
		FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
		WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var cols []fanout.Column
	for rows.Next() {
		var c fanout.Column
		var oid, elem int64
		var labels []string
		if err := rows.Scan(&c.Name, &c.Type, &oid, &elem, &labels); err != nil {
			t.Fatal(err)
		}
		c.OID, c.ElemOID = uint32(oid), uint32(elem)
		if len(labels) > 0 {
			c.Enum = &labels
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return cols
}

// TestIntervalStylesAgree: the snapshot session prints intervals in
// iso_8601 style, pgoutput in postgres style; both must read the same.
func TestIntervalStylesAgree(t *testing.T) {
	pgsrv := testenv.StartPostgres(t)
	conn := pgsrv.Connect(t)
	ctx := context.Background()
	values := []string{"1 mon 2 days 03:00:00", "-1 days +01:00:00", "0", "178000000 years", "-3 mons -0.5 sec",
		"2 years 11 mons 30 days 23:59:59.999999", "-1 year -2 mons", "1.5 days", "1.5 months", "1.25 years", "-7 weeks",
		"100 hours", "-0.000001 sec", "1 day -1 hour", "3 decades", "P1Y2.5M", "PT1.5H", "P1W"}
	for _, v := range values {
		var pgStyle, iso string
		if _, err := conn.Exec(ctx, "SET IntervalStyle = postgres"); err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, "SELECT $1::text::interval::text", v).Scan(&pgStyle); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if _, err := conn.Exec(ctx, "SET IntervalStyle = iso_8601"); err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, "SELECT $1::text::interval::text", v).Scan(&iso); err != nil {
			t.Fatal(err)
		}
		a, err := parseInterval(v)
		if err != nil {
			t.Errorf("%q: %v", v, err)
			continue
		}
		b, err1 := parseInterval(pgStyle)
		c, err2 := parseInterval(iso)
		if err1 != nil || err2 != nil || a != b || a != c || formatInterval(a) != pgStyle {
			t.Errorf("%q: read as %+v, Postgres prints %q (read %+v, %v) and %q (read %+v, %v); the matcher prints %q",
				v, a, pgStyle, b, err1, iso, c, err2, formatInterval(a))
		}
	}
}

// randomExprs builds random typed expressions over the rich table: nested
// arithmetic, casts, string functions and date/time arithmetic, compared
// with boundary literals, so that type resolution, overflow and rounding
// meet Postgres's in combinations nobody wrote by hand.
type randomExprs struct{ rng *rand.Rand }

func (g randomExprs) pick(xs ...string) string { return xs[g.rng.Intn(len(xs))] }

func (g randomExprs) num(depth int) string {
	if depth <= 0 || g.rng.Intn(3) == 0 {
		return g.pick("i2", "i4", "i8", "n", "f4", "f8", "0", "1", "-1", "2", "7", "3.5", "0.1", "1e10", "2147483647",
			"32767", "-32768", "9223372036854775807", "'NaN'::numeric", "'Infinity'::float8", "1.5::real", "12::smallint", "3::bigint")
	}
	a, b := g.num(depth-1), g.num(depth-1)
	switch g.rng.Intn(12) {
	case 0, 1, 2, 3:
		return fmt.Sprintf("(%s %s %s)", a, g.pick("+", "-", "*", "/", "%"), b)
	case 4:
		return fmt.Sprintf("(-%s)", a)
	case 5:
		return fmt.Sprintf("(@ %s)", a)
	case 6:
		return fmt.Sprintf("%s::%s", a, g.pick("int2", "int4", "int8", "numeric", "real", "float8", "numeric(6,2)"))
	case 7:
		return fmt.Sprintf("%s(%s, %s)", g.pick("greatest", "least", "coalesce", "nullif"), a, b)
	case 8:
		return fmt.Sprintf("abs(%s)", a)
	case 9:
		return fmt.Sprintf("(%s %s %s)", a, g.pick("&", "|", "#"), g.pick("i2", "i4", "i8", "3", "255"))
	case 10:
		return fmt.Sprintf("length(%s)", g.text(depth-1))
	}
	return fmt.Sprintf("CASE WHEN %s > %s THEN %s ELSE %s END", a, b, b, a)
}

func (g randomExprs) text(depth int) string {
	if depth <= 0 || g.rng.Intn(3) == 0 {
		return g.pick("tx", "vc", "ch", "''", "'abc'", "'A b'", "'%'", "e::text", "u::text")
	}
	a := g.text(depth - 1)
	switch g.rng.Intn(7) {
	case 0:
		return fmt.Sprintf("lower(%s)", a)
	case 1:
		return fmt.Sprintf("upper(%s)", a)
	case 2:
		return fmt.Sprintf("(%s || %s)", a, g.text(depth-1))
	case 3:
		return fmt.Sprintf("concat(%s, %s, %s)", a, g.num(depth-1), g.pick("b", "d", "NULL", "ia"))
	case 4:
		return fmt.Sprintf("(%s)::text", g.num(depth-1))
	case 5:
		return fmt.Sprintf("coalesce(%s, 'z')", a)
	}
	return fmt.Sprintf("(%s || %s)", a, g.num(depth-1))
}

func (g randomExprs) when(depth int) string {
	switch g.rng.Intn(8) {
	case 0:
		return g.pick("d", "'2024-02-29'::date") + g.pick(" + ", " - ") + g.pick("1", "i2", "30", "i4")
	case 1:
		return g.pick("ts", "tz", "d") + g.pick(" + ", " - ") + g.pick("iv", "interval '1 mon'", "interval '-1 day 3 hours'", "interval '1.5 days'")
	case 2:
		return g.pick("d", "ts::date", "tz::date")
	case 3:
		return g.pick("ts", "tz", "d::timestamp", "d + tm", "timezone('Europe/Paris', tz)")
	}
	return g.pick("ts", "tz", "d")
}

func (g randomExprs) pred(depth int) string {
	op := g.pick("=", "<>", "<", "<=", ">", ">=")
	switch g.rng.Intn(9) {
	case 0, 1, 2:
		return fmt.Sprintf("%s %s %s", g.num(depth), op, g.num(depth-1))
	case 3:
		return fmt.Sprintf("%s %s %s", g.text(depth), op, g.pick("''", "'abc'", "'ABC'", "'a'", "'ab'", "tx"))
	case 4:
		return fmt.Sprintf("%s %s %s", g.text(depth), g.pick("LIKE", "NOT LIKE", "ILIKE"), g.pick("'a%'", "'%B%'", "'_'", "'%7%'", "''"))
	case 5:
		return fmt.Sprintf("%s %s %s", g.when(depth), op, g.pick("'2024-01-31'", "'2024-03-01 00:00'", "'infinity'", "'2000-01-01'"))
	case 6:
		return fmt.Sprintf("(%s) - (%s) %s %s", g.pick("ts", "tz", "d::timestamp"), g.pick("'2024-01-01'::timestamp", "tz", "ts"), op, g.pick("'30 days'", "'0'", "'-1 day'"))
	case 7:
		return fmt.Sprintf("%s %s %s", g.pick("iv", "-iv", "justify_interval(iv)", "iv + interval '1 day'", "tm - '12:00'::time"), op, g.pick("'1 day'", "'0'", "'1 mon'", "'-1 hour'"))
	}
	return fmt.Sprintf("%s IS %sNULL", g.num(depth), g.pick("", "NOT "))
}

func generatedExprPredicates(seed int64, n int) []string {
	g := randomExprs{rand.New(rand.NewSource(seed))}
	out := make([]string, 0, n)
	for len(out) < n {
		if g.rng.Intn(3) == 0 {
			out = append(out, fmt.Sprintf("%s %s %s", g.pred(2), g.pick("AND", "OR"), g.pred(1)))
		} else {
			out = append(out, g.pred(3))
		}
	}
	return out
}
