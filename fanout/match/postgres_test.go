package match

import (
	"context"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// allTypesTable has a column of every type the matcher supports.
const allTypesTable = `
CREATE TABLE t (
	id int PRIMARY KEY,
	i2 smallint, i4 integer, i8 bigint, n numeric, f4 real, f8 double precision,
	tx text, vc varchar(20), ch char(5), b boolean, u uuid,
	ts timestamp, tz timestamptz, d date,
	j jsonb
);
INSERT INTO t VALUES
 (1, 1, 7, 7, 12.50, 0.1, 0.1, 'abc', 'abc', 'ab', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
     '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123456+00', '2024-01-02', '{}'),
 (2, -1, -7, -9223372036854775808, -1.5, -0.5, -1e300, 'ABC', 'ABC ', 'abc  ', false, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12',
     '1999-12-31 23:59:59', '1999-12-31 23:59:59-05', '1999-12-31', NULL),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 32767, 2147483647, 9223372036854775807, 'NaN', 'NaN', 'NaN', '', '', '', true, '00000000-0000-0000-0000-000000000000',
     'infinity', 'infinity', 'infinity', NULL),
 (5, -32768, -2147483648, 0, 0, '-Infinity', 'Infinity', 'a%b', 'a_b', 'a', false, 'ffffffff-ffff-ffff-ffff-ffffffffffff',
     '-infinity', '-infinity', '-infinity', NULL),
 (6, 0, 0, 1, 1.5, 1.5, 1.5, 'a\b', 'é', 'é', NULL, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
     '2024-01-02 00:00:00', '2024-01-02 00:00:00+00', '2024-01-01', NULL),
 (7, 7, 12, 12, 12.5, 12.5, 12.5, 'Ünïcode ß', 'xyz', 'zz', true, NULL,
     '0044-03-15 12:00:00 BC', '2024-06-30 23:00:00-02', '0044-03-15 BC', NULL),
 (8, 2, 2, 2, 0.000001, 100000, 1e-7, 'abc ', 'abd', 'abd', false, '12345678-1234-1234-1234-123456789abc',
     '2024-02-29 12:00:00', '2024-02-29 12:00:00+05:30', '2024-02-29', NULL),
 (9, 3, 3, 3, 123456789012345678901234567890.123456789, -0, '-0', 'it''s', 'O''Brien', 'x', true, NULL,
     '2024-01-02 03:04:05', '2024-01-02 03:04:05.5+00', '2024-01-03', NULL),
 (10, 5, 5, 5, 5, 5, 5, '%', '_', '\', false, NULL,
     '2024-01-01 00:00:00', '2024-01-01 00:00:00+00', '2024-01-01', NULL);
`

// predicates are checked against Postgres: for every row, Eval must agree
// with `SELECT id FROM t WHERE <predicate>`.
var predicates = []string{
	"true", "false", "NULL", "NOT NULL::boolean", "1 = 1", "'a' < 'b'",
	// integers
	"i4 = 7", "i4 = '7'", "i4 = '007'", "i4 <> 7", "i4 != 7", "i4 < 5", "i4 <= 5", "i4 > 5", "i4 >= 5",
	"7 = i4", "5 < i4", "i4 = -7", "i4 = 7.0", "i4 = 7.5", "i4 < 7.5", "i4 > 1e1",
	"i2 = 32767", "i2 < -100", "i8 = 9223372036854775807", "i8 < -9223372036854775807",
	"i8 = 7", "i8 > 2147483648", "i2 = i4", "i4 = i8", "i2 < i8",
	"i4 IN (1, 2, 3)", "i4 IN (7, NULL)", "i4 NOT IN (7, 2)", "i4 NOT IN (7, NULL)", "i4 IN ('2', 3.0)",
	"i4 BETWEEN 0 AND 7", "i4 NOT BETWEEN 0 AND 7", "i4 BETWEEN SYMMETRIC 7 AND 0", "i4 BETWEEN 7 AND 0",
	"i4 IS NULL", "i4 IS NOT NULL", "i4 IS DISTINCT FROM 7", "i4 IS NOT DISTINCT FROM NULL", "i4 = NULL",
	"i4 = 1::int8", "i4 = '12'::bigint", "i4 = 5::numeric", "i4 = 5::float8", "i4 = 0.1::float4",
	// numeric
	"n = 12.5", "n = 12.50", "n = '12.500'", "n = 12", "n > 0", "n < 0", "n = 'NaN'", "n > 1e20", "n < 'NaN'",
	"n = 0.000001", "n = 1e-6", "n IN (1.5, 5)", "n = 123456789012345678901234567890.123456789",
	"n = 123456789012345678901234567890.12345678", "n >= 'Infinity'", "n < '-Infinity'", "n = i4", "n > f8",
	"n = 1.5::float8", "n = '1.5'::real",
	// floats
	"f8 = 0.1", "f4 = 0.1", "f4 = '0.1'", "f4 = 0.1::real", "f4 = 0.1::float8", "f8 = 'NaN'", "f8 > 1e299",
	"f8 = 'Infinity'", "f4 = '-Infinity'", "f8 = 0", "f8 = -0.0", "f4 = 0", "f4 < 0", "f8 = 1e-7", "f4 = 1e5",
	"f4 > f8", "f4 = f8", "f8 = 1.5", "f8 IN (5, 12.5)", "f8 > 'NaN'", "f8 >= 'NaN'", "f4 = i4", "f8 < n",
	// text
	"tx = 'abc'", "tx = 'abc '", "tx < 'abc'", "tx > 'ABC'", "tx >= ''", "tx = ''", "tx IN ('abc', 'ABC')",
	"tx = vc", "tx < vc", "tx > 'a'", "tx > 'Z'", "tx < 'é'", "tx = 'it''s'", "tx = E'a\\\\b'",
	"vc = 'ABC'", "vc = 'ABC '", "vc = 'O''Brien'", "vc < 'abd'", "vc > 'xy'",
	"ch = 'ab'", "ch = 'ab   '", "ch = 'abc'", "ch < 'abd'", "ch = ''", "ch = 'a'", "ch > 'a'",
	"ch = tx", "ch = vc", "vc = ch", "tx = ch", "ch IN ('ab', 'x')", "ch = 'ab'::bpchar", "ch = 'ab '::text",
	// LIKE / ILIKE
	"tx LIKE 'a%'", "tx LIKE 'A%'", "tx ILIKE 'a%'", "tx NOT LIKE 'a%'", "tx NOT ILIKE 'a%'", "tx LIKE '%'",
	"tx LIKE '_bc'", "tx LIKE '__'", "tx LIKE ''", "tx LIKE 'a\\%b'", "tx LIKE 'a%b'", "tx LIKE 'a\\\\b'",
	"tx LIKE '%c%'", "tx LIKE '%c'", "tx LIKE '%ß'", "tx ILIKE 'ünïcode%'", "tx ILIKE 'ÜN%'", "tx LIKE 'Ün_code ß'",
	"vc LIKE 'a\\_b'", "vc LIKE 'a_b'", "vc ILIKE 'abc%'", "vc LIKE 'ABC'", "vc LIKE 'ABC_'", "vc LIKE '\\_'",
	"ch LIKE 'ab'", "ch LIKE 'ab%'", "ch LIKE 'ab___'", "ch NOT LIKE 'a%'", "ch ILIKE 'AB%'", "ch LIKE '\\\\%'",
	"tx ~~ 'a%'", "tx !~~ 'a%'", "tx ~~* 'A%'", "tx LIKE '%%%'",
	// bool
	"b", "NOT b", "b = true", "b = 'yes'", "b = 'f'", "b <> false", "b IS TRUE", "b IS NOT TRUE", "b IS FALSE",
	"b IS NOT FALSE", "b IS UNKNOWN", "b IS NOT UNKNOWN", "b IS NULL", "b AND i4 > 0", "b OR i4 > 0",
	"NOT (b OR i4 > 0)", "b < true", "(i4 > 5) IS NOT TRUE", "(i4 = 7 OR b) IS UNKNOWN",
	// uuid
	"u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "u = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
	"u = '{a0eebc999c0b4ef8bb6d6bb9bd380a11}'", "u < 'b0000000-0000-0000-0000-000000000000'",
	"u > '00000000-0000-0000-0000-000000000000'", "u IN ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '12345678-1234-1234-1234-123456789abc')",
	"u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid", "u IS NULL",
	// timestamps and dates
	"ts = '2024-01-02 03:04:05.123456'", "ts > '2024-01-01'", "ts < '2000-01-01'", "ts = 'infinity'",
	"ts > '-infinity'", "ts < '0001-01-01'", "ts = '2024-01-02T00:00:00'", "ts >= '2024-01-02'::date",
	"ts = d", "ts > d", "ts < '2024-01-02 03:04:05.1234565'", "ts BETWEEN '2024-01-01' AND '2024-01-03'",
	"ts = '2024-02-29 12:00'", "ts < '0001-01-01 BC'", "ts = '0044-03-15 12:00:00 BC'",
	"tz = '2024-01-02 03:04:05.123456+00'", "tz = '2024-01-02 03:04:05.123456Z'", "tz = '2024-01-02 05:04:05.123456+02'",
	"tz = '2000-01-01 04:59:59'", "tz = '2000-01-01 04:59:59+00'", "tz > '2024-01-01 00:00:00+00'",
	"tz < '2024-02-29 06:30:00+00'", "tz = '2024-02-29 06:30:00+00'", "tz = '2024-07-01 01:00:00+00'",
	"tz = 'infinity'", "tz < '-infinity'", "tz >= '2024-01-02 03:04:05.5+00'", "tz = '2024-01-02 03:04:05.5+00'::timestamptz",
	"tz > ts", "tz = ts", "tz > '2024-01-01'::date", "tz = '2024-01-02 08:34:05.5+05:30'",
	"d = '2024-01-02'", "d < '2024-01-01'", "d = '2024-01-01 23:00'", "d > 'infinity'", "d >= 'infinity'",
	"d = '0044-03-15 BC'", "d < '0001-01-01'", "d IN ('2024-01-01', '2024-02-29')", "d = '2024-01-01'::timestamp",
	"d < '2024-01-01 12:00'::timestamp", "d BETWEEN '2024-01-01' AND '2024-01-02'",
	// logic and mixtures
	"i4 = 7 AND tx = 'abc'", "i4 = 7 OR tx = 'ABC'", "NOT (i4 = 7)", "NOT i4 = 7 AND b",
	"(i4 > 0 OR i4 IS NULL) AND NOT b", "i4 = 7 AND (tx LIKE 'a%' OR n > 100)", "i4 IN (2, 3) AND d > '2024-01-01'",
	"i4 > 0 AND i4 < 10 AND b IS NOT FALSE", "(i4 = 1 OR i4 = 2 OR i4 = 3) AND tx IS NOT NULL",
	"i4 = 7 OR NULL", "i4 = 7 AND NULL", "NOT (i4 = 7 AND NULL)", "(i4 = 7 OR NULL) IS NULL",
}

func TestMatcherAgreesWithPostgres(t *testing.T) {
	pgsrv := testenv.StartPostgres(t)
	conn := pgsrv.Connect(t)
	pgsrv.Exec(t, conn, "SET TimeZone = 'UTC'")
	pgsrv.Exec(t, conn, allTypesTable)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	schema := readSchema(ctx, t, conn, "t")
	rows := readRows(ctx, t, conn, "SELECT * FROM t ORDER BY id")

	checked := 0
	for _, where := range append(predicates, generatedPredicates(42, 2000)...) {
		pred, err := Compile(where, schema)
		if err != nil {
			t.Errorf("Compile(%q): %v", where, err)
			continue
		}
		want := map[string]bool{}
		for _, r := range readRows(ctx, t, conn, "SELECT id FROM t WHERE "+where) {
			want[*r["id"]] = true
		}
		var got, exp []string
		for _, r := range rows {
			ok, err := pred.EvalErr(r)
			if err != nil {
				t.Errorf("%q on row %s: %v", where, *r["id"], err)
			}
			if ok {
				got = append(got, *r["id"])
			}
			if want[*r["id"]] {
				exp = append(exp, *r["id"])
			}
		}
		if strings.Join(got, ",") != strings.Join(exp, ",") {
			t.Errorf("WHERE %s: matcher matches rows [%s], Postgres matches [%s]", where, strings.Join(got, ","), strings.Join(exp, ","))
		}
		checked++
	}
	t.Logf("%d predicates x %d rows agree with Postgres", checked, len(rows))
}

// readSchema reads a table's columns the way shapes.LoadSchema does.
func readSchema(ctx context.Context, t *testing.T, conn *pgx.Conn, table string) []fanout.Column {
	t.Helper()
	rows, err := conn.Query(ctx, `SELECT attname, format_type(atttypid, NULL), atttypid::int8
		FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var cols []fanout.Column
	for rows.Next() {
		var c fanout.Column
		var oid int64
		if err := rows.Scan(&c.Name, &c.Type, &oid); err != nil {
			t.Fatal(err)
		}
		c.OID = uint32(oid)
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return cols
}

// readRows returns rows in Postgres text output, as pgoutput sends them.
func readRows(ctx context.Context, t *testing.T, conn *pgx.Conn, sql string) []fanout.Row {
	t.Helper()
	rows, err := conn.Query(ctx, sql, pgx.QueryResultFormats{pgx.TextFormatCode})
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	defer rows.Close()
	var out []fanout.Row
	fields := rows.FieldDescriptions()
	for rows.Next() {
		r := fanout.Row{}
		for i, raw := range rows.RawValues() {
			if raw == nil {
				r[fields[i].Name] = nil
				continue
			}
			s := string(raw)
			r[fields[i].Name] = &s
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

func TestRowValuesParse(t *testing.T) {
	// Every non-NULL value Postgres prints for the table must be readable.
	pgsrv := testenv.StartPostgres(t)
	conn := pgsrv.Connect(t)
	pgsrv.Exec(t, conn, "SET TimeZone = 'UTC'")
	pgsrv.Exec(t, conn, allTypesTable)
	ctx := context.Background()
	schema := readSchema(ctx, t, conn, "t")
	for _, r := range readRows(ctx, t, conn, "SELECT * FROM t") {
		for _, c := range schema {
			ty, ok := typeOfColumn(c)
			if !ok || r[c.Name] == nil {
				continue
			}
			if _, err := native(*r[c.Name], ty); err != nil {
				t.Errorf("row %s column %s (%s): %v", *r["id"], c.Name, c.Type, err)
			}
		}
	}
}

// literals per column for generated predicates: values in the table, near
// them, and edge values.
var literals = map[string][]string{
	"i2": {"0", "1", "-1", "7", "32767", "-32768", "2.5", "'3'"},
	"i4": {"0", "7", "-7", "12", "2147483647", "5.0", "6.999", "'12'", "9999999999"},
	"i8": {"0", "7", "-9223372036854775808", "9223372036854775807", "2.0", "'3'"},
	"n":  {"0", "12.5", "'12.50'", "-1.5", "1e-6", "'NaN'", "5", "0.1", "1.5::float8"},
	"f4": {"0", "0.1", "'0.1'", "1.5", "'NaN'", "'-Infinity'", "100000", "-0.5", "12.5::real"},
	"f8": {"0", "0.1", "1e-7", "'Infinity'", "'NaN'", "-1e300", "1.5", "5::int2", "'-0'"},
	"tx": {"''", "'abc'", "'ABC'", "'a'", "'abc '", "'é'", "'it''s'", "'%'", "'zzz'"},
	"vc": {"''", "'abc'", "'ABC '", "'abd'", "'O''Brien'", "'xyz'", "'_'", "'é'"},
	"ch": {"''", "'ab'", "'ab  '", "'abc'", "'a'", "'x'", "'\\'", "'é'", "'zz   '"},
	"b":  {"true", "false", "'t'", "'no'"},
	"u":  {"'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12'", "'00000000-0000-0000-0000-000000000000'", "'80000000-0000-0000-0000-000000000000'"},
	"ts": {"'2024-01-02 03:04:05.123456'", "'2024-01-02'", "'infinity'", "'-infinity'", "'1999-12-31 23:59:59'", "'0044-03-15 12:00:00 BC'", "'2024-01-02'::date"},
	"tz": {"'2024-01-02 03:04:05.123456+00'", "'2000-01-01 04:59:59+00'", "'2024-02-29 12:00:00+05:30'", "'infinity'", "'2024-01-01'", "'2024-01-02 03:04:05.5-01'"},
	"d":  {"'2024-01-02'", "'2024-01-01'", "'infinity'", "'-infinity'", "'0044-03-15 BC'", "'2024-01-02 00:00'::timestamp", "'2024-01-01 12:00'::timestamp"},
}

// generatedPredicates builds random comparisons, IN lists and their
// combinations over literals, deterministically.
func generatedPredicates(seed int64, n int) []string {
	rng := rand.New(rand.NewSource(seed))
	cols := make([]string, 0, len(literals))
	for c := range literals {
		cols = append(cols, c)
	}
	sort.Strings(cols)
	ops := []string{"=", "<>", "<", "<=", ">", ">="}
	atom := func() string {
		c := cols[rng.Intn(len(cols))]
		lits := literals[c]
		lit := lits[rng.Intn(len(lits))]
		switch rng.Intn(12) {
		case 10:
			pats := []string{"'a%'", "'%b%'", "'_'", "'ab%'", "'A_C'", "''", "'%'", "'\\%'", "'%é'", "'a\\_b'", "'ab  '", "'%c '"}
			like := []string{"LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"}[rng.Intn(4)]
			return fmt.Sprintf("%s %s %s", []string{"tx", "vc", "ch"}[rng.Intn(3)], like, pats[rng.Intn(len(pats))])
		case 11:
			return fmt.Sprintf("%s IS %sNULL", c, []string{"", "NOT "}[rng.Intn(2)])
		case 0:
			return fmt.Sprintf("%s IN (%s, %s)", c, lit, lits[rng.Intn(len(lits))])
		case 1:
			return fmt.Sprintf("%s NOT IN (%s, %s)", c, lit, lits[rng.Intn(len(lits))])
		case 2:
			return fmt.Sprintf("%s BETWEEN %s AND %s", c, lit, lits[rng.Intn(len(lits))])
		case 3:
			return fmt.Sprintf("%s IS DISTINCT FROM %s", c, lit)
		case 4:
			return fmt.Sprintf("%s %s %s", lit, ops[rng.Intn(len(ops))], c)
		}
		return fmt.Sprintf("%s %s %s", c, ops[rng.Intn(len(ops))], lit)
	}
	var out []string
	for len(out) < n {
		switch rng.Intn(4) {
		case 0:
			out = append(out, atom())
		case 1:
			out = append(out, fmt.Sprintf("%s AND %s", atom(), atom()))
		case 2:
			out = append(out, fmt.Sprintf("%s OR NOT (%s)", atom(), atom()))
		default:
			out = append(out, fmt.Sprintf("NOT (%s OR %s) OR %s IS NULL", atom(), atom(), cols[rng.Intn(len(cols))]))
		}
	}
	return out
}
