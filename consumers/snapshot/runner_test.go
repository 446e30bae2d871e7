package snapshot

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapes"
	"github.com/fanout/pipeline/fanout/shapestate"
	"github.com/fanout/pipeline/fanout/testenv"
)

// burstEnv is a runner in process over a real Postgres and NATS; the test
// plays ingest by writing the routing hand-off.
type burstEnv struct {
	t    *testing.T
	ctx  context.Context
	pg   *testenv.Postgres
	conn *pgx.Conn
	bus  *fanout.Bus
	dir  string
	reg  *prometheus.Registry
	r    *Runner
}

func startRunner(t *testing.T, cfg func(*configs.Snapshot), pgOpts ...testenv.PostgresOption) *burstEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e := &burstEnv{t: t, ctx: ctx, pg: testenv.StartPostgres(t, pgOpts...), dir: t.TempDir(), reg: prometheus.NewRegistry()}
	e.conn = e.pg.Connect(t)
	ns := testenv.StartNATS(t)
	e.bus = ns.Bus(t)
	c, err := configs.LoadSnapshotConfig()
	if err != nil {
		t.Fatal(err)
	}
	c.Snapshot.MaxAttempts = 1
	if cfg != nil {
		cfg(&c.Snapshot)
	}
	e.r, err = New(ctx, e.pg.URL, c.Snapshot, Deps{JS: e.bus.JS, Shapes: e.bus.Shapes, Dir: e.dir, ID: "t1", Replicas: 1,
		Reg: e.reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { e.r.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return e
}

// route writes ingest's hand-off: the shapes up to last are routed.
func (e *burstEnv) route(last string) {
	e.t.Helper()
	entry, err := e.bus.Shapes.Get(e.ctx, last)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := shapestate.PutRouting(e.ctx, e.r.state, shapestate.Routing{Revision: entry.Revision(), At: time.Now()}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *burstEnv) waitEnded(handles []string) map[string]*shapestate.State {
	e.t.Helper()
	out := map[string]*shapestate.State{}
	testenv.Eventually(e.t, 2*time.Minute, "every snapshot to end", func() bool {
		for _, h := range handles {
			st, _, err := shapestate.Get(e.ctx, e.r.state, h)
			if err != nil || st.Phase != shapestate.Ready && st.Phase != shapestate.Failed {
				return false
			}
			out[h] = st
		}
		return true
	})
	return out
}

// rowsOf renders a shape's snapshot rows, sorted.
func (e *burstEnv) rowsOf(h string) []string {
	e.t.Helper()
	snap, err := shapelog.CurrentSnapshot(e.dir, h)
	if err != nil || snap == nil {
		e.t.Fatalf("snapshot of %s: %v, %v", h, snap, err)
	}
	var out []string
	if err := snap.EachRow(func(r fanout.Row) error { out = append(out, render(r)); return nil }); err != nil {
		e.t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// query renders the rows of SELECT cols FROM items WHERE where, sorted.
func (e *burstEnv) query(cols, where string, args ...any) []string {
	e.t.Helper()
	q := "SELECT " + cols + " FROM items"
	if where != "" {
		q += " WHERE " + where
	}
	rows, err := e.conn.Query(e.ctx, q, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	names := strings.Split(cols, ", ")
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			e.t.Fatal(err)
		}
		r := fanout.Row{}
		for i, v := range vals {
			if v == nil {
				r[names[i]] = nil
				continue
			}
			s := fmt.Sprint(v)
			r[names[i]] = &s
		}
		out = append(out, render(r))
	}
	slices.Sort(out)
	return out
}

// New shapes of one table that arrive at once are read in one group: one
// transaction, one query. Each ends with exactly its query's rows and the
// same pg_current_snapshot(); a shape whose clause fails in Postgres fails
// alone, after the group falls back to one snapshot per shape.
func TestBurstOfShapesIsReadInOneGroupAndEachIsExact(t *testing.T) {
	e := startRunner(t, nil)
	e.pg.Exec(t, e.conn, `CREATE TABLE items (id bigint PRIMARY KEY, owner int, title text)`)
	e.pg.Exec(t, e.conn, `INSERT INTO items SELECT g, CASE WHEN g % 97 = 0 THEN NULL ELSE g % 50 END, CASE WHEN g % 7 = 0 THEN NULL ELSE 'title ' || g END FROM generate_series(1, 20000) g`)
	type def struct {
		where   string
		params  []string
		columns []string
		query   string // the expected rows' where clause
	}
	var defs []def
	for i := range 40 {
		defs = append(defs, def{where: fmt.Sprintf("owner = %d", i), query: fmt.Sprintf("owner = %d", i)})
	}
	defs = append(defs,
		def{where: "owner = $1", params: []string{"41"}, query: "owner = 41"},
		def{where: "title LIKE $1 AND owner < $2", params: []string{"title 1%", "10"}, query: "title LIKE 'title 1%' AND owner < 10"},
		def{where: "owner IS NULL", query: "owner IS NULL"},
		def{where: "owner = 42", columns: []string{"id", "title"}, query: "owner = 42"},
	)
	var handles []string
	for _, d := range defs {
		s, err := shapes.Add(e.ctx, e.bus, e.conn, "public.items", d.where, d.params, d.columns)
		if err != nil {
			t.Fatal(err)
		}
		handles = append(handles, s.Handle)
	}
	e.route(handles[len(handles)-1])
	states := e.waitEnded(handles)
	first := states[handles[0]].Snapshot.String()
	for i, d := range defs {
		st := states[handles[i]]
		if st.Phase != shapestate.Ready {
			t.Fatalf("shape %q: %s (%s)", d.where, st.Phase, st.Error)
		}
		if st.Snapshot.String() != first {
			t.Errorf("shape %q read at snapshot %s, the group's first at %s", d.where, st.Snapshot, first)
		}
		cols := "id, owner, title"
		if d.columns != nil {
			cols = "id, title"
		}
		got, want := e.rowsOf(handles[i]), e.query(cols, d.query)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("shape %q: %d rows, its query %d", d.where, len(got), len(want))
		}
	}
	if g, s := e.metric("fanout_snapshot_groups_total"), e.metric("fanout_snapshot_group_splits_total"); g != 1 || s != 0 {
		t.Errorf("%v groups, %v split, for %d shapes that arrived at once; want 1 group, not split", g, s, len(defs))
	}

	// A clause Postgres fails on (division by zero at owner = 7) in a
	// group: its shape fails alone, the others are ready.
	var more []string
	for _, w := range []string{"owner = 1", "100 / (owner - 7) > 1", "owner = 2"} {
		s, err := shapes.Add(e.ctx, e.bus, e.conn, "public.items", w, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		more = append(more, s.Handle)
	}
	e.route(more[len(more)-1])
	states = e.waitEnded(more)
	for i, h := range more {
		want := shapestate.Ready
		if i == 1 {
			want = shapestate.Failed
		}
		if states[h].Phase != want {
			t.Errorf("shape %d: %s (%s), want %s", i, states[h].Phase, states[h].Error, want)
		}
	}
	if s := e.metric("fanout_snapshot_group_splits_total"); s != 1 {
		t.Errorf("%v groups split, want 1", s)
	}
	if !strings.Contains(states[more[1]].Error, "division by zero") {
		t.Errorf("failed shape's error %q does not say why", states[more[1]].Error)
	}
}

// metric reads a counter of the runner's registry.
func (e *burstEnv) metric(name string) float64 {
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return 0
}

// Clauses of every kind, added at once, are read by one unsplit group (the
// union of their where clauses is valid SQL and Postgres runs it), and
// each snapshot is exactly its query.
func TestUnionOfRichClausesIsOneQuery(t *testing.T) {
	e := startRunner(t, nil)
	e.pg.Exec(t, e.conn, `CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')`)
	e.pg.Exec(t, e.conn, `CREATE TABLE items (id int PRIMARY KEY, owner int, title text, price numeric, tags text[], m mood, due date, u uuid, code varchar(8))`)
	e.pg.Exec(t, e.conn, `INSERT INTO items SELECT g, g % 5, CASE WHEN g % 3 = 0 THEN 'a' || g ELSE 'B' || g END, g / 7.0,
		CASE WHEN g % 2 = 0 THEN ARRAY['red'] ELSE ARRAY['blue', 'x'] END, (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood,
		date '2024-05-01' + g, CASE WHEN g = 7 THEN 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid END, 'c' || (g % 4)
		FROM generate_series(1, 3000) g`)
	type def struct {
		where  string
		params []string
		query  string
	}
	defs := []def{
		{"lower(title) LIKE 'a%'", nil, "lower(title) LIKE 'a%'"},
		{"price * owner > 100", nil, "price * owner > 100"},
		{"m = 'happy'", nil, "m = 'happy'"},
		{"m = $1", []string{"ok"}, "m = 'ok'"},
		{"tags @> ARRAY['red'] AND owner = $1", []string{"2"}, "tags @> ARRAY['red'] AND owner = 2"},
		{"'blue' = ANY(tags)", nil, "'blue' = ANY(tags)"},
		{"due + 7 > '2024-12-01'", nil, "due + 7 > '2024-12-01'"},
		{"u = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", nil, "u = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'"},
		{"code = $1", []string{"c3"}, "code = 'c3'"},
		{"code = 'c1'", nil, "code = 'c1'"},
		{"owner = 1", nil, "owner = 1"},
		{"3 = owner", nil, "owner = 3"},
		{"price = 2.0", nil, "price = 2.0"},
		{"id IN (1, 2, 3) OR title IS NULL", nil, "id IN (1, 2, 3) OR title IS NULL"},
	}
	var handles []string
	for _, d := range defs {
		s, err := shapes.Add(e.ctx, e.bus, e.conn, "public.items", d.where, d.params, nil)
		if err != nil {
			t.Fatalf("%s: %v", d.where, err)
		}
		handles = append(handles, s.Handle)
	}
	e.route(handles[len(handles)-1])
	states := e.waitEnded(handles)
	cols := "id, owner, title, price, tags, m, due, u, code"
	for i, d := range defs {
		if st := states[handles[i]]; st.Phase != shapestate.Ready {
			t.Fatalf("shape %q: %s (%s)", d.where, st.Phase, st.Error)
		}
		got, want := e.rowsOf(handles[i]), e.textQuery(cols, d.query)
		if strings.Join(got, "\n") != strings.Join(want, "\n") || len(want) == 0 {
			t.Errorf("shape %q: %d rows, its query %d", d.where, len(got), len(want))
		}
	}
	if g, s := e.metric("fanout_snapshot_groups_total"), e.metric("fanout_snapshot_group_splits_total"); g != 1 || s != 0 {
		t.Errorf("%v groups, %v split; want 1 group, not split", g, s)
	}
}

// textQuery renders SELECT cols FROM items WHERE where as Postgres prints
// the values (text), sorted.
func (e *burstEnv) textQuery(cols, where string) []string {
	e.t.Helper()
	names := strings.Split(cols, ", ")
	casts := make([]string, len(names))
	for i, n := range names {
		casts[i] = n + "::text"
	}
	rows, err := e.conn.Query(e.ctx, "SELECT "+strings.Join(casts, ", ")+" FROM items WHERE "+where)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals := make([]*string, len(names))
		ptrs := make([]any, len(names))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			e.t.Fatal(err)
		}
		r := fanout.Row{}
		for i, n := range names {
			r[n] = vals[i]
		}
		out = append(out, render(r))
	}
	slices.Sort(out)
	return out
}
