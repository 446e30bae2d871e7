package e2e

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// subqueryWhere is "the issues of the projects user $1 is a member of".
const subqueryWhere = "project_id IN (SELECT project_id FROM members WHERE user_id = $1)"

// issueIDs runs the shape's query in Postgres: the ids of its rows, sorted.
func (s *stack) issueIDs(where string, args ...any) []int {
	s.t.Helper()
	rows, err := s.conn.Query(context.Background(), "SELECT id FROM issues WHERE "+where+" ORDER BY id", args...)
	if err != nil {
		s.t.Fatal(err)
	}
	defer rows.Close()
	var ids []int
	for rows.Next() {
		var id int
		rows.Scan(&id)
		ids = append(ids, id)
	}
	return ids
}

// writeTx runs statements in one transaction and returns its xid (as
// pg_current_xact_id()::xid, what the HTTP API's txids carry).
func (s *stack) writeTx(stmts ...string) int64 {
	s.t.Helper()
	ctx := context.Background()
	tx, err := s.conn.Begin(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	for _, st := range stmts {
		if _, err := tx.Exec(ctx, st); err != nil {
			s.t.Fatalf("%s: %v", st, err)
		}
	}
	var xid int64
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::xid::text::bigint`).Scan(&xid); err != nil {
		s.t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		s.t.Fatal(err)
	}
	return xid
}

// The clients from npm over a shape with a subquery: TanStack DB's electric
// collection (eager, and on-demand under a live query), which follows tags
// and move events, and pglite-sync, which ignores them. awaitTxId on a
// write that moves rows in resolves with those rows in the collection; a
// move-in racing concurrent writes to the outer table, members moving
// between projects and leaving, all end equal to the query in Postgres, in
// every client.
func TestSubqueryShapesInTheNPMClients(t *testing.T) {
	s := newStack(t)
	s.exec(subqueryTablesSQL)
	s.exec(`INSERT INTO projects SELECT g, 'o', false FROM generate_series(1, 8) g`)
	s.exec(`INSERT INTO members VALUES (1, 1, 1), (2, 2, 2)`)
	s.exec(`INSERT INTO issues SELECT g, 1 + g % 8, 't' || g, g % 3 FROM generate_series(1, 200) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.start("ingest", "ingest", smallFragments...)
	s.waitSlot()
	api := s.startShapeAPI(pgliteChunkBytes) // pglite-sync's client: see pgliteChunkBytes
	params := map[string]any{"table": "issues", "where": subqueryWhere, "params": map[string]any{"1": "1"}}

	eager := s.startJS("tanstack-subquery-eager", "tanstack.mjs", map[string]any{"url": api, "params": params, "mode": "eager", "key": "id"})
	onDemand := s.startJS("tanstack-subquery-on-demand", "tanstack.mjs", map[string]any{"url": api, "params": params, "mode": "on-demand", "key": "id",
		"query": map[string]any{"gt": []any{"owner_id", 0}, "orderBy": "id"}})
	dataDir := filepath.Join(t.TempDir(), "pglite")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	pglite := s.startJS("pglite-subquery", "pglite.mjs", map[string]any{"url": api, "key": "sq", "dataDir": dataDir,
		"ddl":    `CREATE TABLE IF NOT EXISTS issues (id int PRIMARY KEY, project_id int, title text, owner_id int)`,
		"shapes": map[string]any{"issues": map[string]any{"params": params, "table": "issues", "primaryKey": []string{"id"}}}})
	for _, c := range []*jsClient{eager, onDemand} {
		c.await(60*time.Second, "ready", func(evs []map[string]any) bool { return last(evs, "ready") != nil })
	}
	pglite.await(60*time.Second, "initial sync", func(evs []map[string]any) bool { return last(evs, "initial") != nil })

	// A write that moves rows in: user 1 joins project 5. awaitTxId
	// resolves with project 5's issues in the collection.
	before := len(s.issueIDs(subqueryWhere, "1"))
	xid := s.writeTx(`INSERT INTO members VALUES (3, 1, 5)`)
	eager.send(fmt.Sprintf("await %d", xid))
	eager.await(60*time.Second, "awaitTxId", func(evs []map[string]any) bool { return last(evs, "txid") != nil })
	want := s.issueIDs(subqueryWhere, "1")
	if got := stateIDs(last(eager.all(), "txid")); !reflect.DeepEqual(got, want) {
		t.Fatalf("awaitTxId(%d) of the write moving project 5 in resolved with %d rows %v; the query has %d (had %d before)", xid, len(got), got, len(want), before)
	}

	// A move-in racing writes to the outer table, members moving between
	// projects and leaving.
	rnd := rand.New(rand.NewSource(3))
	done := make(chan struct{})
	go func() {
		defer close(done)
		w := s.pg.Connect(t)
		defer w.Close(context.Background())
		for i := 0; i < 150; i++ {
			id := 1 + rnd.Intn(240)
			w.Exec(context.Background(), `INSERT INTO issues VALUES ($1, $2, 'r', 1) ON CONFLICT (id) DO UPDATE SET project_id = EXCLUDED.project_id, title = issues.title || '.'`, id, 1+rnd.Intn(8))
		}
	}()
	for i := 0; i < 40; i++ {
		switch i % 4 {
		case 0:
			s.writeTx(fmt.Sprintf(`INSERT INTO members VALUES (%d, 1, %d) ON CONFLICT (id) DO UPDATE SET project_id = EXCLUDED.project_id`, 10+i%5, 1+i%8))
		case 1:
			s.writeTx(fmt.Sprintf(`UPDATE members SET project_id = %d WHERE id = 3`, 1+(i*3)%8))
		case 2:
			s.writeTx(fmt.Sprintf(`DELETE FROM members WHERE id = %d`, 10+(i/4)%5))
		default:
			s.writeTx(fmt.Sprintf(`INSERT INTO members VALUES (%d, 1, %d) ON CONFLICT (id) DO UPDATE SET user_id = 1`, 20+i, 1+i%8),
				fmt.Sprintf(`INSERT INTO issues VALUES (%d, %d, 'with its member', 1)`, 1000+i, 1+i%8))
		}
	}
	<-done
	want = s.issueIDs(subqueryWhere, "1")
	eager.await(90*time.Second, "the collection equal to the query", func(evs []map[string]any) bool {
		return reflect.DeepEqual(stateIDs(last(evs, "state")), want)
	})
	wantOwned := s.issueIDs(subqueryWhere+" AND owner_id > 0", "1")
	onDemand.await(90*time.Second, "the on-demand live query equal to the query", func(evs []map[string]any) bool {
		return reflect.DeepEqual(stateIDs(last(evs, "state")), wantOwned)
	})
	pglite.await(90*time.Second, "pglite-sync (ignores move events) equal to the query", func(evs []map[string]any) bool {
		st := last(evs, "state")
		if st == nil {
			return false
		}
		tables, _ := st["tables"].(map[string]any)
		issues, _ := tables["issues"].(map[string]any)
		return reflect.DeepEqual(stateIDs(issues), want)
	})
}
