package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// Two tables written by the same transactions: a client that applies
// transactions whole shows, at every moment, the state of some prefix of
// them, in both tables at once.
const batchTables = `
CREATE TABLE acct (id int PRIMARY KEY, batch int NOT NULL, v text);
CREATE TABLE entry (id int PRIMARY KEY, batch int NOT NULL, v text);`

// smallFragments makes ingest cut a shape's part of a transaction every 100
// changes and pack few fragments per bus message, so the transactions of
// these tests reach their shape logs in several records and batches.
var smallFragments = []string{"FANOUT_INGEST_MAX_FRAGMENT_CHANGES=100", "FANOUT_INGEST_MAX_MESSAGE_BYTES=16384"}

// batchTx is one transaction of the workload and what it leaves behind.
type batchTx struct {
	sql string
	// groups is, after it, the row count of each batch in each table
	// (both tables always hold the same).
	groups map[string]int
	// inserted is the batch it inserts ("" for updates and deletes);
	// before and after bound its commit LSN.
	inserted      string
	before, after pglogrepl.LSN
}

// batchWorkload is n transactions: inserts of one row per table, every
// fourth of 250 rows per table (several fragments each), every fifth also
// an update of an earlier batch, every sixth a delete of one.
func batchWorkload(from, n int, groups map[string]int) []*batchTx {
	var txs []*batchTx
	next := func(sql string, inserted string, change func()) {
		change()
		g := map[string]int{}
		for k, v := range groups {
			g[k] = v
		}
		txs = append(txs, &batchTx{sql: sql, groups: g, inserted: inserted})
	}
	for k := from; k < from+n; k++ {
		rows := 1
		if k%4 == 0 {
			rows = 250
		}
		lo := k * 1000
		sql := fmt.Sprintf(`INSERT INTO acct SELECT g, %[1]d, 'a' || g FROM generate_series(%[2]d, %[3]d) g;
			INSERT INTO entry SELECT g, %[1]d, 'e' || g FROM generate_series(%[2]d, %[3]d) g;`, k, lo, lo+rows-1)
		next(sql, strconv.Itoa(k), func() { groups[strconv.Itoa(k)] = rows })
		if k%5 == 0 {
			j := k - 2
			next(fmt.Sprintf(`UPDATE acct SET v = v || 'u' WHERE batch = %[1]d; UPDATE entry SET v = v || 'u' WHERE batch = %[1]d;`, j), "", func() {})
		}
		if k%6 == 0 {
			j := k - 3
			next(fmt.Sprintf(`DELETE FROM acct WHERE batch = %[1]d; DELETE FROM entry WHERE batch = %[1]d;`, j), "", func() { delete(groups, strconv.Itoa(j)) })
		}
	}
	return txs
}

// run commits tx in one transaction, bounding its commit LSN.
func (s *stack) runBatchTx(tx *batchTx) {
	s.t.Helper()
	tx.before = s.queryLSN(`SELECT pg_current_wal_insert_lsn()`)
	s.exec("BEGIN; " + tx.sql + " COMMIT;")
	tx.after = s.queryLSN(`SELECT pg_current_wal_insert_lsn()`)
}

// tableGroups reads {"acct":{"groups":{..}}, ...} of a state event.
func tableGroups(ev map[string]any, table string) map[string]int {
	out := map[string]int{}
	t, _ := ev["tables"].(map[string]any)[table].(map[string]any)
	if g, ok := t["groups"].(map[string]any); ok {
		for k, v := range g {
			out[k] = int(v.(float64))
		}
	}
	return out
}

// checkPrefixStates fails unless every state event, in order, shows both
// tables at the state after some prefix of txs (never going back), and
// returns the index of the last state's prefix (-1: before all).
func checkPrefixStates(t *testing.T, evs []map[string]any, txs []*batchTx, initial map[string]int) int {
	t.Helper()
	at := -1
	for _, ev := range evs {
		if ev["event"] != "state" {
			continue
		}
		acct, entry := tableGroups(ev, "acct"), tableGroups(ev, "entry")
		if !reflect.DeepEqual(acct, entry) {
			t.Fatalf("the client shows the tables at different transactions:\nacct  %v\nentry %v", acct, entry)
		}
		found := -2
		for j := at; j < len(txs); j++ {
			want := initial
			if j >= 0 {
				want = txs[j].groups
			}
			if reflect.DeepEqual(acct, want) || (len(acct) == 0 && len(want) == 0) {
				found = j
				break
			}
		}
		if found == -2 {
			t.Fatalf("the client shows a state that no prefix of the transactions leaves (part of a transaction, or an older state after a newer one):\n%v\nlast prefix matched: %d", acct, at)
		}
		at = found
	}
	return at
}

// checkWatermarks fails when an up-to-date watermark a shape stream got is
// not true: a transaction committed at or below it is missing from what
// the stream had received by then.
func checkWatermarks(t *testing.T, evs []map[string]any, txs []*batchTx) int {
	t.Helper()
	checked := 0
	for _, ev := range evs {
		if ev["event"] != "up-to-date" {
			continue
		}
		w, err := strconv.ParseUint(fmt.Sprint(ev["lsn"]), 10, 64)
		if err != nil {
			t.Fatalf("up-to-date without a watermark: %v", ev)
		}
		seen := map[string]bool{}
		for _, b := range ev["seen"].([]any) {
			seen[fmt.Sprint(b)] = true
		}
		for _, tx := range txs {
			if tx.inserted == "" || tx.after == 0 || uint64(tx.after) > w {
				continue // committed after the watermark, or not surely before
			}
			checked++
			if !seen[tx.inserted] {
				t.Fatalf("shape %v: up-to-date watermark %d, but batch %s (committed below %s) had not reached it", ev["shape"], w, tx.inserted, tx.after)
			}
		}
	}
	return checked
}

// pgliteChunkBytes is Electric's default chunk size, for the shape API that
// pglite-sync reads: its client (1.0.14) races its own prefetches against
// the refreshes its MultiShapeStream forces, and a prefetched response
// aborted while its body is read kills the stream (an unhandled rejection
// in the client, not a server error). With chunks of 10,000 bytes every
// 250-row transaction is cut into responses, and it happened in about one
// run in five; the other tests cut responses with the 1.5 client.
const pgliteChunkBytes = "FANOUT_API_CHUNK_BYTES=10485760"

// pgliteArgs is pglite.mjs's arguments for both tables in dataDir.
func pgliteArgs(api, dataDir string) map[string]any {
	shape := func(table string) map[string]any {
		return map[string]any{"params": map[string]any{"table": table}, "table": table, "primaryKey": []string{"id"}}
	}
	ddl := strings.ReplaceAll(batchTables, "CREATE TABLE", "CREATE TABLE IF NOT EXISTS") // a resumed client's tables are there
	return map[string]any{"url": api, "ddl": ddl, "groupBy": "batch", "key": "sync1", "dataDir": dataDir, "traceFetch": os.Getenv("FANOUT_TEST_TRACE_FETCH") != "",
		"shapes": map[string]any{"acct": shape("acct"), "entry": shape("entry")}}
}

// pglite-sync (through @electric-sql/experimental and the 1.0.14 client)
// applies transactions across two shapes whole: after every commit in
// PGlite both tables are at the same prefix of Postgres's transactions,
// including transactions larger than one fragment; every watermark it is
// given is true; it resumes with its persisted key and refetches after a
// shape is removed (fanoutctl shape rm, DELETE /v1/shape).
func TestPGliteSyncAppliesWholeTransactions(t *testing.T) {
	s := newStack(t)
	s.exec(batchTables)
	s.startFlushd()
	// Each bus message its own batch: a transaction's fragments land in the
	// logs one by one, so readers come while it is persisted in part.
	s.start("c1", "consumer", "FANOUT_CONSUMER_ID=c1", "FANOUT_CONSUMER_BATCH=1")
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
	at := checkPrefixStates(t, c.all(), txs, map[string]int{})
	checked := checkWatermarks(t, c.all(), txs)
	t.Logf("first client: %d states, all whole prefixes (last %d of %d); %d watermark checks", len(c.all()), at, len(txs), checked)
	if checked == 0 {
		t.Fatal("no watermark could be checked")
	}
	c.stop()

	// Written while the client is away: it resumes with its key.
	more := batchWorkload(13, 12, groups)
	for _, tx := range more[:len(more)/2] {
		s.runBatchTx(tx)
	}
	c2 := s.startJS("pglite-2", "pglite.mjs", pgliteArgs(api, dataDir))
	c2.await(60*time.Second, "running", func(evs []map[string]any) bool { return last(evs, "ready") != nil })
	for _, tx := range more[len(more)/2:] {
		s.runBatchTx(tx)
	}
	all := append(append([]*batchTx(nil), txs...), more...)
	want = all[len(all)-1].groups
	c2.await(60*time.Second, "every batch after resuming", func(evs []map[string]any) bool {
		st := last(evs, "state")
		return st != nil && reflect.DeepEqual(tableGroups(st, "acct"), want)
	})
	checkPrefixStates(t, c2.all(), all, txs[len(txs)-1].groups)

	// Each way a shape is removed ends in a refetch and the same rows.
	handle := func(table string) string {
		q := shapeParams(table, "", "offset", "-1")
		r := apiGet(t, api, q)
		return r.header.Get("electric-handle")
	}
	s.ctl("shape", "rm", handle("acct"))
	req, _ := http.NewRequest(http.MethodDelete, api+"?"+url.Values{"handle": {handle("entry")}}.Encode(), nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE /v1/shape: %v %v", resp, err)
	}
	tail := batchWorkload(25, 2, groups)
	for _, tx := range tail {
		s.runBatchTx(tx)
	}
	want = tail[len(tail)-1].groups
	c2.await(90*time.Second, "the same rows after both shapes were removed", func(evs []map[string]any) bool {
		st := last(evs, "state")
		return st != nil && reflect.DeepEqual(tableGroups(st, "acct"), want) && reflect.DeepEqual(tableGroups(st, "entry"), want)
	})
	var pgCount int
	if err := s.conn.QueryRow(context.Background(), `SELECT count(*) FROM acct`).Scan(&pgCount); err != nil {
		t.Fatal(err)
	}
	if n := sumGroups(want); n != pgCount {
		t.Fatalf("the workload's model has %d rows, Postgres %d", n, pgCount)
	}
}

func sumGroups(g map[string]int) int {
	n := 0
	for _, v := range g {
		n += v
	}
	return n
}

// tanstackArgs is tanstack.mjs's arguments for table tsk.
func tanstackArgs(api, mode string, extra map[string]any) map[string]any {
	a := map[string]any{"url": api, "params": map[string]any{"table": "tsk"}, "mode": mode, "key": "id"}
	for k, v := range extra {
		a[k] = v
	}
	return a
}

// stateIDs are the ids of a state event's rows, in order.
func stateIDs(ev map[string]any) []int {
	var ids []int
	rows, _ := ev["rows"].([]any)
	for _, r := range rows {
		ids = append(ids, int(r.(map[string]any)["id"].(float64)))
	}
	return ids
}

func eventGroups(ev map[string]any) map[string]int {
	out := map[string]int{}
	if g, ok := ev["groups"].(map[string]any); ok {
		for k, v := range g {
			out[k] = int(v.(float64))
		}
	}
	return out
}

// TanStack DB's electric collection (@tanstack/electric-db-collection
// 0.4.10) in its three sync modes: a 5,000-row transaction never shows in
// part in two eager collections, awaitTxId resolves with the write in the
// collection, and live queries over on-demand (GET and POST subsets) and
// progressive collections end equal to the query in Postgres.
func TestTanStackDBCollections(t *testing.T) {
	s := newStack(t)
	s.exec(`CREATE TABLE tsk (id int PRIMARY KEY, batch int NOT NULL, score int NOT NULL, title text)`)
	s.exec(`INSERT INTO tsk SELECT g, 0, g % 97, 't' || g FROM generate_series(1, 200) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.start("ingest", "ingest", smallFragments...)
	s.waitSlot()
	api := s.startShapeAPI()

	t.Run("eager: a large transaction is never seen in part", func(t *testing.T) {
		a := s.startJS("tanstack-eager-a", "tanstack.mjs", tanstackArgs(api, "eager", map[string]any{"groupBy": "batch"}))
		b := s.startJS("tanstack-eager-b", "tanstack.mjs", tanstackArgs(api, "eager", map[string]any{"groupBy": "batch"}))
		for _, c := range []*jsClient{a, b} {
			c.await(60*time.Second, "ready", func(evs []map[string]any) bool { return last(evs, "ready") != nil })
		}
		s.exec(`INSERT INTO tsk SELECT g, 1, g % 97, 'bulk' FROM generate_series(1000, 5999) g`)
		// A write whose txid the test reads in Postgres.
		var xid int64
		tx, err := s.conn.Begin(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(context.Background(), `INSERT INTO tsk VALUES (9000, 2, 1, 'awaited')`); err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(context.Background(), `SELECT pg_current_xact_id()::xid::text::bigint`).Scan(&xid); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(context.Background()); err != nil {
			t.Fatal(err)
		}
		a.send(fmt.Sprintf("await %d", xid))
		for _, c := range []*jsClient{a, b} {
			c.await(60*time.Second, "the 5,000-row transaction", func(evs []map[string]any) bool {
				return eventGroups(last(evs, "state"))["1"] == 5000
			})
			for _, ev := range c.all() {
				if ev["event"] != "state" {
					continue
				}
				if n := eventGroups(ev)["1"]; n != 0 && n != 5000 {
					t.Fatalf("%s showed %d of the transaction's 5,000 rows", c.name, n)
				}
			}
		}
		a.await(60*time.Second, "awaitTxId", func(evs []map[string]any) bool { return last(evs, "txid") != nil })
		if got := eventGroups(last(a.all(), "txid")); got["2"] != 1 || got["1"] != 5000 {
			t.Fatalf("awaitTxId(%d) resolved with the collection at %v, without the write it awaited", xid, got)
		}
	})

	// The live query of the on-demand and progressive collections.
	query := map[string]any{"gt": []any{"score", 90}, "orderBy": "id", "limit": 20}
	want := func() []int {
		rows, err := s.conn.Query(context.Background(), `SELECT id FROM tsk WHERE score > 90 ORDER BY id LIMIT 20`)
		if err != nil {
			t.Fatal(err)
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
	for _, c := range []struct {
		name, mode, method string
	}{{"on-demand GET", "on-demand", "GET"}, {"on-demand POST", "on-demand", "POST"}, {"progressive", "progressive", "GET"}} {
		t.Run(c.name, func(t *testing.T) {
			cl := s.startJS("tanstack-"+strings.ReplaceAll(c.name, " ", "-"), "tanstack.mjs",
				tanstackArgs(api, c.mode, map[string]any{"query": query, "subsetMethod": c.method}))
			equal := func(what string) {
				w := want()
				cl.await(60*time.Second, what, func(evs []map[string]any) bool {
					st := last(evs, "state")
					return st != nil && reflect.DeepEqual(stateIDs(st), w)
				})
			}
			equal("the live query equal to SELECT")
			// A change that enters the query's window.
			id := 100 + len(c.name)
			s.exec(fmt.Sprintf(`INSERT INTO tsk VALUES (%d, 3, 96, 'enters') ON CONFLICT (id) DO UPDATE SET score = 96`, -id))
			equal("the live query after a row entered it")
		})
	}
}
