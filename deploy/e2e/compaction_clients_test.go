package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// apiHandle is the handle the API serves table's shape at.
func (s *stack) apiHandle(api, table string) string {
	s.t.Helper()
	r := apiGet(s.t, api, shapeParams(table, "", "offset", "-1"))
	h := r.header.Get("electric-handle")
	if h == "" {
		s.t.Fatalf("no handle for table %s: %d %s", table, r.status, r.raw)
	}
	return h
}

// compactedPast is the lowest current generation of defs' shapes.
func (s *stack) compactedPast(defs []shapeDef) uint64 {
	s.t.Helper()
	var least uint64 = 1 << 62
	for _, d := range defs {
		g := s.generationOf(d.handle)
		least = min(least, g)
	}
	return least
}

// pglite-sync resumes across compactions: a PGlite database synced, closed,
// and opened again with its persisted key after the consumer compacted
// both shapes several times resumes from the offsets it held (no refetch:
// it receives only the rows written since), applies every transaction
// whole, and ends equal to Postgres.
func TestPGliteSyncResumesAcrossCompactions(t *testing.T) {
	s := newStack(t)
	s.env = append(s.env, compactionEnv(5*time.Minute)...)
	s.exec(batchTables)
	s.startFlushd()
	s.startConsumer("c1")
	s.start("ingest", "ingest", smallFragments...)
	s.waitSlot()
	api := s.startShapeAPI(pgliteChunkBytes)
	dataDir := filepath.Join(t.TempDir(), "pglite")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	groups := map[string]int{}
	txs := batchWorkload(1, 12, groups)
	c := s.startJS("pglite-1", "pglite.mjs", pgliteArgs(api, dataDir))
	c.await(60*time.Second, "initial sync", func(evs []map[string]any) bool { return last(evs, "initial") != nil })
	for _, tx := range txs {
		s.runBatchTx(tx)
	}
	want := txs[len(txs)-1].groups
	c.await(60*time.Second, "the first 12 batches", func(evs []map[string]any) bool {
		st := last(evs, "state")
		return st != nil && reflect.DeepEqual(tableGroups(st, "acct"), want)
	})
	c.stop()
	defs := []shapeDef{{handle: s.apiHandle(api, "acct")}, {handle: s.apiHandle(api, "entry")}}
	before := s.compactedPast(defs)

	// Away: enough transactions for compactions of both shapes: the
	// offsets the client holds are in replaced generations then.
	more := batchWorkload(13, 40, groups)
	for _, tx := range more {
		s.runBatchTx(tx)
	}
	s.drain()
	s.compactedTo(defs, before)

	c2 := s.startJS("pglite-2", "pglite.mjs", pgliteArgs(api, dataDir))
	all := append(append([]*batchTx(nil), txs...), more...)
	want = all[len(all)-1].groups
	c2.await(90*time.Second, "every batch after resuming", func(evs []map[string]any) bool {
		st := last(evs, "state")
		return st != nil && reflect.DeepEqual(tableGroups(st, "acct"), want) && reflect.DeepEqual(tableGroups(st, "entry"), want)
	})
	checkPrefixStates(t, c2.all(), all, txs[len(txs)-1].groups)
	// No refetch: the streams received inserts of the new batches only.
	old := map[string]bool{}
	for _, tx := range txs {
		old[tx.inserted] = true
	}
	for _, ev := range c2.all() {
		if ev["event"] != "up-to-date" {
			continue
		}
		for _, b := range ev["seen"].([]any) {
			if old[fmt.Sprint(b)] {
				t.Fatalf("shape %v received batch %v again after resuming: it refetched instead of resuming from its offset", ev["shape"], b)
			}
		}
	}
	t.Logf("resumed across the compactions of both shapes (generation %d, then %d): only the %d new transactions were received", before, s.compactedPast(defs), len(more))
}

// TanStack DB across compactions: awaitTxId resolves for a write made
// after the shape was compacted, with the write in the collection, for a
// collection that synced before the compactions and for one that started
// from the compacted base.
func TestTanStackAwaitTxIdAfterACompaction(t *testing.T) {
	s := newStack(t)
	s.env = append(s.env, compactionEnv(5*time.Minute)...)
	s.exec(`CREATE TABLE tsk (id int PRIMARY KEY, batch int NOT NULL, score int NOT NULL, title text)`)
	s.exec(`INSERT INTO tsk SELECT g, 0, g % 97, 't' || g FROM generate_series(1, 200) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	api := s.startShapeAPI()
	early := s.startJS("tanstack-early", "tanstack.mjs", tanstackArgs(api, "eager", map[string]any{"groupBy": "batch"}))
	early.await(60*time.Second, "ready", func(evs []map[string]any) bool { return last(evs, "ready") != nil })
	def := shapeDef{handle: s.apiHandle(api, "tsk")}
	for k := 1; k <= 6; k++ {
		s.exec(fmt.Sprintf(`UPDATE tsk SET title = 'round %d ' || id, batch = %d`, k, k))
	}
	s.drain()
	s.compactedTo([]shapeDef{def}, 0)
	late := s.startJS("tanstack-late", "tanstack.mjs", tanstackArgs(api, "eager", map[string]any{"groupBy": "batch"}))
	late.await(60*time.Second, "ready", func(evs []map[string]any) bool { return last(evs, "ready") != nil })

	var xid int64
	tx, err := s.conn.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(context.Background(), `INSERT INTO tsk VALUES (9000, 99, 1, 'awaited')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(context.Background(), `SELECT pg_current_xact_id()::xid::text::bigint`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*jsClient{early, late} {
		c.send(fmt.Sprintf("await %d", xid))
	}
	for _, c := range []*jsClient{early, late} {
		c.await(60*time.Second, "awaitTxId", func(evs []map[string]any) bool { return last(evs, "txid") != nil })
		got := eventGroups(last(c.all(), "txid"))
		if got["99"] != 1 || got["6"] != 200 || len(got) != 2 {
			t.Fatalf("%s: awaitTxId(%d) resolved with the collection at %v, want the 200 rows of round 6 and the write", c.name, xid, got)
		}
	}
	t.Logf("awaitTxId resolved after the shape was compacted to generation %d", s.generationOf(def.handle))
}
