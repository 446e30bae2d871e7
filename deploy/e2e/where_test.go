package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/shapes"
	"github.com/fanout/pipeline/fanout/shapestate"
	"github.com/fanout/pipeline/fanout/testenv"
)

// thingsTable has the column types of the richer where clauses.
const thingsTable = `
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE things (
	id int PRIMARY KEY, owner int, title text, price numeric, qty int, tags text[], nums int[],
	m mood, due date, at timestamptz, span interval, u uuid, doc jsonb, code varchar(8), grade char(2)
)`

// thingColumns is every column but span and grade, which shapes project
// away (their where clauses still read them): the snapshot session prints
// intervals in another style than pgoutput, and the oracle's ::text drops
// the padding of character(n) that the logs keep.
var thingColumns = []string{"id", "owner", "title", "price", "qty", "tags", "nums", "m", "due", "at", "u", "doc", "code"}

// richWheres are clauses fanoutctl shape add refused before issue 16.
var richWheres = []string{
	"lower(title) LIKE 'a%'",
	"upper(title) = 'BOX' OR title ILIKE '%CUP%'",
	"price * qty > 100",
	"qty % 3 = 0 OR qty IS NULL",
	"price / 3 > 2.5 AND -qty < -2",
	"m = 'happy'",
	"m >= 'ok'",
	"m IN ('sad', 'ok')",
	"m > 'sad'::mood", // the snapshot's search_path is pg_catalog: the cast is printed qualified
	"tags @> ARRAY['red']",
	"'blue' = ANY(tags)",
	"nums && '{1,2}'",
	"array_ndims(nums) = 1 AND cardinality(nums) > 2",
	"5 <> ALL(nums)",
	"due + 7 > '2024-06-01'",
	"at + interval '1 day' > '2024-06-01 00:00:00+00'",
	"at - '2024-01-01 00:00:00+00' < '100 days'",
	"span > '1 day'",
	"justify_hours(span) >= '2 days'",
	"coalesce(owner, 0) = 0",
	"concat(title, '-', owner) LIKE 'a%-1'",
	"title || code = 'axX1'",
	"price::int = 10",
	"CAST(qty AS text) = '4'",
	"u = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
	"doc = '{\"k\": 1}'",
	"doc IS NULL",
	"grade = 'a'",
	"greatest(qty, owner) > 5",
	"nullif(title, '') IS NOT NULL AND length(title) > 3",
	"CASE WHEN qty > 5 THEN 'many' ELSE 'few' END = 'many'",
	"(at AT TIME ZONE 'Europe/Paris')::date = '2024-03-01'",
}

// paramShape is a clause with $n and its values.
type paramShape struct {
	where  string
	params []string
}

var paramWheres = []paramShape{
	{"owner = $1", []string{"1"}},
	{"m = $1 AND price > $2", []string{"ok", "5"}},
	{"tags @> $1", []string{"{red}"}},
	{"due BETWEEN $1 AND $2", []string{"2024-03-01", "2024-06-30"}},
}

func TestRichWhereClausesEqualTheirQueries(t *testing.T) {
	s := newStack(t)
	s.exec(thingsTable)
	s.recordHistory("public.things")
	var defs []shapeDef
	for _, w := range richWheres {
		defs = append(defs, s.addShape("public.things", w, thingColumns...))
	}
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()

	s.loadThings()
	s.drain()
	for _, d := range defs {
		s.waitReady(d.handle, 2*time.Minute)
	}
	s.checkShapes(defs)
}

// TestParamWhereClausesEqualTheirQueries: shapes whose where clauses have
// $n parameters (Shape.Params) equal their queries with the values in place.
func TestParamWhereClausesEqualTheirQueries(t *testing.T) {
	s := newStack(t)
	s.exec(thingsTable)
	s.recordHistory("public.things")
	// fanoutctl creates the bus (and a shape without parameters to compare with).
	defs := []shapeDef{s.addShape("public.things", "owner = 1", thingColumns...)}
	for _, p := range paramWheres {
		defs = append(defs, s.addParamShape("public.things", p.where, p.params, thingColumns))
	}
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	s.loadThings()
	s.drain()
	for _, d := range defs {
		var st shapestate.State
		testenv.Eventually(s.t, 2*time.Minute, "shape "+d.handle+" to be ready", func() bool {
			st = s.shapeState(d.handle)
			return st.Phase == shapestate.Ready || st.Phase == shapestate.Failed
		})
		if st.Phase == shapestate.Failed {
			t.Fatalf("shape %s (%s) failed its snapshot: %s", d.handle, d.where, st.Error)
		}
	}
	s.checkShapes(defs)
}

// loadThings inserts rows, then updates that move rows between the shapes,
// deletes and primary-key changes.
func (s *stack) loadThings() {
	s.t.Helper()
	s.exec(`INSERT INTO things
		SELECT g, g % 4, (ARRAY['apple', 'Box', 'cup', 'a', ''])[g % 5 + 1], (g % 17) * 1.25, NULLIF(g % 9, 8),
			(ARRAY['{red}', '{blue,red}', '{}', '{green,NULL}'])[g % 4 + 1]::text[],
			(ARRAY['{1,2,3}', '{}', '{5,6}', '{7,8,9,10}'])[g % 4 + 1]::int[],
			(ARRAY['sad', 'ok', 'happy', NULL])[g % 4 + 1]::mood,
			'2024-01-01'::date + g * 3, '2024-01-01 00:00:00+00'::timestamptz + g * interval '13 hours',
			g * interval '7 hours', CASE WHEN g % 6 = 0 THEN 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid END,
			CASE g % 3 WHEN 0 THEN '{"k": 1}'::jsonb WHEN 1 THEN '{"k": 2}' END,
			CASE WHEN g % 2 = 0 THEN 'xX1' ELSE 'X' || g END, (ARRAY['a', 'b ', NULL])[g % 3 + 1]
		FROM generate_series(1, 120) g`)
	s.exec(`UPDATE things SET m = 'happy' WHERE id % 5 = 0`)                // into m = 'happy', out of m IN (...)
	s.exec(`UPDATE things SET qty = qty + 3 WHERE id % 7 = 0`)              // across price * qty and qty % 3
	s.exec(`UPDATE things SET tags = tags || 'red'::text WHERE id % 4 = 2`) // into tags @> ARRAY['red']
	s.exec(`UPDATE things SET nums = '{}' WHERE id % 11 = 0`)               // out of the array shapes
	s.exec(`UPDATE things SET due = due - 90, at = at - interval '60 days' WHERE id % 6 = 1`)
	s.exec(`UPDATE things SET title = 'apple', code = 'xX1', owner = 1 WHERE id % 10 = 3`)
	s.exec(`UPDATE things SET doc = NULL, span = '3 days' WHERE id % 8 = 0`)
	s.exec(`DELETE FROM things WHERE id % 13 = 0`)
	s.exec(`UPDATE things SET id = id + 1000 WHERE id IN (1, 2, 3)`)
}

// addParamShape stores a shape whose where clause has $n parameters the way
// shapes.Add stores one (fanoutctl has no --param yet), after checking it with
// match.CompileParams. Its def's where has the values substituted as quoted
// literals, which is how Postgres types a parameter given as text.
func (s *stack) addParamShape(table, where string, params []string, columns []string) shapeDef {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	schema, pk, err := shapes.LoadSchema(ctx, s.conn, table)
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := match.CompileParams(where, params, schema); err != nil {
		s.t.Fatalf("CompileParams(%q, %q): %v", where, params, err)
	}
	sh := &fanout.Shape{Handle: fanout.NewHandle(), Table: fanout.QualifiedTable(table), Where: where, Params: params,
		Columns: columns, PrimaryKey: pk, Schema: schema, CreatedAt: time.Now().UTC()}
	if err := sh.Validate(); err != nil {
		s.t.Fatal(err)
	}
	nc, err := nats.Connect(envValue(s.env, "FANOUT_NATS_URL="))
	if err != nil {
		s.t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		s.t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, fanout.ShapesBucket)
	if err != nil {
		s.t.Fatalf("open KV bucket %s (add a shape with fanoutctl first, which creates it): %v", fanout.ShapesBucket, err)
	}
	if _, err := kv.Create(ctx, sh.Handle, sh.Encode()); err != nil {
		s.t.Fatal(err)
	}
	if st, err := shapestate.Open(ctx, js); err == nil {
		shapestate.Swap(ctx, st, &shapestate.State{Handle: sh.Handle, Phase: shapestate.Creating}, 0)
	}
	sub := where
	for i := len(params); i >= 1; i-- {
		sub = strings.ReplaceAll(sub, fmt.Sprintf("$%d", i), "'"+strings.ReplaceAll(params[i-1], "'", "''")+"'")
	}
	return shapeDef{handle: sh.Handle, table: table, where: sub, columns: columns}
}

func envValue(env []string, prefix string) string {
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, prefix); ok {
			return v
		}
	}
	return ""
}
