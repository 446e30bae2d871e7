package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// The tables of the subquery tests: issues of projects, and who is a
// member of which project.
const subqueryTablesSQL = `
CREATE TABLE projects (id int PRIMARY KEY, org text NOT NULL, archived boolean NOT NULL DEFAULT false);
CREATE TABLE members (id int PRIMARY KEY, user_id int NOT NULL, project_id int NOT NULL, role text NOT NULL DEFAULT 'dev');
CREATE TABLE issues (id int PRIMARY KEY, project_id int, title text, owner_id int);
`

// recordSubqueryHistory records every change of tables in the history
// (recordHistory; one writer: commit order), and makes the oracle's
// copies of them, which checkSubqueryLog replays it into.
func (s *stack) recordSubqueryHistory(tables ...string) {
	s.t.Helper()
	s.exec(`CREATE SCHEMA oracle`)
	for _, t := range tables {
		s.recordHistory(t)
		s.exec(`CREATE TABLE oracle.` + t + ` (LIKE public.` + t + ` INCLUDING ALL)`)
	}
}

// subqueryShapes are the clauses of the test: a member's projects, nested,
// a disjunction with a plain condition, NOT IN.
var subqueryShapes = []string{
	"project_id IN (SELECT project_id FROM members WHERE user_id = 1)",
	"project_id IN (SELECT project_id FROM members WHERE user_id = 2 AND project_id IN (SELECT id FROM projects WHERE NOT archived))",
	"title = 'pinned' OR project_id IN (SELECT id FROM projects WHERE archived)",
	"project_id NOT IN (SELECT project_id FROM members WHERE role = 'banned')",
}

// subqueryWorkload runs n random transactions on one connection: inner
// conditions flipping, issues moving between projects, members joining and
// leaving, and transactions that change an inner row and insert issues for it.
func (s *stack) subqueryWorkload(rnd *rand.Rand, n int, nextIssue *int) {
	s.t.Helper()
	for i := 0; i < n; i++ {
		var stmts []string
		switch rnd.Intn(7) {
		case 0: // flip an inner condition
			stmts = append(stmts, fmt.Sprintf("UPDATE projects SET archived = NOT archived WHERE id = %d", 1+rnd.Intn(6)))
		case 1: // move an issue to another project
			stmts = append(stmts, fmt.Sprintf("UPDATE issues SET project_id = %d WHERE id = %d", 1+rnd.Intn(6), 1+rnd.Intn(*nextIssue)))
		case 2: // a member joins
			stmts = append(stmts, fmt.Sprintf("INSERT INTO members VALUES (%d, %d, %d) ON CONFLICT (id) DO UPDATE SET project_id = EXCLUDED.project_id", 1+rnd.Intn(20), 1+rnd.Intn(3), 1+rnd.Intn(6)))
		case 3: // a member leaves
			stmts = append(stmts, fmt.Sprintf("DELETE FROM members WHERE id = %d", 1+rnd.Intn(20)))
		case 4: // a member's role changes (NOT IN)
			stmts = append(stmts, fmt.Sprintf("UPDATE members SET role = '%s' WHERE id = %d", []string{"dev", "banned"}[rnd.Intn(2)], 1+rnd.Intn(20)))
		case 5: // an inner row and outer rows for it, in one transaction
			p := 1 + rnd.Intn(6)
			stmts = append(stmts, fmt.Sprintf("INSERT INTO members VALUES (%d, 1, %d) ON CONFLICT (id) DO UPDATE SET user_id = 1, project_id = EXCLUDED.project_id", 1+rnd.Intn(20), p))
			for k := 0; k < 1+rnd.Intn(3); k++ {
				*nextIssue++
				stmts = append(stmts, fmt.Sprintf("INSERT INTO issues VALUES (%d, %d, 't%d', 1)", *nextIssue, p, *nextIssue))
			}
		default: // plain changes of issues
			*nextIssue++
			stmts = append(stmts, fmt.Sprintf("INSERT INTO issues VALUES (%d, %d, '%s', %d)", *nextIssue, 1+rnd.Intn(6), []string{"a", "pinned", "b"}[rnd.Intn(3)], rnd.Intn(3)),
				fmt.Sprintf("UPDATE issues SET title = '%s' WHERE id = %d", []string{"a", "pinned"}[rnd.Intn(2)], 1+rnd.Intn(*nextIssue)))
		}
		s.writeTx(stmts...)
	}
}

// startSubqueryStack starts the stack of the subquery tests: the tables,
// their history recorded and their first rows, two consumers, ingest, the
// HTTP API, and subqueryShapes added and snapshotted.
func startSubqueryStack(t *testing.T) (*stack, string, []shapeDef) {
	s := newStack(t)
	s.exec(subqueryTablesSQL)
	s.recordSubqueryHistory("projects", "members", "issues")
	s.exec(`INSERT INTO projects SELECT g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, g % 3 = 0 FROM generate_series(1, 6) g`)
	s.exec(`INSERT INTO members SELECT g, 1 + g % 3, 1 + g % 6 FROM generate_series(1, 10) g`)
	s.exec(`INSERT INTO issues SELECT g, 1 + g % 6, CASE WHEN g % 5 = 0 THEN 'pinned' ELSE 'a' END, g % 3 FROM generate_series(1, 40) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.startConsumer("c2")
	s.startIngest()
	s.waitSlot()
	base := s.startShapeAPI()
	var defs []shapeDef
	for _, w := range subqueryShapes {
		defs = append(defs, s.addShape("public.issues", w))
	}
	for _, d := range defs {
		s.shapeRows(d.handle) // served: its snapshot is taken
	}
	return s, base, defs
}

// checkSubqueryShapes checks every shape's log against the history, then
// fanoutctl shape rows (Materialize) and the HTTP API against the query now.
func (s *stack) checkSubqueryShapes(t *testing.T, base string, defs []shapeDef) {
	t.Helper()
	for _, d := range defs {
		s.checkSubqueryLog(d)
		if got, want := renderRows(s.shapeRows(d.handle)), renderRows(s.expectedRows(d.table, d.where, nil)); got != want {
			t.Errorf("shape %s (%s): shape rows differ from SELECT:\n%s--- SELECT\n%s", d.handle, d.where, got, want)
		}
		tagged, plain := syncSubqueryShape(t, base, d.where)
		want := renderRows(s.expectedRows(d.table, d.where, nil))
		if tagged != want || plain != want {
			t.Errorf("HTTP API, shape %s: applied with tags:\n%s\napplied as a plain client:\n%s\n--- SELECT\n%s", d.where, tagged, plain, want)
		}
	}
}

// TestSubqueryShapesFollowHistory: shapes with subqueries under random
// transactions on their own and their subqueries' tables. After each
// transaction of a shape's log (at every point a reader may see), applying
// the log as electric-db-collection does (tags, move events) and as a plain
// client does (row changes only) both give exactly SELECT ... WHERE
// <clause> over the tables as that transaction left them (replayed from a
// recorded history); and the HTTP API serves the same.
func TestSubqueryShapesFollowHistory(t *testing.T) {
	s, base, defs := startSubqueryStack(t)
	rnd := rand.New(rand.NewSource(1))
	next := 40
	s.subqueryWorkload(rnd, 150, &next)
	s.drain()
	s.checkSubqueryShapes(t, base, defs)
}

// TestSubqueryShapesSurviveKills: the same workload and checks as
// TestSubqueryShapesFollowHistory, with ingest and a consumer SIGKILLed
// while transactions on the inner and outer tables commit, and started
// again: ingest rebuilds the subqueries' results at its session start and
// rewinds them to where the stream resumes; a consumer's partitions move to
// the other and back. Every shape's log still follows the history at every
// point a reader may see, and the API serves exactly the query.
func TestSubqueryShapesSurviveKills(t *testing.T) {
	s, base, defs := startSubqueryStack(t)
	rnd := rand.New(rand.NewSource(2))
	next := 40
	for round, victim := range []string{"ingest", "c1", "ingest", "c2", "ingest"} {
		// The kill lands while the round's transactions commit (the
		// workload runs on this goroutine: it may fail the test).
		killed := make(chan struct{})
		go func() {
			defer close(killed)
			time.Sleep(time.Duration(100+50*round) * time.Millisecond)
			s.procs[victim].Kill()
		}()
		s.subqueryWorkload(rnd, 40, &next)
		<-killed
		t.Logf("round %d: killed %s during the workload", round, victim)
		if victim == "ingest" {
			s.startIngest()
		} else {
			s.startConsumer(victim)
		}
	}
	s.subqueryWorkload(rnd, 20, &next)
	s.drain()
	// Ingest replaces the shapes with subqueries when it starts a session
	// again (their move-ins cannot be sent again identically): each is
	// followed to its replacement, which must be exact.
	for i, d := range defs {
		defs[i] = s.replacementOf(d)
		s.waitReady(defs[i].handle, 2*time.Minute)
	}
	s.drain()
	s.checkSubqueryShapes(t, base, defs)
}

// replacementOf is the shape that serves d's definition now: d itself, or
// the shape that replaced it (a rotation), once d is gone.
func (s *stack) replacementOf(d shapeDef) shapeDef {
	s.t.Helper()
	var out shapeDef
	testenv.Eventually(s.t, time.Minute, "one shape of "+d.where, func() bool {
		stdout, _, err := testenv.Run(s.t, "fanoutctl", []string{"shape", "ls", "--json"}, s.env...)
		if err != nil {
			return false
		}
		var list []struct {
			Handle string `json:"handle"`
			Table  string `json:"table"`
			Where  string `json:"where"`
		}
		if json.Unmarshal([]byte(stdout), &list) != nil {
			return false
		}
		n := 0
		for _, l := range list {
			if l.Table == fanout.QualifiedTable(d.table) && l.Where == d.where {
				n++
				out = shapeDef{handle: l.Handle, table: d.table, where: d.where, columns: d.columns}
			}
		}
		return n == 1
	})
	return out
}

// checkSubqueryLog replays d's log (after its snapshot) and, at every point
// a reader may see, compares both clients' rows with the clause evaluated
// over the oracle's tables at that transaction.
func (s *stack) checkSubqueryLog(d shapeDef) {
	s.t.Helper()
	ctx := context.Background()
	s.exec(`TRUNCATE oracle.projects, oracle.members, oracle.issues`)
	type hist struct {
		xid       int64
		tbl, op   string
		old, new_ []byte
	}
	rows, err := s.conn.Query(ctx, `SELECT h.xid, c.relname, h.op, h.old, h.new FROM `+historyTable+` h JOIN pg_class c ON c.oid = h.tbl ORDER BY h.seq`)
	if err != nil {
		s.t.Fatal(err)
	}
	var history []hist
	for rows.Next() {
		var h hist
		if err := rows.Scan(&h.xid, &h.tbl, &h.op, &h.old, &h.new_); err != nil {
			s.t.Fatal(err)
		}
		history = append(history, h)
	}
	rows.Close()
	applied := 0
	// applyThrough replays the history through transaction xid (32-bit);
	// false when it is not in the history.
	applyThrough := func(xid uint32) bool {
		end := -1
		for i := applied; i < len(history); i++ {
			if uint32(history[i].xid) == xid {
				end = i
			}
		}
		if end < 0 {
			return false
		}
		for ; applied <= end; applied++ {
			h := history[applied]
			switch h.op {
			case "insert":
				s.exec(`INSERT INTO oracle.`+h.tbl+` SELECT * FROM jsonb_populate_record(NULL::oracle.`+h.tbl+`, $1)`, h.new_)
			case "update":
				s.exec(`DELETE FROM oracle.`+h.tbl+` WHERE id = ($1::jsonb->>'id')::int`, h.old)
				s.exec(`INSERT INTO oracle.`+h.tbl+` SELECT * FROM jsonb_populate_record(NULL::oracle.`+h.tbl+`, $1)`, h.new_)
			case "delete":
				s.exec(`DELETE FROM oracle.`+h.tbl+` WHERE id = ($1::jsonb->>'id')::int`, h.old)
			case "truncate":
				s.exec(`TRUNCATE oracle.` + h.tbl)
			}
		}
		return true
	}
	expected := func() string {
		tx, err := s.conn.Begin(ctx)
		if err != nil {
			s.t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, "SET LOCAL search_path TO oracle"); err != nil {
			s.t.Fatal(err)
		}
		r, err := tx.Query(ctx, "SELECT id::text, project_id::text, title, owner_id::text FROM issues WHERE "+d.where)
		if err != nil {
			s.t.Fatal(err)
		}
		var out []row
		for r.Next() {
			var id, p, title, owner *string
			if err := r.Scan(&id, &p, &title, &owner); err != nil {
				s.t.Fatal(err)
			}
			out = append(out, row{"id": id, "project_id": p, "title": title, "owner_id": owner})
		}
		r.Close()
		sortRows(out)
		return renderRows(out)
	}

	snap, err := shapelog.CurrentSnapshot(s.storageDir(), d.handle)
	if err != nil || snap == nil {
		s.t.Fatalf("shape %s: no snapshot (%v)", d.handle, err)
	}
	tagged, plain := newOracleClient(), newOracleClient()
	if err := snap.EachRowMeta(func(r fanout.Row, tags []string, active []bool) error {
		c := fanout.Change{Op: fanout.OpInsert, Row: r, Tags: tags, Active: active}
		tagged.apply(c, true)
		plain.apply(c, false)
		return nil
	}); err != nil {
		s.t.Fatal(err)
	}
	checked := 0
	var pending []fanout.Change
	lastApplied := ""
	_, err = shapelog.ReadLog(s.storageDir(), d.handle, shapelog.Cursor{}, func(e shapelog.LogEntry, next shapelog.Cursor) error {
		xid, _ := e.Xid()
		if snap.Snapshot.Visible(xid) {
			return nil // in the snapshot's rows
		}
		f, err := e.Fragment()
		if err != nil {
			return err
		}
		pending = append(pending, f.Changes...)
		if !e.Last || next.OpenWindows() > 0 {
			return nil // inside a transaction or a move-in window: no reader sees this point
		}
		for _, c := range pending {
			tagged.apply(c, true)
			plain.apply(c, false)
		}
		lastApplied = describeChanges(pending)
		pending = pending[:0]
		if !applyThrough(xid) {
			return nil // a point after a transaction the history does not hold
		}
		want := expected()
		if got := tagged.render(); got != want {
			return fmt.Errorf("after transaction %d (%s), applied with tags: %s\n(changes applied: %s)", xid, f.Position(), lineDiff(got, want), lastApplied)
		}
		if got := plain.render(); got != want {
			return fmt.Errorf("after transaction %d (%s), applied as a plain client (events ignored): %s\nthe log:\n%s", xid, f.Position(), lineDiff(got, want), s.dumpLog(d.handle))
		}
		checked++
		return nil
	})
	if err != nil {
		s.t.Errorf("shape %s (%s): %v", d.handle, d.where, err)
	}
	s.t.Logf("shape %s (%s): %d points of its log checked against the history", d.handle, d.where, checked)
}

// oracleClient holds a shape's rows as a client applies its messages: with
// tags (the rows a move-out drops go) or plain (row changes only).
type oracleClient struct {
	rows map[string]row
	tags *shapelog.TagState
}

func newOracleClient() *oracleClient {
	return &oracleClient{rows: map[string]row{}, tags: shapelog.NewTagState([]string{"id"})}
}

func (c *oracleClient) apply(ch fanout.Change, followTags bool) {
	if followTags {
		for _, d := range c.tags.Apply(ch) {
			delete(c.rows, *d.Old["id"])
		}
	}
	switch ch.Op {
	case fanout.OpInsert, fanout.OpUpdate:
		if ch.Old != nil {
			delete(c.rows, *ch.Old["id"])
		}
		r := row{}
		for k, v := range c.rows[*ch.Row["id"]] {
			r[k] = v
		}
		for k, v := range ch.Row {
			r[k] = v
		}
		c.rows[*ch.Row["id"]] = r
	case fanout.OpDelete:
		delete(c.rows, *ch.Old["id"])
	case fanout.OpTruncate:
		c.rows = map[string]row{}
	}
}

func (c *oracleClient) render() string {
	var out []row
	for _, r := range c.rows {
		out = append(out, r)
	}
	sortRows(out)
	return renderRows(out)
}

// syncSubqueryShape reads a shape through the HTTP API from -1 to
// up-to-date and applies its messages with tags and as a plain client.
func syncSubqueryShape(t *testing.T, base, where string) (tagged, plain string) {
	t.Helper()
	tc, pc := newOracleClient(), newOracleClient()
	for _, r := range syncToEnd(t, base, shapeParams("public.issues", where)) {
		for _, m := range r.messages {
			ch, ok := messageChange(t, m)
			if !ok {
				continue
			}
			tc.apply(ch, true)
			pc.apply(ch, false)
		}
	}
	return tc.render(), pc.render()
}

// messageChange reads an Electric message back into a change.
func messageChange(t *testing.T, m map[string]any) (fanout.Change, bool) {
	raw, _ := json.Marshal(m)
	var msg struct {
		Value   map[string]*string `json:"value"`
		Headers struct {
			Operation string           `json:"operation"`
			Event     string           `json:"event"`
			Patterns  []fanout.Pattern `json:"patterns"`
			Tags      []string         `json:"tags"`
			Removed   []string         `json:"removed_tags"`
			Active    []bool           `json:"active_conditions"`
		} `json:"headers"`
	}
	if err := json.Unmarshal(raw, &msg); err != nil {
		t.Fatal(err)
	}
	switch {
	case msg.Headers.Event != "":
		return fanout.Change{Op: fanout.Op(msg.Headers.Event), Patterns: msg.Headers.Patterns}, true
	case msg.Headers.Operation == "delete":
		return fanout.Change{Op: fanout.OpDelete, Old: fanout.Row{"id": msg.Value["id"]}}, true
	case msg.Headers.Operation != "":
		// The API's values are whole rows here (every column of issues
		// changes together or the update carries the changed ones over
		// the row the client holds).
		return fanout.Change{Op: fanout.Op(msg.Headers.Operation), Row: msg.Value, Tags: msg.Headers.Tags, RemovedTags: msg.Headers.Removed, Active: msg.Headers.Active}, true
	}
	return fanout.Change{}, false
}

var _ = url.Values{}
var _ = sort.Strings
var _ = strings.Join
var _ = time.Second
var _ = pgx.Identifier{}
var _ = testenv.Eventually

// lineDiff says which lines got has that want has not, and the reverse.
func lineDiff(got, want string) string {
	g, w := map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(got, "\n") {
		g[l] = true
	}
	for _, l := range strings.Split(want, "\n") {
		w[l] = true
	}
	var extra, missing []string
	for l := range g {
		if !w[l] {
			extra = append(extra, l)
		}
	}
	for l := range w {
		if !g[l] {
			missing = append(missing, l)
		}
	}
	sort.Strings(extra)
	sort.Strings(missing)
	return fmt.Sprintf("rows that should not be there: %v; rows missing: %v", extra, missing)
}

func describeChanges(cs []fanout.Change) string {
	var out []string
	for _, c := range cs {
		switch {
		case c.Row != nil:
			d := string(c.Op) + " " + *c.Row["id"] + "(p" + deref(c.Row["project_id"]) + ")"
			if c.MoveIn {
				d += "[move-in row]"
			}
			out = append(out, d)
		case c.Old != nil:
			out = append(out, string(c.Op)+" "+*c.Old["id"])
		case c.Patterns != nil:
			var ps []string
			for _, p := range c.Patterns {
				ps = append(ps, fmt.Sprintf("%d:%.6s", p.Pos, p.Value))
			}
			out = append(out, string(c.Op)+"{"+strings.Join(ps, ",")+"}")
		default:
			out = append(out, string(c.Op))
		}
	}
	return strings.Join(out, "; ")
}

func deref(v *string) string {
	if v == nil {
		return "NULL"
	}
	return *v
}

// dumpLog renders a shape's log record by record (for failures).
func (s *stack) dumpLog(handle string) string {
	var b strings.Builder
	shapelog.ReadLog(s.storageDir(), handle, shapelog.Cursor{}, func(e shapelog.LogEntry, next shapelog.Cursor) error {
		f, err := e.Fragment()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s xid %d last %v windows %d opens %v closes %d: %s\n", f.Position(), f.Xid, f.Last, next.OpenWindows(), f.OpensWindow, f.ClosesWindows, describeChanges(f.Changes))
		return nil
	})
	return b.String()
}
