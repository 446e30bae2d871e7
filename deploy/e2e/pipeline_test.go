package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

const itemsTable = `CREATE TABLE items (id int PRIMARY KEY, owner int, title text, body text)`

// itemShapes are the shapes most tests use: equality, IN + LIKE, everything,
// and a projection.
func itemShapes(s *stack) []shapeDef {
	return []shapeDef{
		s.addShape("public.items", "owner = 1"),
		s.addShape("public.items", "owner = 2"),
		s.addShape("public.items", "owner IN (3, 4) AND title LIKE 'a%'"),
		s.addShape("public.items", ""),
		s.addShape("public.items", "owner = 1", "id", "title"),
	}
}

// drain waits until everything committed so far is confirmed to Postgres.
func (s *stack) drain() {
	s.t.Helper()
	s.waitConfirmed(s.currentWAL(), 90*time.Second)
}

func TestShapeLogsEqualTheirQueries(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.recordHistory("public.items")
	defs := itemShapes(s)
	s.startFlushd()
	s.startConsumer("c1")
	s.startConsumer("c2")
	s.startIngest()
	s.waitSlot()

	s.exec(`INSERT INTO items SELECT g, g % 5, CASE WHEN g % 2 = 0 THEN 'a' || g ELSE 'b' || g END, NULL FROM generate_series(1, 300) g`)
	s.exec(`UPDATE items SET owner = 2 WHERE id % 7 = 0`)           // moves out of owner = 1, into owner = 2
	s.exec(`UPDATE items SET title = 'a-moved' WHERE id % 11 = 0`)  // moves into the LIKE shape
	s.exec(`DELETE FROM items WHERE id % 13 = 0`)                   // deletes
	s.exec(`UPDATE items SET id = id + 1000 WHERE id IN (1, 2, 3)`) // primary key changes
	// A TOASTed value, then updates that leave it unchanged, one of which
	// moves the row into a shape: the shape must get the whole value.
	s.exec(`UPDATE items SET body = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 5000) g) WHERE id IN (50, 51)`)
	s.exec(`UPDATE items SET owner = 1 WHERE id = 50`)
	s.exec(`UPDATE items SET title = 'a50' WHERE id = 51`)
	s.exec(`BEGIN; INSERT INTO items VALUES (5000, 1, 'a', NULL); UPDATE items SET owner = 2 WHERE id = 5000; UPDATE items SET owner = 1 WHERE id = 5000; DELETE FROM items WHERE id = 4; COMMIT`)
	s.exec(`UPDATE items SET owner = NULL WHERE id = 6`)

	s.drain()
	s.checkShapes(defs)

	s.exec(`TRUNCATE items`)
	s.exec(`INSERT INTO items VALUES (1, 1, 'after truncate', NULL)`)
	s.drain()
	s.checkShapes(defs)
	if r := s.retainedWAL(); r > walSegment {
		t.Fatalf("slot retains %d bytes of WAL after load stopped, want under one segment (%d)", r, walSegment)
	}
}

// load runs small transactions, with moves between shapes, until stop is closed.
func (s *stack) load(stop <-chan struct{}, firstID int) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := pgx.Connect(context.Background(), s.pg.URL)
		if err != nil {
			s.t.Errorf("load: %v", err)
			return
		}
		defer conn.Close(context.Background())
		for id := firstID; ; id += 3 {
			select {
			case <-stop:
				return
			default:
			}
			batch := &pgx.Batch{}
			batch.Queue(`INSERT INTO items VALUES ($1, $1 % 3, 'a' || $1, NULL), ($1 + 1, 1, 'b', NULL), ($1 + 2, 2, 'c', NULL)`, id)
			batch.Queue(`UPDATE items SET owner = (owner + 1) % 3 WHERE id = $1 - 3`, id)
			err := conn.SendBatch(context.Background(), batch).Close()
			if err != nil {
				s.t.Errorf("load: %v", err)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return &wg
}

// status is `fanoutctl status --json`, parsed.
func (s *stack) status() map[string]any {
	s.t.Helper()
	var st map[string]any
	if err := json.Unmarshal([]byte(s.ctl("status", "--json")), &st); err != nil {
		s.t.Fatal(err)
	}
	return st
}

// boundTo counts the partitions bound to consumer id.
func (s *stack) boundTo(id string) int {
	n := 0
	bindings, _ := s.status()["bindings"].([]any)
	for _, b := range bindings {
		if m, ok := b.(map[string]any); ok && m["consumer"] == id {
			n++
		}
	}
	return n
}

// shapeOnConsumer adds shapes of every row to defs until one of defs sits in
// a partition bound to consumer id. Handles are random, so the few shapes a
// test starts with all land on the other consumer's partitions in about one
// run of 32 (with 8 partitions shared by two consumers), and then no load
// ever reaches id: freezing it while it holds fragments could not succeed.
func (s *stack) shapeOnConsumer(defs []shapeDef, id string) []shapeDef {
	s.t.Helper()
	for added := 0; ; added++ {
		owned := map[int]bool{}
		for _, b := range s.bindings() {
			if b.Consumer == id {
				owned[b.Partition] = true
			}
		}
		for _, d := range defs {
			if owned[fanout.Partition(d.handle, testPartitions)] {
				return defs
			}
		}
		if added == 40 { // each shape misses with probability 1/2
			s.t.Fatalf("40 more shapes and still none in a partition of %s (it owns %v)", id, owned)
		}
		defs = append(defs, s.addShape("public.items", ""))
	}
}

func TestKilledConsumerReleasesWALAndLogsStayExact(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.recordHistory("public.items")
	defs := itemShapes(s)
	s.startFlushd()
	c1 := s.startConsumer("c1")
	s.startConsumer("c2")
	s.startIngest()
	s.waitSlot()
	testenv.Eventually(t, 30*time.Second, "both consumers to own partitions", func() bool {
		return s.boundTo("c1") > 0 && s.boundTo("c2") > 0
	})

	defs = s.shapeOnConsumer(defs, "c1")

	stop := make(chan struct{})
	wg := s.load(stop, 1)
	testenv.Eventually(t, 30*time.Second, "load to be confirmed", func() bool { return s.confirmedFlush() > 0 })
	// The kill lands mid-batch: c1 holds delivered, unacked fragments.
	held := s.freezeHoldingFragments(c1, "c1")
	c1.Kill()
	t.Logf("killed c1 holding %d unacked fragments", held)
	killedAt := time.Now()
	atKill := s.currentWAL()
	s.waitConfirmed(atKill, 60*time.Second)
	recovery := time.Since(killedAt)
	t.Logf("confirmed_flush_lsn passed the WAL position of the kill %s after SIGKILL (heartbeat timeout %s)", recovery, heartbeatTimeout)
	if recovery > heartbeatTimeout+8*time.Second {
		t.Errorf("confirmed_flush_lsn took %s to move past the kill, want under timeout %s + a few seconds", recovery, heartbeatTimeout)
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()

	s.drain()
	s.checkShapes(defs)
	testenv.Eventually(t, 30*time.Second, "retained WAL under one segment", func() bool { return s.retainedWAL() < walSegment })
}

func TestZombieConsumerCannotCorruptLogs(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.recordHistory("public.items")
	defs := itemShapes(s)
	s.startFlushd()
	zombie := s.startConsumer("c1")
	s.startConsumer("c2")
	s.startIngest()
	s.waitSlot()
	testenv.Eventually(t, 30*time.Second, "both consumers to own partitions", func() bool {
		return s.boundTo("c1") > 0 && s.boundTo("c2") > 0
	})

	defs = s.shapeOnConsumer(defs, "c1")

	stop := make(chan struct{})
	wg := s.load(stop, 1)
	testenv.Eventually(t, 30*time.Second, "load to be confirmed", func() bool { return s.confirmedFlush() > 0 })
	held := s.freezeHoldingFragments(zombie, "c1")
	frozenAt := s.currentWAL()
	testenv.Eventually(t, 30*time.Second, "the stopped consumer's partitions to move", func() bool { return s.boundTo("c1") == 0 })
	s.waitConfirmed(frozenAt, 60*time.Second) // the new owners write past what the zombie holds
	zombie.Signal(syscall.SIGCONT)            // it wakes up mid-batch, believing it still owns its partitions
	testenv.Eventually(t, 30*time.Second, "the woken consumer to report that it lost its partitions", func() bool {
		return fencedMessage(zombie.Output()) != ""
	})
	t.Logf("the zombie was frozen holding %d unacked fragments and, woken, said: %s", held, fencedMessage(zombie.Output()))
	close(stop)
	wg.Wait()

	s.drain()
	s.checkShapes(defs)
	logs := scanShapeLogs(t, s.storageDir())
	t.Logf("the logs hold %d frames the zombie wrote at its old epoch (skipped by readers) and %d duplicate frames", logs.zombieFrames, logs.rawDups)
	if logs.brokenTxns > 0 {
		t.Errorf("%d transactions in the shape logs lack or repeat a fragment", logs.brokenTxns)
	}
}

// fencedMessage is the line in which a consumer says it stopped writing a
// partition that was bound away from it, or "".
func fencedMessage(output string) string {
	for _, line := range strings.Split(output, "\n") {
		if strings.Contains(line, "owned by a newer epoch") || strings.Contains(line, "partition moved away") {
			return line
		}
	}
	return ""
}

// freezeHoldingFragments SIGSTOPs consumer id so that it holds delivered,
// unacked fragments of a partition it owns (so it wakes up mid-batch), and
// returns how many. It stops the process first and then lets JetStream prove
// the hold: an idle worker always has a pull outstanding (fetchWait, 1 s), so
// the load's next fragment on one of its partitions is delivered into the
// stopped process. Sampling for a batch in flight before the stop missed
// often once consumers got fast. Pending counts read 200 ms after the stop
// are past any ack in flight at it. Bounded by a deadline.
func (s *stack) freezeHoldingFragments(p *testenv.Process, id string) int {
	s.t.Helper()
	_, js := s.nats.Connect(s.t)
	ctx := context.Background()
	pending := func() int {
		n := 0
		for _, b := range s.bindings() {
			if b.Consumer != id {
				continue
			}
			c, err := js.Consumer(ctx, fanout.StreamName, fanout.ConsumerGroupName(b.Partition, b.Epoch))
			if err != nil {
				continue
			}
			if info, err := c.Info(ctx); err == nil {
				n += info.NumAckPending
			}
		}
		return n
	}
	deadline := time.Now().Add(90 * time.Second)
	for attempt := 1; time.Now().Before(deadline); attempt++ {
		p.Signal(syscall.SIGSTOP)
		testenv.Eventually(s.t, 5*time.Second, p.Name+" to be stopped", func() bool { return processState(p.Pid()) == 'T' })
		stoppedAt := time.Now()
		time.Sleep(200 * time.Millisecond) // acks sent before the stop land
		// Under the heartbeat timeout (2 s), so that a miss leaves the
		// consumer its partitions for the next attempt.
		for time.Since(stoppedAt) < 1200*time.Millisecond {
			if held := pending(); held > 0 {
				s.t.Logf("froze %s holding %d unacked fragments (attempt %d)", id, held, attempt)
				return held
			}
			time.Sleep(50 * time.Millisecond)
		}
		p.Signal(syscall.SIGCONT) // no delivery reached it while stopped: let it pull again
		s.t.Logf("attempt %d: no fragment reached the stopped %s; again once it owns partitions", attempt, id)
		testenv.Eventually(s.t, 30*time.Second, id+" to own partitions again", func() bool { return s.boundTo(id) > 0 })
		time.Sleep(300 * time.Millisecond) // it pulls again
	}
	s.t.Fatalf("could not freeze %s while it held unacked fragments within 90 s", id)
	return 0
}

// bindings are the partition bindings fanoutctl status reports.
func (s *stack) bindings() []fanout.Binding {
	s.t.Helper()
	var st struct {
		Bindings []fanout.Binding `json:"bindings"`
	}
	if err := json.Unmarshal([]byte(s.ctl("status", "--json")), &st); err != nil {
		s.t.Fatal(err)
	}
	return st.Bindings
}

// publishedLSN is ingest's published LSN (everything below it is in
// JetStream), as fanoutctl status reports it.
func (s *stack) publishedLSN() pglogrepl.LSN {
	s.t.Helper()
	var st struct {
		Ingest *fanout.IngestProgress `json:"ingest"`
	}
	if err := json.Unmarshal([]byte(s.ctl("status", "--json")), &st); err != nil {
		s.t.Fatal(err)
	}
	if st.Ingest == nil {
		return 0
	}
	lsn, err := pglogrepl.ParseLSN(st.Ingest.Published)
	if err != nil {
		s.t.Fatalf("status: ingest published LSN %q: %v", st.Ingest.Published, err)
	}
	return lsn
}

func TestKilledIngestResumesWithoutLossOrDuplicates(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.recordHistory("public.items")
	defs := itemShapes(s)
	s.startFlushd()
	s.startConsumer("c1")
	ingest := s.startIngest()
	s.waitSlot()

	stop := make(chan struct{})
	wg := s.load(stop, 1)
	testenv.Eventually(t, 30*time.Second, "load to be confirmed", func() bool { return s.confirmedFlush() > 0 })
	// Kill ingest with work in flight: changes published to JetStream but
	// not yet confirmed to Postgres (read and published again after the
	// restart: duplicates), and changes committed but not yet published.
	// The moment is a race (confirmation follows publication within
	// milliseconds), so a kill that missed it is tried again, up to 10 times.
	var published, confirmed, committed pglogrepl.LSN
	for attempt := 1; ; attempt++ {
		testenv.Eventually(t, 30*time.Second, "ingest to have published changes Postgres has not confirmed", func() bool {
			return s.publishedLSN() > s.confirmedFlush()
		})
		ingest.Kill()
		published, confirmed, committed = s.publishedLSN(), s.confirmedFlush(), s.currentWAL()
		// Nothing confirms while ingest is dead: these are what it left.
		if confirmed < published && published < committed {
			break
		}
		if attempt == 10 {
			t.Fatalf("at the kill confirmed_flush_lsn %s, published %s, committed WAL %s: want confirmed < published < committed (work in flight); missed 10 times", confirmed, published, committed)
		}
		t.Logf("kill %d missed the work in flight (confirmed %s, published %s, committed %s); again", attempt, confirmed, published, committed)
		ingest = s.startIngest()
	}
	t.Logf("killed ingest with %d bytes of WAL published but unconfirmed and %d committed but unpublished", published-confirmed, committed-published)
	s.startIngest()
	s.waitConfirmed(committed, 60*time.Second) // the new ingest resumed past the kill
	close(stop)
	wg.Wait()

	s.drain()
	s.checkShapes(defs)
}

func TestRemovedShapeNeverPinsWAL(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	busy := s.addShape("public.items", "owner = 1")
	s.startFlushd()
	s.startIngest()
	s.waitSlot()
	// No consumer runs: the shape's fragments stay pending and pin the safe LSN.
	s.exec(`INSERT INTO items SELECT g, 1, 'x', NULL FROM generate_series(1, 100) g`)
	pinned := s.currentWAL()
	time.Sleep(2 * time.Second)
	if c := s.confirmedFlush(); c >= pinned {
		t.Log(s.ctl("status"))
		t.Fatalf("confirmed_flush_lsn %s passed unpersisted changes at %s", c, pinned)
	}
	st := s.status()
	safe, _ := st["safe"].(map[string]any)
	blocking, _ := safe["blocking"].(map[string]any)
	if blocking == nil || blocking["shape"] != busy.handle {
		t.Fatalf("status does not name the blocking shape %s: %v", busy.handle, safe)
	}
	s.ctl("shape", "rm", busy.handle)
	s.waitConfirmed(pinned, 30*time.Second)
}

func TestIdleAndUnshapedTrafficReleasesWAL(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.exec(`CREATE TABLE other (id serial PRIMARY KEY, payload text)`)
	s.addShape("public.items", "owner = 1")
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	// 40 MB of WAL in transactions that touch no shape.
	for i := 0; i < 4; i++ {
		s.exec(`INSERT INTO other (payload) SELECT repeat(md5(g::text), 30) FROM generate_series(1, 10000) g`)
	}
	start := s.currentWAL()
	s.waitConfirmed(start, 60*time.Second)
	// Idle: nothing else happens; the slot must still not fall behind.
	time.Sleep(3 * time.Second)
	testenv.Eventually(t, 30*time.Second, "idle slot lag under one segment", func() bool { return s.retainedWAL() < walSegment })
	if r := s.retainedWAL(); r > walSegment {
		t.Fatalf("idle slot retains %d bytes", r)
	}
}
