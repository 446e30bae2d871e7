package e2e

// Initial snapshots (issue 14): a shape created on a table that already has
// rows starts with exactly the rows that match it at one snapshot, then
// exactly the transactions that snapshot did not see, whatever runs or
// crashes meanwhile.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapestate"
	"github.com/fanout/pipeline/fanout/testenv"
)

// shapeState is the snapshot state `fanoutctl shape ls --json` shows.
func (s *stack) shapeState(handle string) shapestate.State {
	s.t.Helper()
	var list []struct {
		Handle string           `json:"handle"`
		State  shapestate.State `json:"state"`
	}
	if err := json.Unmarshal([]byte(s.ctl("shape", "ls", "--json")), &list); err != nil {
		s.t.Fatal(err)
	}
	for _, x := range list {
		if x.Handle == handle {
			return x.State
		}
	}
	s.t.Fatalf("shape %s is not listed", handle)
	return shapestate.State{}
}

// ingestPublishedLSN is what ingest reports it has in JetStream.
func (s *stack) ingestPublishedLSN() pglogrepl.LSN {
	s.t.Helper()
	var st struct {
		Ingest *fanout.IngestProgress `json:"ingest"`
	}
	if err := json.Unmarshal([]byte(s.ctl("status", "--json")), &st); err != nil || st.Ingest == nil {
		return 0
	}
	lsn, _ := pglogrepl.ParseLSN(st.Ingest.Published)
	return lsn
}

// waitReady waits for a shape's snapshot to be ready and returns its state.
func (s *stack) waitReady(handle string, timeout time.Duration) shapestate.State {
	s.t.Helper()
	var st shapestate.State
	testenv.Eventually(s.t, timeout, "shape "+handle+" to be ready", func() bool {
		st = s.shapeState(handle)
		if st.Phase == shapestate.Failed {
			s.t.Fatalf("shape %s failed its snapshot: %s", handle, st.Error)
		}
		return st.Phase == shapestate.Ready
	})
	return st
}

// checkExact asserts each ready shape equals its query now (writes stopped
// and drained).
func (s *stack) checkExact(defs []shapeDef) {
	s.t.Helper()
	for _, d := range defs {
		s.waitReady(d.handle, 2*time.Minute)
		want := s.expectedRows(d.table, d.where, d.columns)
		got := s.shapeRows(d.handle)
		if len(got) != len(want) || renderRows(got) != renderRows(want) {
			s.t.Errorf("shape %s (WHERE %s) has %d rows, its query %d; first difference: %s", d.handle, d.where, len(got), len(want), firstDiff(got, want))
		}
	}
}

func firstDiff(got, want []row) string {
	g, w := strings.Split(renderRows(got), "\n"), strings.Split(renderRows(want), "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			return fmt.Sprintf("line %d: shape %s, query %s", i, a, b)
		}
	}
	return "none"
}

// writers insert, move rows between owners and delete, until stop closes.
func (s *stack) writers(n, maxID int, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(context.Background(), s.pg.URL)
			if err != nil {
				s.t.Errorf("writer: %v", err)
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewSource(int64(w)))
			next := 1_000_000 * (w + 1)
			for {
				select {
				case <-stop:
					return
				default:
				}
				b := &pgx.Batch{}
				b.Queue(`INSERT INTO items VALUES ($1, $1 % 10, 'a' || $1, NULL)`, next)
				next++
				b.Queue(`UPDATE items SET owner = (owner + 1) % 10 WHERE id = $1`, 1+rng.Intn(maxID))
				b.Queue(`UPDATE items SET owner = (owner + 3) % 10, title = 'b' || id WHERE id = $1`, 1+rng.Intn(maxID))
				b.Queue(`DELETE FROM items WHERE id = $1`, 1+rng.Intn(maxID))
				if err := conn.SendBatch(context.Background(), b).Close(); err != nil {
					s.t.Errorf("writer: %v", err)
					return
				}
			}
		}()
	}
	return &wg
}

func snapshotShapes(s *stack) []shapeDef {
	return []shapeDef{
		s.addShape("public.items", "owner = 1"),
		s.addShape("public.items", "owner IN (3, 4) AND title LIKE 'a1%'"),
		s.addShape("public.items", "owner = 2", "id", "title"),
		s.addShape("public.items", ""),
	}
}

// Shapes created on a 200K-row table while writers insert, move rows between
// shapes and delete, and while a transaction that touches them is open,
// equal their queries once writes stop.
func TestSnapshotHandOffUnderConcurrentWrites(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	const rows = 200_000
	s.exec(fmt.Sprintf(`INSERT INTO items SELECT g, g %% 10, 'a' || g, NULL FROM generate_series(1, %d) g`, rows))
	s.startFlushd()
	s.startConsumer("c1")
	s.startConsumer("c2")
	s.startIngest()
	s.waitSlot()

	stop := make(chan struct{})
	wg := s.writers(2, rows, stop)
	ctx := context.Background()
	open := s.pg.Connect(t)
	tx, err := open.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Open across the creation: it started before, commits after.
	for _, q := range []string{
		`INSERT INTO items VALUES (900001, 1, 'a1-open', NULL)`,
		`UPDATE items SET owner = 1 WHERE id = 3`,
		`UPDATE items SET owner = 2 WHERE id = 11`,
		`DELETE FROM items WHERE id = 21`,
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	defs := snapshotShapes(s)
	if st := s.shapeState(defs[0].handle); st.Phase == shapestate.Ready {
		t.Logf("shape ready at once (%d rows)", st.Rows)
	}
	// shape rows of a shape that is not ready fails, and says so.
	if out, errOut, err := testenv.Run(t, "fanoutctl", []string{"shape", "rows", defs[3].handle}, s.env...); err == nil {
		if st := s.shapeState(defs[3].handle); st.Phase != shapestate.Ready {
			t.Fatalf("shape rows of a %s shape succeeded: %.200s", st.Phase, out)
		}
	} else if !strings.Contains(errOut, "not ready") {
		t.Fatalf("shape rows of a shape being snapshotted: %q, want it to say it is not ready", errOut)
	}
	time.Sleep(500 * time.Millisecond) // the open transaction spans the snapshots' start
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	open.Close(ctx)
	for _, d := range defs {
		s.waitReady(d.handle, 2*time.Minute)
	}
	time.Sleep(time.Second) // writes after every snapshot
	close(stop)
	wg.Wait()
	s.drain()
	s.checkExact(defs)
	st := s.shapeState(defs[3].handle)
	t.Logf("whole-table shape: snapshot of %d rows in %d chunks at %s", st.Rows, st.Chunks, st.Snapshot)

	// Issue 18 item 2: a registered shape read from a storage directory
	// without its log says which directory and exits non-zero.
	wrong := t.TempDir()
	env := append(append([]string(nil), s.env...), "FANOUT_STORAGE_DIR="+wrong)
	out, errOut, err := testenv.Run(t, "fanoutctl", []string{"shape", "rows", defs[0].handle}, env...)
	if err == nil || !strings.Contains(errOut, wrong) || !strings.Contains(errOut, "no log") || out != "" {
		t.Fatalf("shape rows with a wrong storage dir: err %v, stdout %q, stderr %q", err, out, errOut)
	}
}

// The commit-visibility race: a commit waiting for a synchronous standby is
// in the WAL (decoded by ingest) but invisible to a snapshot taken then. The
// shape must wait for it, and once pg_cancel_backend releases it the row is
// in the shape.
func TestSnapshotWaitsForCommitInvisibleBehindSyncStandby(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.exec(`INSERT INTO items SELECT g, g % 10, 'a' || g, NULL FROM generate_series(1, 1000) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	s.exec(`ALTER SYSTEM SET synchronous_commit = 'local'`)
	s.exec(`ALTER SYSTEM SET synchronous_standby_names = 'standby_that_never_connects'`)
	s.exec(`SELECT pg_reload_conf()`)
	t.Cleanup(func() {
		c := s.pg.Connect(t)
		c.Exec(context.Background(), `ALTER SYSTEM RESET synchronous_standby_names`)
		c.Exec(context.Background(), `ALTER SYSTEM RESET synchronous_commit`)
		c.Exec(context.Background(), `SELECT pg_reload_conf()`)
	})

	ctx := context.Background()
	stuck := s.pg.Connect(t)
	var pid int
	if err := stuck.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := stuck.Exec(ctx, `SET synchronous_commit = on`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := stuck.Exec(ctx, `INSERT INTO items VALUES (777777, 1, 'behind the standby', NULL)`)
		done <- err
	}()
	testenv.Eventually(t, 30*time.Second, "the commit to wait for the synchronous standby", func() bool {
		var ev *string
		s.conn.QueryRow(ctx, `SELECT wait_event FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&ev)
		return ev != nil && *ev == "SyncRep"
	})
	inWAL := s.currentWAL()
	testenv.Eventually(t, 30*time.Second, "ingest to have decoded the waiting commit", func() bool {
		s.exec(`SELECT pg_logical_emit_message(false, 'fanout-test', 'tick')`)
		return s.ingestPublishedLSN() >= inWAL
	})
	var visible bool
	s.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM items WHERE id = 777777)`).Scan(&visible)
	if visible {
		t.Fatal("the commit waiting for the standby is already visible; the race is not set up")
	}

	d := s.addShape("public.items", "owner = 1")
	testenv.Eventually(t, 30*time.Second, "the snapshot to notice the invisible commit and wait", func() bool {
		st := s.shapeState(d.handle)
		if st.Phase == shapestate.Ready {
			t.Fatalf("shape became ready while a commit already in the WAL was invisible (snapshot %s)", st.Snapshot)
		}
		return st.Retakes > 0
	})
	if _, err := s.conn.Exec(ctx, `SELECT pg_cancel_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Logf("released commit returned: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("pg_cancel_backend did not release the commit")
	}
	st := s.waitReady(d.handle, time.Minute)
	s.drain()
	got := s.shapeRows(d.handle)
	found := false
	for _, r := range got {
		if r["id"] != nil && *r["id"] == "777777" {
			found = true
		}
	}
	if !found {
		t.Fatalf("the commit released after the shape was created is in neither its snapshot nor its log (snapshot %s, %d retakes)", st.Snapshot, st.Retakes)
	}
	s.checkExact([]shapeDef{d})
	t.Logf("snapshot retaken %d times while the commit was invisible", st.Retakes)
}

// SIGKILL of the snapshotting consumer mid-snapshot, then of every consumer:
// the half-written generation is never served, and a new consumer redoes
// the snapshot as a new generation; the shape equals its query.
func TestSnapshotRedoneAfterSnapshottingConsumerIsKilled(t *testing.T) {
	s := newStack(t)
	s.env = append(s.env, "FANOUT_SNAPSHOT_LEASE=2s", "FANOUT_SNAPSHOT_CHUNK_ROWS=2000")
	s.exec(itemsTable)
	const rows = 600_000
	s.exec(fmt.Sprintf(`INSERT INTO items SELECT g, g %% 10, 'a' || g, repeat('x', 200) FROM generate_series(1, %d) g`, rows))
	s.startFlushd()
	c1, c2 := s.startConsumer("c1"), s.startConsumer("c2")
	s.startIngest()
	s.waitSlot()
	stop := make(chan struct{})
	wg := s.writers(1, rows, stop)

	d := s.addShape("public.items", "")
	var owner string
	testenv.Eventually(t, time.Minute, "the snapshot to have written chunks", func() bool {
		st := s.shapeState(d.handle)
		if st.Phase == shapestate.Ready {
			t.Fatal("snapshot finished before it could be killed; make the table bigger")
		}
		owner = st.Owner
		chunks, _ := filepath.Glob(filepath.Join(s.storageDir(), "shapes", d.handle, "snapshot", "g*", "chunk-*"))
		return st.Phase == shapestate.Snapshotting && len(chunks) > 1
	})
	victim, other := c1, c2
	if owner == "c2" {
		victim, other = c2, c1
	}
	victim.Kill()
	if snap, err := shapelog.CurrentSnapshot(s.storageDir(), d.handle); err != nil || snap != nil {
		t.Fatalf("a half-written snapshot is served: %+v, %v", snap, err)
	}
	if _, errOut, err := testenv.Run(t, "fanoutctl", []string{"shape", "rows", d.handle}, s.env...); err == nil || !strings.Contains(errOut, "not ready") {
		t.Fatalf("shape rows of a shape whose snapshot was killed: %v %q", err, errOut)
	}
	// Ingest and flushd restart during the snapshot: nothing is lost.
	s.procs["ingest"].Kill()
	s.procs["flushd"].Kill()
	s.startFlushd()
	s.startIngest()
	// The survivor takes it over after the lease; kill it mid-way too.
	// Mid-way: its chunks are on disk (they show before its progress does,
	// which comes with a lease renewal: a snapshot of this table takes
	// about as long as one, since snapshots got faster).
	testenv.Eventually(t, time.Minute, "another consumer to take the snapshot over", func() bool {
		st := s.shapeState(d.handle)
		if st.Phase == shapestate.Ready {
			t.Fatal("the snapshot taken over finished before it could be killed; make the table bigger")
		}
		chunks, _ := filepath.Glob(filepath.Join(s.storageDir(), "shapes", d.handle, "snapshot", fmt.Sprintf("g%d", st.Generation), "chunk-*"))
		return st.Phase == shapestate.Snapshotting && st.Generation >= 2 && len(chunks) > 1
	})
	other.Kill()
	s.startConsumer("c3")
	st := s.waitReady(d.handle, 2*time.Minute)
	if st.Generation < 3 {
		t.Fatalf("ready at generation %d after two killed snapshots, want a new generation (>= 3)", st.Generation)
	}
	close(stop)
	wg.Wait()
	s.drain()
	s.checkExact([]shapeDef{d})
	gens, _ := filepath.Glob(filepath.Join(s.storageDir(), "shapes", d.handle, "snapshot", "g*"))
	if len(gens) != 1 {
		t.Fatalf("generation folders left: %v, want only the ready one", gens)
	}
}

// peakRSS is a process's peak resident set (VmHWM) in KiB.
func peakRSS(t *testing.T, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			n, _ := strconv.Atoi(strings.Fields(line)[1])
			return n
		}
	}
	return 0
}

// A large shape: the snapshotting consumer's memory does not grow with the
// shape, and the slot's WAL is released while the snapshot runs.
func TestLargeSnapshotBoundedMemoryAndWALReleased(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	rows := 2_000_000 // the size: about 20 s here, most of it the INSERT
	if v, err := strconv.Atoi(os.Getenv("FANOUT_SNAPSHOT_TEST_ROWS")); err == nil {
		rows = v
	}
	s.exec(fmt.Sprintf(`INSERT INTO items SELECT g, g %% 10, 'a' || g, repeat('y', 100) FROM generate_series(1, %d) g`, rows))
	s.startFlushd()
	c := s.startConsumer("c1")
	ing := s.startIngest()
	s.waitSlot()
	start := time.Now()
	d := s.addShape("public.items", "owner <> 7")
	testenv.Eventually(t, time.Minute, "the snapshot to start", func() bool {
		return s.shapeState(d.handle).Phase == shapestate.Snapshotting
	})
	// Writes during the snapshot are confirmed before it ends: WAL is not pinned.
	s.exec(`INSERT INTO items VALUES (5000001, 1, 'during', NULL)`)
	during := s.currentWAL()
	released := false
	testenv.Eventually(t, 2*time.Minute, "the snapshot to finish", func() bool {
		st := s.shapeState(d.handle)
		if st.Phase != shapestate.Ready && s.confirmedFlush() >= during {
			released = true
		}
		return st.Phase == shapestate.Ready
	})
	took := time.Since(start)
	st := s.shapeState(d.handle)
	var want int64
	s.conn.QueryRow(context.Background(), `SELECT count(*) FROM items WHERE owner <> 7`).Scan(&want)
	s.drain()
	snap, err := shapelog.CurrentSnapshot(s.storageDir(), d.handle)
	if err != nil || snap == nil {
		t.Fatalf("no snapshot: %v", err)
	}
	rssC, rssI := peakRSS(t, c.Pid()), peakRSS(t, ing.Pid())
	t.Logf("%d-row shape: snapshot %d rows, %d MB in %d chunks, shape add to ready %s (%.0f rows/s); peak RSS consumer %d MB, ingest %d MB; WAL released during the snapshot: %v",
		rows, st.Rows, st.Bytes>>20, st.Chunks, took.Round(time.Millisecond), float64(st.Rows)/took.Seconds(), rssC>>10, rssI>>10, released)
	if st.Rows < want-1 || st.Rows > want {
		t.Fatalf("snapshot holds %d rows, the query %d", st.Rows, want)
	}
	if limit := 150 << 10; rssC > limit {
		t.Fatalf("consumer peak RSS %d MB while snapshotting %d MB of rows: memory grows with the shape", rssC>>10, st.Bytes>>20)
	}
	if !released {
		t.Logf("the snapshot finished before confirmed_flush_lsn passed the write made during it (snapshot too short to tell)")
	}
}

// A TRUNCATE issued while a snapshot reads the table waits for it (the
// snapshot holds ACCESS SHARE from before its pg_current_snapshot()), then
// reaches the shape as a change the snapshot did not see: the shape ends
// empty but for the rows inserted after, exactly as the query.
func TestTruncateDuringSnapshot(t *testing.T) {
	s := newStack(t)
	s.env = append(s.env, "FANOUT_SNAPSHOT_CHUNK_ROWS=2000")
	s.exec(itemsTable)
	s.exec(`INSERT INTO items SELECT g, g % 10, 'a' || g, repeat('x', 200) FROM generate_series(1, 300000) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	d := s.addShape("public.items", "owner < 5")
	testenv.Eventually(t, time.Minute, "the snapshot to be reading", func() bool {
		chunks, _ := filepath.Glob(filepath.Join(s.storageDir(), "shapes", d.handle, "snapshot", "g*", "chunk-*"))
		return len(chunks) > 0
	})
	s.exec(`BEGIN; TRUNCATE items; INSERT INTO items SELECT g, g % 10, 'after', NULL FROM generate_series(1, 50) g; COMMIT`)
	s.waitReady(d.handle, time.Minute)
	s.drain()
	s.checkExact([]shapeDef{d})
	if n := len(s.shapeRows(d.handle)); n != 25 {
		t.Fatalf("%d rows after the truncate, want the 25 inserted after it", n)
	}
}

// A snapshot that cannot be taken (a column of the shape was dropped) marks
// that shape failed, visible in status and shape rows, and blocks no other.
func TestFailingSnapshotMarksOnlyItsShapeFailed(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.exec(`CREATE TABLE other (id int PRIMARY KEY, v text)`)
	s.exec(`INSERT INTO items SELECT g, g % 10, 'a' || g, 'b' FROM generate_series(1, 1000) g`)
	s.exec(`INSERT INTO other SELECT g, 'v' || g FROM generate_series(1, 100) g`)
	s.startFlushd()
	s.startIngest()
	s.waitSlot()
	doomed := s.addShape("public.items", "owner = 1")
	fine := s.addShape("public.other", "")
	s.exec(`ALTER TABLE items DROP COLUMN body`)
	s.startConsumer("c1")
	testenv.Eventually(t, time.Minute, "the doomed shape to be marked failed", func() bool {
		return s.shapeState(doomed.handle).Phase == shapestate.Failed
	})
	s.waitReady(fine.handle, time.Minute)
	s.checkExact([]shapeDef{fine})
	st := s.shapeState(doomed.handle)
	if !strings.Contains(st.Error, "body (dropped)") {
		t.Fatalf("failed shape's error %q does not name the dropped column", st.Error)
	}
	if out := s.ctl("status"); !strings.Contains(out, "snapshot failed "+doomed.handle) {
		t.Fatalf("status does not show the failed snapshot:\n%s", out)
	}
	_, errOut, err := testenv.Run(t, "fanoutctl", []string{"shape", "rows", doomed.handle}, s.env...)
	if err == nil || !strings.Contains(errOut, "failed its initial snapshot") {
		t.Fatalf("shape rows of a failed shape: %v %q", err, errOut)
	}
}
