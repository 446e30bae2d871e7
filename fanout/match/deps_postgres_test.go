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
	"github.com/fanout/pipeline/fanout/visibility"
)

// tagClient applies a shape's messages as @tanstack/electric-db-collection
// does: rows by key, each with its tags and active conditions; a move-out
// turns the matching conditions false and drops rows no disjunct keeps; a
// move-in turns them true. An update of a row it does not hold is an error
// here (the collection would drop it: the server must never send one).
type tagClient struct {
	pk        []string
	rows      map[string]fanout.Row
	tags      map[string][]string
	active    map[string][]bool
	disjuncts [][]int
}

func newTagClient(pk []string) *tagClient {
	return &tagClient{pk: pk, rows: map[string]fanout.Row{}, tags: map[string][]string{}, active: map[string][]bool{}}
}

func (c *tagClient) key(r fanout.Row) string { k, _ := rowKey(c.pk, r); return k }

func (c *tagClient) apply(ch fanout.Change) error {
	switch ch.Op {
	case fanout.OpInsert, fanout.OpUpdate:
		k := c.key(ch.Row)
		if ch.Old != nil {
			ok := c.key(ch.Old)
			if ok != k {
				c.rows[k], c.tags[k], c.active[k] = c.rows[ok], c.tags[ok], c.active[ok]
				delete(c.rows, ok)
				delete(c.tags, ok)
				delete(c.active, ok)
			}
		}
		prev, held := c.rows[k]
		if ch.Op == fanout.OpUpdate && !held {
			return fmt.Errorf("update of row %s, which the client does not hold", k)
		}
		row := fanout.Row{}
		for col, v := range prev {
			row[col] = v
		}
		for col, v := range ch.Row {
			row[col] = v
		}
		c.rows[k] = row
		if ch.Tags != nil {
			set := append([]string(nil), c.tags[k]...)
			for _, t := range ch.Tags {
				if !contains(set, t) {
					set = append(set, t)
				}
			}
			var kept []string
			for _, t := range set {
				if !contains(ch.RemovedTags, t) {
					kept = append(kept, t)
				}
			}
			c.tags[k] = kept
			if c.disjuncts == nil {
				for _, t := range ch.Tags {
					var d []int
					for i, slot := range strings.Split(t, "/") {
						if slot != "" {
							d = append(d, i)
						}
					}
					c.disjuncts = append(c.disjuncts, d)
				}
			}
		}
		if ch.Active != nil {
			c.active[k] = append([]bool(nil), ch.Active...)
		}
	case fanout.OpDelete:
		k := c.key(ch.Old)
		delete(c.rows, k)
		delete(c.tags, k)
		delete(c.active, k)
	case fanout.OpMoveOut, fanout.OpMoveIn:
		for _, p := range ch.Patterns {
			for k, tags := range c.tags {
				hit := false
				for _, t := range tags {
					if strings.Split(t, "/")[p.Pos] == p.Value {
						hit = true
					}
				}
				if !hit {
					continue
				}
				c.active[k][p.Pos] = ch.Op == fanout.OpMoveIn
				if ch.Op == fanout.OpMoveOut && !c.visible(k) {
					delete(c.rows, k)
					delete(c.tags, k)
					delete(c.active, k)
				}
			}
		}
	}
	return nil
}

func (c *tagClient) visible(k string) bool {
	for _, d := range c.disjuncts {
		all := true
		for _, p := range d {
			all = all && c.active[k][p]
		}
		if all {
			return true
		}
	}
	return false
}

// depTables are the tables of the dependency test (those of subTables).
const depTablesSQL = `
CREATE TABLE issues (id int PRIMARY KEY, project_id int, owner text, title text, big bigint);
CREATE TABLE members (id int PRIMARY KEY, user_id int, project_id bigint, role text, tags text[]);
CREATE TABLE projects (id int PRIMARY KEY, org text, archived boolean);
`

// TestDependenciesFollowTheStream runs random transactions on the outer
// and inner tables, routes their changes through the registry in commit
// order (move-in rows read from Postgres at the transaction's end), and
// checks after every transaction that each shape's messages, applied as
// electric-db-collection applies them (tags, active conditions, move
// events), give exactly SELECT ... WHERE <clause> in Postgres.
func TestDependenciesFollowTheStream(t *testing.T) {
	pgsrv := testenv.StartPostgres(t)
	conn := pgsrv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pgsrv.Exec(t, conn, depTablesSQL)

	clauses := []struct {
		where  string
		params []string
	}{
		{"project_id IN (SELECT project_id FROM members WHERE user_id = $1)", []string{"1"}},
		{"project_id IN (SELECT project_id FROM members WHERE user_id = $1)", []string{"2"}},
		{"project_id NOT IN (SELECT project_id FROM members WHERE role = 'gone' AND project_id IS NOT NULL)", nil},
		{"title = 'x' OR project_id IN (SELECT id FROM projects WHERE NOT archived)", nil},
		{"project_id IN (SELECT project_id FROM members WHERE project_id IN (SELECT id FROM projects WHERE org = $1))", []string{"a"}},
		{"(project_id, owner) IN (SELECT project_id, role FROM members)", nil},
		{"project_id IN (SELECT id FROM projects WHERE archived) AND big IN (SELECT project_id FROM members WHERE user_id = 2)", nil},
		{"NOT (title = 'y' AND project_id IN (SELECT project_id FROM members WHERE role = 'dev'))", nil},
	}
	var moveIns, moveOuts, messages, rows, rotations int
	for seed := int64(1); seed <= 16; seed++ {
		rnd := rand.New(rand.NewSource(seed))
		pgsrv.Exec(t, conn, "TRUNCATE issues, members, projects")
		model := map[string]map[int]fanout.Row{"issues": {}, "members": {}, "projects": {}}
		for i := 0; i < 60; i++ {
			randomDepOp(ctx, t, conn, rnd, model) // the starting data
		}
		r := NewRegistry()
		clients := map[string]*tagClient{}
		for i, c := range clauses {
			h := fmt.Sprintf("s%d", i)
			if err := r.Add(issuesShape(h, c.where, c.params...)); err != nil {
				t.Fatal(err)
			}
		}
		loadFromPostgres(ctx, t, conn, r)
		r.BeginTxn(1000, 2000)
		r.TakeReady()
		for h := range r.shapes {
			clients[h] = initialClient(ctx, t, conn, r, h)
		}
		type delayedMoveIn struct {
			mi MoveIn
			at int
		}
		var due []delayedMoveIn
		pendingMsgs := routed{}
		for txn := 0; txn < 80; txn++ {
			rt := routed{}
			r.BeginTxn(uint32(1001+txn), uint64(2001+txn))
			for n := 1 + rnd.Intn(3); n > 0; n-- {
				if c := randomDepOp(ctx, t, conn, rnd, model); c != nil {
					r.Route(*c, rt.emit)
				}
			}
			// Move-ins are placed after 0 to 3 more transactions (rows
			// read then): windows span transactions, as under load.
			for _, mi := range r.TakeMoveIns() {
				due = append(due, delayedMoveIn{mi, txn + rnd.Intn(4)})
			}
			kept := due[:0]
			for _, d := range due {
				if d.at > txn && txn < 79 {
					kept = append(kept, d)
					continue
				}
				moveIns++
				rt[d.mi.Handle] = append(rt[d.mi.Handle], moveInRows(ctx, t, conn, r, d.mi)...)
				r.MoveInDone(d.mi.Handle, d.mi.Sub, d.mi.Tuples)
			}
			due = kept
			if len(due) > 0 {
				// A reader sees nothing inside a window: compare at the
				// transactions where none is open.
				for h, ch := range rt {
					pendingMsgs[h] = append(pendingMsgs[h], ch...)
				}
				continue
			}
			for h, ch := range pendingMsgs {
				rt[h] = append(ch, rt[h]...)
			}
			clear(pendingMsgs)
			for _, rot := range r.TakeRotations() {
				rotations++
				t.Logf("seed %d txn %d: shape %s rotated: %s", seed, txn, rot.Handle, rot.Reason)
				clients[rot.Handle] = initialClient(ctx, t, conn, r, rot.Handle)
				delete(rt, rot.Handle)
			}
			for h, c := range clients {
				for _, ch := range rt[h] {
					messages++
					if ch.Op == fanout.OpMoveOut {
						moveOuts++
					}
					if err := c.apply(ch); err != nil {
						t.Fatalf("seed %d txn %d shape %s (%s): %v", seed, txn, h, r.shapes[h].shape.Where, err)
					}
				}
				want := selectRows(ctx, t, conn, r.shapes[h].shape)
				if got := clientText(c); got != want {
					t.Fatalf("seed %d txn %d shape %s (%s):\nclient   %s\npostgres %s\nmessages %+v", seed, txn, h, r.shapes[h].shape.Where, got, want, rt[h])
				}
				rows += len(c.rows)
			}
		}
	}
	t.Logf("%d messages (%d move-ins read, %d move-out events, %d rotations); %d shape rows compared", messages, moveIns, moveOuts, rotations, rows)
	if moveIns == 0 || moveOuts == 0 {
		t.Fatalf("the workload moved nothing in or out: it checks too little")
	}
}

// randomDepOp changes one random row of one of the tables, in Postgres and
// in the model, and returns the change as pgoutput would carry it under
// REPLICA IDENTITY FULL.
func randomDepOp(ctx context.Context, t *testing.T, conn *pgx.Conn, rnd *rand.Rand, model map[string]map[int]fanout.Row) *RowChange {
	t.Helper()
	maybe := func(v string) *string {
		if rnd.Intn(8) == 0 {
			return nil
		}
		return &v
	}
	tables := []string{"issues", "members", "members", "projects"}
	table := tables[rnd.Intn(len(tables))]
	id := 1 + rnd.Intn(12)
	var row fanout.Row
	switch table {
	case "issues":
		row = fanout.Row{"id": str(fmt.Sprint(id)), "project_id": maybe(fmt.Sprint(rnd.Intn(6))), "owner": maybe([]string{"dev", "gone", "o"}[rnd.Intn(3)]),
			"title": maybe([]string{"x", "y", "z"}[rnd.Intn(3)]), "big": maybe(fmt.Sprint(rnd.Intn(6)))}
	case "members":
		row = fanout.Row{"id": str(fmt.Sprint(id)), "user_id": maybe(fmt.Sprint(1 + rnd.Intn(3))), "project_id": maybe(fmt.Sprint(rnd.Intn(6))),
			"role": maybe([]string{"dev", "gone"}[rnd.Intn(2)]), "tags": nil}
	default:
		row = fanout.Row{"id": str(fmt.Sprint(rnd.Intn(6))), "org": maybe([]string{"a", "b"}[rnd.Intn(2)]), "archived": maybe([]string{"true", "false"}[rnd.Intn(2)])}
		id = atoi(*row["id"])
	}
	old := model[table][id]
	cols := sortedCols(row)
	if rnd.Intn(4) == 0 && old != nil { // delete
		if _, err := conn.Exec(ctx, "DELETE FROM "+table+" WHERE id = $1", id); err != nil {
			t.Fatal(err)
		}
		delete(model[table], id)
		return &RowChange{Table: "public." + table, Op: fanout.OpDelete, Old: old, OldFull: true}
	}
	args := make([]any, len(cols))
	for i, c := range cols {
		if row[c] == nil {
			args[i] = nil
		} else {
			args[i] = *row[c]
		}
	}
	ph := make([]string, len(cols))
	sets := make([]string, len(cols))
	for i, c := range cols {
		ph[i] = fmt.Sprintf("$%d", i+1)
		sets[i] = fmt.Sprintf("%s = $%d", c, i+1)
	}
	if old == nil {
		if _, err := conn.Exec(ctx, "INSERT INTO "+table+" ("+strings.Join(cols, ",")+") VALUES ("+strings.Join(ph, ",")+")", args...); err != nil {
			t.Fatal(err)
		}
		model[table][id] = row
		return &RowChange{Table: "public." + table, Op: fanout.OpInsert, New: row}
	}
	if _, err := conn.Exec(ctx, "UPDATE "+table+" SET "+strings.Join(sets, ",")+" WHERE id = "+fmt.Sprint(id), args...); err != nil {
		t.Fatal(err)
	}
	model[table][id] = row
	return &RowChange{Table: "public." + table, Op: fanout.OpUpdate, Old: old, OldFull: true, New: row}
}

func atoi(s string) int { var n int; fmt.Sscan(s, &n); return n }

func sortedCols(r fanout.Row) []string {
	var out []string
	for c := range r {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// loadFromPostgres answers the registry's load requests with real queries
// (LoadSQL) in a snapshot that sees everything committed so far.
func loadFromPostgres(ctx context.Context, t *testing.T, conn *pgx.Conn, r *Registry) {
	t.Helper()
	for _, req := range r.TakeLoads() {
		l := DepLoad{Subqueries: req.Subqueries, Rows: map[string][]fanout.Row{}, Snapshot: visibility.Snapshot{Xmin: 1000, Xmax: 1000}, WalLSN: 1500}
		for _, s := range req.Subqueries {
			l.Rows[s.ID] = readRows(ctx, t, conn, s.LoadSQL())
		}
		r.Loaded(l)
	}
}

// initialClient is a client holding the shape's rows as its initial
// snapshot gives them: SELECT with the clause, tags and active conditions.
func initialClient(ctx context.Context, t *testing.T, conn *pgx.Conn, r *Registry, h string) *tagClient {
	e := r.shapes[h]
	c := newTagClient(e.shape.PrimaryKey)
	for _, row := range queryShape(ctx, t, conn, e.shape, "") {
		ch := fanout.Change{Op: fanout.OpInsert, Row: row}
		r.decorate(e, &ch, row, nil)
		if err := c.apply(ch); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// moveInRows reads a move-in's rows as ingest does (the shape's clause and
// MoveInSQL) and turns them into the messages placed after the transaction.
func moveInRows(ctx context.Context, t *testing.T, conn *pgx.Conn, r *Registry, mi MoveIn) []fanout.Change {
	e := r.shapes[mi.Handle]
	types := make([]string, len(mi.Sub.Left))
	for i, l := range mi.Sub.Left {
		for _, col := range e.shape.Schema {
			if col.Name == l {
				types[i] = col.Type
			}
		}
	}
	cond, args, ok := mi.Sub.MoveInSQL(mi.Tuples, len(e.shape.Params)+1, types)
	if !ok {
		cond = "true"
	}
	rows := queryShape(ctx, t, conn, e.shape, cond, args...)
	out := r.MoveInRows(mi.Handle, rows)
	return append(out, fanout.Change{Op: fanout.OpSnapshotEnd, Snapshot: &visibility.Snapshot{}})
}

// queryShape reads the shape's rows (every column) with Postgres
// evaluating its clause, and extra conditions.
func queryShape(ctx context.Context, t *testing.T, conn *pgx.Conn, s *fanout.Shape, extra string, extraArgs ...string) []fanout.Row {
	t.Helper()
	q := "SELECT * FROM " + strings.TrimPrefix(s.Table, "public.") + " WHERE (" + s.Where + ")"
	if extra != "" {
		q += " AND " + extra
	}
	var args []any
	for _, p := range s.Params {
		args = append(args, p)
	}
	for _, a := range extraArgs {
		args = append(args, a)
	}
	rows, err := conn.Query(ctx, q+" ORDER BY id", append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var out []fanout.Row
	for rows.Next() {
		row := fanout.Row{}
		for i, raw := range rows.RawValues() {
			name := rows.FieldDescriptions()[i].Name
			if raw == nil {
				row[name] = nil
			} else {
				v := string(raw)
				row[name] = &v
			}
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return out
}

func selectRows(ctx context.Context, t *testing.T, conn *pgx.Conn, s *fanout.Shape) string {
	var parts []string
	for _, row := range queryShape(ctx, t, conn, s, "") {
		parts = append(parts, rowLine(row))
	}
	return strings.Join(parts, " | ")
}

func clientText(c *tagClient) string {
	var rows []fanout.Row
	for _, r := range c.rows {
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool { return atoi(*rows[i]["id"]) < atoi(*rows[j]["id"]) })
	var parts []string
	for _, r := range rows {
		parts = append(parts, rowLine(r))
	}
	return strings.Join(parts, " | ")
}

func rowLine(r fanout.Row) string {
	var parts []string
	for _, c := range sortedCols(r) {
		parts = append(parts, c+"="+deref(r[c]))
	}
	return strings.Join(parts, ",")
}
