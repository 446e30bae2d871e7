package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
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

// Guarantee 7, never stale in silence: each way the replication stream's
// continuity breaks (issue 26), with shapes holding data, live Electric
// clients following, and a client coming back after the episode with the
// handle and offset it had before. Each episode must end with every shape
// equal to SELECT, each client equal after at most one 409, retained WAL
// under one segment, and the reset in status, metrics and logs. One stack
// serves every episode but the failover (TestContinuityFailover).

const otherTable = `CREATE TABLE other (id int4 PRIMARY KEY, owner int4, title text NOT NULL DEFAULT '')`

// contStack is the stack of the continuity episodes.
type contStack struct {
	*stack
	url    string // /v1/shape
	api    string // the shape API's base URL
	items  *client
	others *client
	nextID int
	resets int // resets reported so far
}

func newContStack(t *testing.T, s *stack) *contStack {
	c := &contStack{stack: s, nextID: 1000}
	s.env = append(s.env, "FANOUT_INGEST_CONTINUITY_CHECK_INTERVAL=1s")
	s.exec(electricItems)
	s.exec(otherTable)
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g FROM generate_series(1, 90) g`)
	s.exec(`INSERT INTO other SELECT g, g % 2, 'o' || g FROM generate_series(1, 40) g`)
	// An operator's publication with a table list: tables can leave it.
	s.exec(`CREATE PUBLICATION fanout FOR TABLE items, other`)
	s.addShape("public.items", "owner = 2")
	s.addShape("public.other", "owner = 1")
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	c.url = s.startShapeAPI()
	c.api = strings.TrimSuffix(c.url, "/v1/shape")
	c.items = s.startClient("live-items", clientArgs{Client: "1.5", URL: c.url, Params: map[string]any{"table": "items", "where": "owner = 1"}, Record: true})
	c.others = s.startClient("sse-other", clientArgs{Client: "1.5", URL: c.url, Params: map[string]any{"table": "other"}, SSE: true, Record: true})
	s.waitEqual(c.items, "items", "owner = 1", nil)
	s.waitEqual(c.others, "other", "", nil)
	return c
}

// write commits n transactions touching both tables: inserts into every
// shape, updates that move rows between shapes, a delete.
func (c *contStack) write(conn *pgx.Conn, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for range n {
		id := c.nextID
		c.nextID++
		_, err := conn.Exec(ctx, fmt.Sprintf(`BEGIN;
			INSERT INTO items (id, owner, title) VALUES (%[1]d, %[1]d %% 3, 'w%[1]d');
			UPDATE items SET owner = (owner + 1) %% 3, title = 'moved%[1]d' WHERE id = %[1]d %% 90 + 1;
			INSERT INTO other (id, owner, title) VALUES (%[1]d, %[1]d %% 2, 'ow%[1]d');
			DELETE FROM other WHERE id = %[1]d - 5;
			COMMIT`, id))
		if err != nil {
			return err
		}
	}
	return nil
}

// writeNow writes with the test's connection and fails the test on error.
func (c *contStack) writeNow(n int) {
	c.t.Helper()
	if err := c.write(c.conn, n); err != nil {
		c.t.Fatal(err)
	}
}

// refetches counts the must-refetch messages (409s) client cl received.
func refetches(cl *client) int {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	n := 0
	for _, m := range cl.msgs {
		if h, _ := m["headers"].(map[string]any); h["control"] == "must-refetch" {
			n++
		}
	}
	return n
}

// position is where a client that stops now would resume: handle and
// offset after it was up to date.
func (c *contStack) position(name string) (handle, offset string) {
	c.t.Helper()
	cl := c.startClient(name, clientArgs{Client: "1.5", URL: c.url, Params: map[string]any{"table": "items", "where": "owner = 1"}, Mode: "messages", Once: true})
	select {
	case <-cl.done:
	case <-time.After(60 * time.Second):
		c.t.Fatalf("client %s did not get up to date", name)
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.hand == "" || cl.off == "" {
		c.t.Fatalf("client %s ended without a handle and offset: %s", name, cl.out.String())
	}
	return cl.hand, cl.off
}

// continuity is ingest's continuity report, as fanoutctl status shows it.
func (c *contStack) continuity() *fanout.Continuity {
	c.t.Helper()
	var st struct {
		Continuity *fanout.Continuity `json:"continuity"`
	}
	if err := json.Unmarshal([]byte(c.ctl("status", "--json")), &st); err != nil {
		c.t.Fatal(err)
	}
	return st.Continuity
}

// ingestMetric reads one series of ingest's /metrics (-1: absent).
func (c *contStack) ingestMetric(series string) float64 {
	c.t.Helper()
	return c.metric("ingest", series)
}

// metric reads one series of a service's /metrics (-1: absent).
func (c *contStack) metric(service, series string) float64 {
	c.t.Helper()
	_, body := get("http://" + httpAddr(c.t, c.procs[service]) + "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// health is the shape API's /v1/health status code and body.
func (c *contStack) health() (int, string) { return get(c.api + "/v1/health") }

// waitBroken waits until ingest reports the stream broken with cause, and
// checks that the shape API is not active meanwhile.
func (c *contStack) waitBroken(cause string, since time.Time) *fanout.Continuity {
	c.t.Helper()
	var cont *fanout.Continuity
	testenv.Eventually(c.t, 60*time.Second, "ingest to report the break ("+cause+")", func() bool {
		cont = c.continuity()
		return cont != nil && cont.State == fanout.Broken && cont.Break.Cause == cause
	})
	c.t.Logf("the break (%s) is reported %s after it happened", cause, time.Since(since).Round(100*time.Millisecond))
	code, body := c.health()
	if code == http.StatusOK {
		c.t.Errorf("/v1/health answers %d %s while continuity is broken", code, body)
	}
	return cont
}

// contEpisode is what one break is expected to do.
type contEpisode struct {
	name     string
	cause    string    // "": no reset expected
	at       time.Time // when the break happened
	repaired time.Time // when an operator repaired what broke (zero: nothing to repair)
	tables   []string  // tables whose clients get one 409 (all: nil and cause set)
	returner [2]string // handle and offset of the client that comes back
}

func (e contEpisode) affects(table string) bool {
	if e.cause == "" {
		return false
	}
	if len(e.tables) == 0 {
		return true
	}
	for _, t := range e.tables {
		if t == table {
			return true
		}
	}
	return false
}

// check waits for the episode's end and checks everything the guarantee says.
func (c *contStack) check(e contEpisode, before map[*client]int) {
	c.t.Helper()
	t := c.t
	if e.cause != "" {
		c.resets++
		testenv.EventuallyErr(t, 2*time.Minute, e.name+": the reset and its resync to complete", func() error {
			cont := c.continuity()
			switch {
			case cont == nil:
				return fmt.Errorf("no continuity report")
			case int(cont.Resets) != c.resets || cont.LastReset == nil || cont.LastReset.Cause != e.cause:
				return fmt.Errorf("resets %d, last %+v; want %d resets, the last by %s", cont.Resets, cont.LastReset, c.resets, e.cause)
			case cont.State != fanout.Continuous:
				return fmt.Errorf("state %s (%d resyncing)", cont.State, cont.LastReset.Resyncing)
			}
			return nil
		})
	}
	c.waitEqual(c.items, "items", "owner = 1", nil)
	c.waitEqual(c.others, "other", "", nil)
	equalAt := time.Since(e.at)
	c.checkListedShapes()

	for cl, table := range map[*client]string{c.items: "public.items", c.others: "public.other"} {
		want := before[cl]
		if e.affects(table) {
			want++
		}
		if got := refetches(cl); got != want {
			t.Errorf("%s: client %s got %d 409s in all, want %d", e.name, cl.name, got, want)
		}
	}
	back := c.startClient(e.name+"-returning", clientArgs{Client: "1.5", URL: c.url, Params: map[string]any{"table": "items", "where": "owner = 1"},
		Handle: e.returner[0], Offset: e.returner[1], Record: true})
	want := 0
	if e.affects("public.items") {
		// After its 409 it fetches the new handle from the start.
		want = 1
		c.waitEqual(back, "items", "owner = 1", nil)
	} else {
		// It resumes where it was: it holds the rows changed since.
		c.waitChangesEqual(back, "items", "owner = 1")
	}
	if got := refetches(back); got != want {
		t.Errorf("%s: the client back with its handle and offset got %d 409s, want %d", e.name, got, want)
	}

	if e.cause != "" {
		out := c.procs["ingest"].Output()
		if !regexp.MustCompile(`level=ERROR msg="replication continuity broken[^\n]*cause=` + e.cause).MatchString(out) {
			t.Errorf("%s: ingest logged no ERROR naming the break's cause %s", e.name, e.cause)
		}
		if n := c.ingestMetric(`fanout_ingest_replication_resets_total{cause="` + e.cause + `"}`); n < 1 {
			t.Errorf("%s: fanout_ingest_replication_resets_total{cause=%q} is %v", e.name, e.cause, n)
		}
		if status := c.ctl("status"); !strings.Contains(status, "last reset") || !strings.Contains(status, e.cause) {
			t.Errorf("%s: fanoutctl status does not show the reset:\n%s", e.name, status)
		}
	}
	if n := c.ingestMetric("fanout_ingest_shapes_resyncing"); n != 0 {
		t.Errorf("%s: fanout_ingest_shapes_resyncing is %v after the resync", e.name, n)
	}
	if code, body := c.health(); code != http.StatusOK {
		t.Errorf("%s: /v1/health %d %s after the resync", e.name, code, body)
	}
	c.drain()
	testenv.Eventually(t, 60*time.Second, "retained WAL under one segment", func() bool { return c.retainedWAL() < walSegment })
	repair := ""
	if !e.repaired.IsZero() {
		repair = fmt.Sprintf(", %s after the operator's repair", (equalAt - e.repaired.Sub(e.at)).Round(100*time.Millisecond))
	}
	t.Logf("%s: every client and shape equals SELECT %s after the break%s (cause %q)", e.name, equalAt.Round(100*time.Millisecond), repair, e.cause)
}

// waitChangesEqual waits until client cl, which resumed from an offset
// (so holds only the rows changed since), is up to date and each row it
// holds equals the query's row of the same id.
func (c *contStack) waitChangesEqual(cl *client, table, where string) {
	c.t.Helper()
	byID := map[float64]string{}
	for _, r := range c.expectedClientRows(table, where, nil) {
		b, _ := json.Marshal(r)
		byID[r["id"].(float64)] = string(b)
	}
	testenv.EventuallyErr(c.t, 60*time.Second, "client "+cl.name+" to hold the changes since its offset", func() error {
		rows, _, errs := cl.state()
		if len(errs) > 0 {
			c.t.Fatalf("client %s stopped with an error: %v", cl.name, errs)
		}
		if rows == nil {
			return fmt.Errorf("not up to date yet")
		}
		for _, r := range rows {
			b, _ := json.Marshal(normalize(r))
			if want := byID[r["id"].(float64)]; string(b) != want {
				return fmt.Errorf("row %s, SELECT has %q", b, want)
			}
		}
		return nil
	})
}

// checkListedShapes checks every shape fanoutctl lists against its query.
func (c *contStack) checkListedShapes() {
	c.t.Helper()
	var list []struct {
		Handle  string   `json:"handle"`
		Table   string   `json:"table"`
		Where   string   `json:"where"`
		Columns []string `json:"columns"`
	}
	if err := json.Unmarshal([]byte(c.ctl("shape", "ls", "--json")), &list); err != nil {
		c.t.Fatal(err)
	}
	var defs []shapeDef
	for _, sh := range list {
		defs = append(defs, shapeDef{handle: sh.Handle, table: sh.Table, where: sh.Where, columns: sh.Columns})
	}
	c.checkShapeRows(defs, 60*time.Second)
}

func (c *contStack) counts() map[*client]int {
	return map[*client]int{c.items: refetches(c.items), c.others: refetches(c.others)}
}

// restartIngest stops ingest, runs between, and starts it again.
func (c *contStack) restartIngest(between func()) {
	c.t.Helper()
	if err := c.procs["ingest"].Stop(60 * time.Second); err != nil {
		c.t.Fatalf("ingest did not stop cleanly: %v", err)
	}
	// Its walsender may outlive it by a moment.
	testenv.Eventually(c.t, 30*time.Second, "the slot to be released by ingest's walsender", func() bool {
		var active bool
		err := c.conn.QueryRow(context.Background(), `SELECT active FROM pg_replication_slots WHERE slot_name = 'fanout'`).Scan(&active)
		return err == nil && !active
	})
	between()
	c.startIngest()
}

func TestContinuityEpisodes(t *testing.T) {
	c := newContStack(t, newStack(t))
	s := c.stack
	// One stack for every episode, in order; a failed check does not stop
	// the episodes after it (t.Errorf), a failed wait does.
	run := func(name string, f func()) {
		t.Logf("---- episode: %s", name)
		f()
	}

	run("postgres restart under load", func() {
		h, o := c.position("before-restart")
		before := c.counts()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var mu sync.Mutex
		wg.Go(func() { // a writer that reconnects across the restart
			var conn *pgx.Conn
			for {
				select {
				case <-stop:
					if conn != nil {
						conn.Close(context.Background())
					}
					return
				default:
				}
				if conn == nil {
					cc, err := pgx.Connect(context.Background(), s.pg.URL)
					if err != nil {
						time.Sleep(100 * time.Millisecond)
						continue
					}
					conn = cc
				}
				mu.Lock()
				err := c.write(conn, 1)
				mu.Unlock()
				if err != nil {
					conn.Close(context.Background())
					conn = nil
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
		time.Sleep(2 * time.Second)
		at := time.Now()
		s.pg.Stop(t) // immediate: a crash
		s.pg.Start(t)
		s.reconnect()
		// A shape added right after the restart: the snapshot pool's
		// connections from before it are dead.
		fresh := s.addShape("public.items", "owner = 0")
		time.Sleep(2 * time.Second)
		close(stop)
		wg.Wait()
		// Its snapshot met the connections the restart closed: they are
		// replaced, and never counted against snapshot.max_attempts.
		if st := s.waitReady(fresh.handle, 2*time.Minute); st.Attempts != 0 || st.Error != "" {
			t.Errorf("the snapshot of a shape added after the restart failed %d attempts (%s)", st.Attempts, st.Error)
		}
		c.check(contEpisode{name: "restart", at: at, returner: [2]string{h, o}}, before)
		if cont := c.continuity(); cont == nil || cont.Resets != 0 || cont.State != fanout.Continuous {
			t.Errorf("a Postgres restart reported as a break of continuity: %+v", cont)
		}
	})

	run("slot dropped while ingest was stopped", func() {
		h, o := c.position("before-drop")
		before := c.counts()
		var at time.Time
		c.restartIngest(func() {
			at = time.Now()
			s.exec(`SELECT pg_drop_replication_slot('fanout')`)
			c.writeNow(109)
		})
		c.check(contEpisode{name: "slot dropped", cause: "slot_missing", at: at, returner: [2]string{h, o}}, before)
	})

	run("slot dropped and recreated", func() {
		h, o := c.position("before-recreate")
		before := c.counts()
		var at time.Time
		c.restartIngest(func() {
			at = time.Now()
			s.exec(`SELECT pg_drop_replication_slot('fanout')`)
			c.writeNow(50)
			s.exec(`SELECT pg_create_logical_replication_slot('fanout', 'pgoutput')`)
			c.writeNow(59)
		})
		c.check(contEpisode{name: "slot recreated", cause: "slot_moved", at: at, returner: [2]string{h, o}}, before)
	})

	run("slot advanced", func() {
		h, o := c.position("before-advance")
		before := c.counts()
		var at time.Time
		c.restartIngest(func() {
			at = time.Now()
			c.writeNow(109)
			// The advance stops at the flushed WAL (synchronous_commit is
			// off here): past the writes once the WAL writer flushed them.
			target := s.currentWAL()
			testenv.Eventually(t, 30*time.Second, "the writes to be flushed", func() bool {
				return s.queryLSN("SELECT pg_current_wal_flush_lsn()::text") >= target
			})
			s.exec(`SELECT pg_replication_slot_advance('fanout', $1::text::pg_lsn)`, target.String())
		})
		c.check(contEpisode{name: "slot advanced", cause: "slot_moved", at: at, returner: [2]string{h, o}}, before)
	})

	run("slot invalidated", func() {
		h, o := c.position("before-invalidation")
		before := c.counts()
		s.exec(`ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'`)
		s.exec(`SELECT pg_reload_conf()`)
		defer func() {
			s.exec(`ALTER SYSTEM RESET max_slot_wal_keep_size`)
			s.exec(`SELECT pg_reload_conf()`)
		}()
		s.exec(`CREATE TABLE IF NOT EXISTS wal_filler (n int)`)
		consumer := c.procs["c1"]
		consumer.Signal(syscall.SIGSTOP) // nothing persists: the safe LSN and the slot stand still
		at := time.Now()
		c.writeNow(70)
		switchWAL := func() { s.exec(`INSERT INTO wal_filler VALUES (1); SELECT pg_switch_wal()`) }
		// Two segments more behind: safe_wal_size (32 MB from the slot's
		// segment, which it is now past) falls under the warning margin,
		// half of max_slot_wal_keep_size.
		switchWAL()
		switchWAL()
		testenv.EventuallyErr(t, 30*time.Second, "ingest to warn that the slot is at risk", func() error {
			cont := c.continuity()
			if cont == nil || cont.Warning == "" {
				return fmt.Errorf("no warning in status: %+v", cont)
			}
			if n := c.ingestMetric("fanout_ingest_slot_wal_at_risk"); n != 1 {
				return fmt.Errorf("fanout_ingest_slot_wal_at_risk is %v", n)
			}
			return nil
		})
		if !strings.Contains(c.procs["ingest"].Output(), "at risk of invalidation") {
			t.Error("ingest logged no warning before the slot was lost")
		}
		t.Logf("warned before the loss: %s", c.continuity().Warning)
		switchWAL()
		switchWAL()
		c.writeNow(39)
		at = time.Now() // the break: the checkpoint removes the WAL the slot needs
		s.exec(`CHECKPOINT`)
		testenv.Eventually(t, 30*time.Second, "the slot to be invalidated", func() bool {
			var status *string
			s.conn.QueryRow(context.Background(), `SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'fanout'`).Scan(&status)
			return status == nil || *status == "lost"
		})
		testenv.Eventually(t, 60*time.Second, "ingest to take a new slot", func() bool {
			cont := c.continuity()
			return cont != nil && cont.LastReset != nil && cont.LastReset.Cause == "slot_invalidated"
		})
		consumer.Signal(syscall.SIGCONT)
		c.check(contEpisode{name: "slot invalidated", cause: "slot_invalidated", at: at, returner: [2]string{h, o}}, before)
	})

	run("table removed from the publication and added back", func() {
		h, o := c.position("before-table")
		before := c.counts()
		at := time.Now()
		s.exec(`ALTER PUBLICATION fanout DROP TABLE other`)
		c.writeNow(60)
		cont := c.waitBroken("table_left_publication", at)
		if len(cont.Break.Tables) != 1 || cont.Break.Tables[0] != "public.other" {
			t.Fatalf("break scope %v, want public.other only", cont.Break.Tables)
		}
		// Shapes of the table are not served as up to date meanwhile;
		// those of other tables are.
		if code, body := get(c.url + "?table=other&offset=-1"); code != http.StatusServiceUnavailable || !strings.Contains(body, "continuity") {
			t.Errorf("a request for a stale shape answered %d %s, want 503 naming the break", code, body)
		}
		if code, body := get(c.url + "?table=items&where=owner%20%3D%201&offset=-1"); code != http.StatusOK {
			t.Errorf("a request for a shape of another table answered %d %s", code, body)
		}
		if status := c.ctl("status"); !strings.Contains(status, "BROKEN") || !strings.Contains(status, "public.other") {
			t.Errorf("fanoutctl status does not say the table broke:\n%s", status)
		}
		c.writeNow(49)
		repaired := time.Now()
		s.exec(`ALTER PUBLICATION fanout ADD TABLE other`)
		c.check(contEpisode{name: "table left the publication", cause: "table_left_publication", at: at, repaired: repaired, tables: []string{"public.other"}, returner: [2]string{h, o}}, before)
	})

	run("publication dropped", func() {
		h, o := c.position("before-publication")
		before := c.counts()
		at := time.Now()
		s.exec(`DROP PUBLICATION fanout`)
		c.writeNow(60)
		c.waitBroken("publication_missing", at)
		// The slot cannot be read past the drop: ingest let go of it, so
		// it pins no WAL while it waits.
		testenv.Eventually(t, 30*time.Second, "the old slot to be dropped", func() bool {
			var n int
			s.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots`).Scan(&n)
			return n == 0
		})
		// flushd says the slot is missing, never that it lags by 0.
		testenv.EventuallyErr(t, 30*time.Second, "flushd to report the slot missing", func() error {
			exists, lag := c.metric("flushd", "fanout_flushd_slot_exists"), c.metric("flushd", "fanout_flushd_slot_lag_bytes")
			if exists != 0 || lag == lag { // NaN != NaN
				return fmt.Errorf("fanout_flushd_slot_exists %v, fanout_flushd_slot_lag_bytes %v", exists, lag)
			}
			return nil
		})
		if status := c.ctl("status"); !strings.Contains(status, "does not exist (ingest reported the break: publication_missing") {
			t.Errorf("fanoutctl status does not say why the slot is missing:\n%s", status)
		}
		c.writeNow(49)
		repaired := time.Now()
		s.exec(`CREATE PUBLICATION fanout FOR TABLE items, other`)
		c.check(contEpisode{name: "publication dropped", cause: "publication_missing", at: at, repaired: repaired, returner: [2]string{h, o}}, before)
	})

	if exited, err := c.procs["ingest"].Exited(); exited {
		t.Errorf("ingest exited: %v", err)
	}
}

// A failover: the primary is lost, a streaming standby (pg_basebackup) is
// promoted, and the services, given both hosts with
// target_session_attrs=read-write, reconnect to it. It is on a new
// timeline without the slot (Postgres 15 keeps no logical slot on a
// standby): ingest resyncs every shape from a new slot there.
func TestContinuityFailover(t *testing.T) {
	testenv.Binaries(t)
	n := testenv.StartNATS(t)
	s := newStackOn(t, n.URL, 1)
	s.nats = n
	primary := s.pg
	standby := primary.StartStandby(t)
	both := fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write", primary.Port, standby.Port)
	for i, kv := range s.env {
		if strings.HasPrefix(kv, "FANOUT_POSTGRES_URL=") {
			s.env[i] = "FANOUT_POSTGRES_URL=" + both
		}
	}
	c := newContStack(t, s)
	h, o := c.position("before-failover")
	before := c.counts()
	c.writeNow(50)
	// The standby holds everything committed so far (a clean failover:
	// what the shapes hold exists on the new primary).
	target := s.currentWAL()
	sb := standby.Connect(t)
	testenv.Eventually(t, 60*time.Second, "the standby to replay the primary's WAL", func() bool {
		var replayed string
		if err := sb.QueryRow(context.Background(), "SELECT pg_last_wal_replay_lsn()::text").Scan(&replayed); err != nil {
			return false
		}
		lsn, err := pglogrepl.ParseLSN(replayed)
		return err == nil && lsn >= target
	})
	sb.Close(context.Background())

	at := time.Now()
	primary.Stop(t)
	standby.Promote(t)
	s.pg = standby
	s.reconnect()
	c.writeNow(59)
	c.waitEqual(c.items, "items", "owner = 1", nil) // the writes after the failover arrive
	c.check(contEpisode{name: "failover", cause: "failover", at: at, returner: [2]string{h, o}}, before)
	var tli int
	s.conn.QueryRow(context.Background(), "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&tli)
	if out := c.procs["ingest"].Output(); !strings.Contains(out, "timeline") {
		t.Errorf("ingest's break does not name the timeline (the server is on timeline %d)", tli)
	}
}
