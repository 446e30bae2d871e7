package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// Detection and recovery settings of the chaos stack, set explicitly so the
// WAL bound below is computed from what the services really run with.
const (
	// chaosStallGrace: a live consumer whose oldest fragment does not move
	// for this long loses its partitions (flushd.stall_grace).
	chaosStallGrace = 3 * heartbeatTimeout
	// chaosAckTimeout: a publish lost with a NATS server is noticed and sent
	// again after this long (ingest.ack_timeout, its default).
	chaosAckTimeout = 10 * time.Second
	// chaosMaxBackoff: the longest ingest waits between retries after an
	// outage (ingest.max_backoff, its default; the consumers' cap is the same).
	chaosMaxBackoff = 5 * time.Second
)

// TestChaos runs a mixed workload over many shapes while a seeded random
// schedule kills, restarts and freezes every kind of process, then checks the
// oracle: every shape log equals its query and applies exactly the
// operations Postgres committed for its shape, in order (history_test.go),
// its transactions are whole (no fragment lost or repeated), and WAL was released and never retained beyond what the detection
// timeouts allow.
//
// `make test` runs a short schedule on one NATS server. `make chaos` sets
// FANOUT_CHAOS_DURATION (e.g. 5m), FANOUT_CHAOS_SERVERS=1, which also
// restarts Postgres (and a single NATS server), and FANOUT_CHAOS_CLUSTER=1,
// which runs a 3-node JetStream cluster with 3 replicas of the stream and
// buckets and restarts (crashes or stops) one node at a time.
func TestChaos(t *testing.T) {
	c := newChaos(t)
	s := c.s
	s.exec(itemsTable)
	s.recordHistory("public.items") // chaosLoad is the table's only writer
	var defs []shapeDef
	for owner := 0; owner < 40; owner++ {
		defs = append(defs, s.addShape("public.items", fmt.Sprintf("owner = %d", owner)))
	}
	defs = append(defs,
		s.addShape("public.items", "owner IN (41, 42) OR title LIKE 'z%'"),
		s.addShape("public.items", "owner > 30 AND body IS NOT NULL"),
		s.addShape("public.items", ""),
		s.addShape("public.items", "owner < 10", "id", "owner"),
	)
	s.startFlushd()
	for _, id := range c.consumers {
		s.startConsumer(id)
	}
	s.startIngest()
	s.waitSlot()

	var txns, changes atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.chaosLoad(stop, c.seed, &txns, &changes) }()
	var wal walSamples
	go func() { defer wg.Done(); wal.run(s, stop) }()

	c.run()
	close(stop)
	wg.Wait()

	c.restartExited()
	s.drain()
	mismatches := 0
	for _, d := range defs {
		want := s.expectedRows(d.table, d.where, d.columns)
		got := s.shapeRows(d.handle)
		if renderRows(got) != renderRows(want) {
			mismatches++
			t.Errorf("shape %s (WHERE %s) differs from its query: %s", d.handle, d.where, rowDiff(got, want))
		}
	}
	if mismatches > 0 {
		t.Logf("status after the drain:\n%s", s.ctl("status"))
	}
	var final int64
	testenv.Eventually(t, 30*time.Second, "retained WAL under one segment", func() bool {
		final = s.retainedWAL()
		return final < walSegment
	})
	bound := c.walBound(&wal)
	logs := scanShapeLogs(t, s.storageDir())
	checkStart := time.Now()
	logs.historyDiffs = s.checkLogsFollowHistory(defs)
	t.Logf("the logs were compared with the committed history in %s", time.Since(checkStart).Round(time.Millisecond))
	fmt.Printf("chaos: seed %d, %s, %s, processes killed %d, server restarts %d (NATS nodes %d), %s, transactions %d, changes %d, shapes %d, mismatches %d, max retained WAL %.1f MB, final retained WAL %.1f MB, %s, %s, %s\n",
		c.seed, c.duration, c.topology(), c.killed, c.serverRestarts, c.nodeRestarts, c.recoveries(), txns.Load(), changes.Load(), len(defs), mismatches,
		mb(wal.peak().retained), mb(final), bound, logs, compactionSummary(t, s.storageDir(), defs))
	if peak := wal.peak(); peak.retained > bound.bytes {
		t.Errorf("retained WAL reached %.1f MB at %s, over the %.1f MB that the detection timeouts allow (%s): something held confirmed_flush_lsn back longer than it may; look at the chaos actions logged before that time and at flushd's log (stalls, rebinds) around it",
			mb(peak.retained), peak.at.Format("15:04:05.000"), mb(bound.bytes), bound)
	}
	if logs.brokenTxns > 0 || logs.historyDiffs > 0 {
		t.Errorf("%d transactions in the shape logs lack or repeat a fragment, and %d logs differ from the history Postgres committed (see the errors above): readers would lose or repeat changes", logs.brokenTxns, logs.historyDiffs)
	}
}

// chaos is one run's schedule and what it did.
type chaos struct {
	t              *testing.T
	s              *stack
	rng            *rand.Rand
	seed           uint64
	duration       time.Duration
	restartServers bool
	consumers      []string

	killed         int
	serverRestarts int // Postgres, NATS server or NATS node restarts
	nodeRestarts   int // of which NATS cluster nodes
	episodes       []episode
}

// newChaos reads the FANOUT_CHAOS_* settings and starts the stack.
func newChaos(t *testing.T) *chaos {
	c := &chaos{t: t, duration: 20 * time.Second, seed: uint64(time.Now().UnixNano()), consumers: []string{"c1", "c2", "c3"}}
	if d, err := time.ParseDuration(os.Getenv("FANOUT_CHAOS_DURATION")); err == nil {
		c.duration = d
	}
	if v, err := strconv.ParseUint(os.Getenv("FANOUT_CHAOS_SEED"), 10, 64); err == nil {
		c.seed = v
	}
	c.restartServers = os.Getenv("FANOUT_CHAOS_SERVERS") == "1"
	c.rng = rand.New(rand.NewPCG(c.seed, 0))
	if os.Getenv("FANOUT_CHAOS_CLUSTER") == "1" {
		c.s = newClusterStack(t)
	} else {
		c.s = newStack(t)
	}
	c.s.env = append(c.s.env,
		"FANOUT_FLUSHD_STALL_GRACE="+chaosStallGrace.String(),
		"FANOUT_INGEST_ACK_TIMEOUT="+chaosAckTimeout.String(),
		"FANOUT_INGEST_MAX_BACKOFF="+chaosMaxBackoff.String(),
	)
	// Compaction runs all along, on small logs, and replaced generations
	// expire during the run: the oracle reads what the chains hold.
	c.s.env = append(c.s.env, compactionEnv(20*time.Second)...)
	c.s.env = append(c.s.env, "FANOUT_STORAGE_COMPACTION_MIN_INTERVAL=2s")
	t.Logf("chaos seed %d (FANOUT_CHAOS_SEED=%d reproduces the schedule), duration %s, %s", c.seed, c.seed, c.duration, c.topology())
	return c
}

func (c *chaos) topology() string {
	if c.s.cluster != nil {
		return "3-node NATS cluster, R3"
	}
	return "single NATS server"
}

// run performs episodes of faults until the duration is over. An episode
// is one to three faults, one to three seconds apart, so that their
// recoveries overlap; after it confirmed_flush_lsn may stand still no longer
// than the episode's detection window (see recoveryWindow), and must pass
// the WAL written by the episode's end before the next begins.
// Without the pause faults would chain for the whole run, and the WAL a
// fault may hold back could not be told from the WAL a chain holds back.
func (c *chaos) run() {
	actions := 10
	if c.s.cluster != nil {
		actions = 13 // node restarts are the point of a cluster run
	}
	end := time.Now().Add(c.duration)
	for time.Now().Before(end) {
		ep := episode{faults: 1 + c.rng.IntN(3)}
		restartsBefore := c.serverRestarts
		for i := 0; i < ep.faults; i++ {
			time.Sleep(time.Duration(1000+c.rng.IntN(2000)) * time.Millisecond)
			if i == 0 {
				ep.start = time.Now()
			}
			c.act(c.rng.IntN(actions))
		}
		ep.end = time.Now()
		ep.server = c.serverRestarts > restartsBefore
		c.awaitRecovery(&ep)
		c.episodes = append(c.episodes, ep)
	}
}

// episode is a burst of faults whose recoveries overlap.
type episode struct {
	start, end time.Time     // the first fault began, the last one ended (everything restarted)
	faults     int           // how many
	server     bool          // Postgres, the NATS server or a NATS node was restarted
	recovery   time.Duration // from end until confirmed_flush_lsn passed the WAL written by then
	stillest   time.Duration // the longest confirmed_flush_lsn stood still after end
}

func (e episode) span() time.Duration { return e.end.Sub(e.start) }

// recoveries summarizes the episodes' recovery times.
func (c *chaos) recoveries() string {
	if len(c.episodes) == 0 {
		return "no fault episodes"
	}
	var ds []time.Duration
	var stillest time.Duration
	for _, ep := range c.episodes {
		ds = append(ds, ep.recovery)
		stillest = max(stillest, ep.stillest)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return fmt.Sprintf("fault episodes %d, recovery after an episode median %s, max %s, longest stand-still of confirmed_flush_lsn after an episode %s",
		len(ds), ds[len(ds)/2].Round(10*time.Millisecond), ds[len(ds)-1].Round(10*time.Millisecond), stillest.Round(10*time.Millisecond))
}

// recoveryWindow is how long after an episode's last fault the slot may
// still be held back, from the stack's settings (none fitted to what runs
// show):
//
//	heartbeat_timeout  a killed or frozen consumer is declared dead
//	stall_grace        a live consumer making no progress loses its partitions
//	status_interval    ingest confirms the safe LSN at least this often
//
// and, when a server was restarted, the recovery from it:
//
//	ack_timeout        a publish lost with a NATS server is sent again
//	max_backoff        the longest a service waits before retrying
func (e episode) recoveryWindow() (time.Duration, []string) {
	var w time.Duration
	var terms []string
	add := func(what string, d time.Duration) {
		w += d
		terms = append(terms, what+" "+d.String())
	}
	add("heartbeat", heartbeatTimeout)
	add("stall grace", chaosStallGrace)
	add("status", statusInterval)
	if e.server {
		add("ack timeout", chaosAckTimeout)
		add("backoff", chaosMaxBackoff)
	}
	return w, terms
}

// awaitRecovery waits until confirmed_flush_lsn passes the WAL written up
// to the end of the episode. What it asserts is guarantee 3: after the
// episode, confirmed_flush_lsn may stand still no longer than the episode's
// recovery window (a pinned slot). Once it moves again, passing the target
// also takes catching up on the backlog the faults built, at whatever
// capacity the saturated machine has to spare; that time is reported, and
// the WAL it retains is judged by the run's WAL bound. The wait is bounded:
// the target must be passed within the window plus two minutes.
func (c *chaos) awaitRecovery(ep *episode) {
	window, terms := ep.recoveryWindow()
	target, confirmed := int64(-1), int64(-1)
	var movedAt time.Time // when confirmed_flush_lsn last advanced (or was first read)
	pinned := false
	for time.Since(ep.end) < window+2*time.Minute {
		if smp, ok := c.s.walSampleQuiet(); ok {
			if now := smp.lsn - smp.retained; now > confirmed {
				confirmed, movedAt = now, smp.at
			}
			if target < 0 {
				target = smp.lsn
			}
			if confirmed >= target {
				ep.recovery = time.Since(ep.end)
				caughtUp := ""
				if ep.recovery > window {
					caughtUp = fmt.Sprintf(" (over the %s detection window: catching up on the backlog)", window)
				}
				c.logf("recovered %s after an episode of %d faults%s", ep.recovery.Round(time.Millisecond), ep.faults, caughtUp)
				return
			}
			still := time.Since(movedAt)
			ep.stillest = max(ep.stillest, still)
			if still > window && !pinned {
				pinned = true
				c.t.Errorf("after the faults ending at %s, confirmed_flush_lsn stood still for %s, over the %s window (%s): something pinned the slot longer than detection allows; fanoutctl status:\n%s",
					ep.end.Format("15:04:05.000"), still.Round(time.Millisecond), window, strings.Join(terms, " + "), c.status())
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	ep.recovery = time.Since(ep.end)
	c.t.Errorf("after the faults ending at %s, confirmed_flush_lsn did not pass the WAL written by then in %s (window %s): the slot is pinned or the pipeline cannot catch up; see flushd's status below",
		ep.end.Format("15:04:05.000"), ep.recovery.Round(time.Second), window)
	c.t.Logf("status:\n%s", c.status())
}

// status is fanoutctl status for a failure message. It does not end the
// test when fanoutctl itself fails (NATS may be recovering): the run goes
// on to its oracle, and what fanoutctl printed is shown either way.
func (c *chaos) status() string {
	out, errOut, _ := testenv.Run(c.t, "fanoutctl", []string{"status"}, c.s.env...)
	return out + errOut
}

func (c *chaos) logf(format string, args ...any) {
	c.t.Helper()
	c.t.Logf("%s chaos: "+format, append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// act performs action n of the schedule.
func (c *chaos) act(n int) {
	s := c.s
	switch {
	case n < 4:
		id := c.consumers[c.rng.IntN(len(c.consumers))]
		c.killAndRestart(id, 1500, func() { s.startConsumer(id) })
	case n < 6:
		c.killAndRestart("ingest", 1000, func() { s.startIngest() })
	case n < 7:
		c.killAndRestart("flushd", 1000, func() { s.startFlushd() })
	case n < 9: // a zombie: frozen past the heartbeat timeout, then woken
		id := c.consumers[c.rng.IntN(len(c.consumers))]
		c.logf("freeze consumer %s", id)
		s.procs[id].Signal(syscall.SIGSTOP)
		time.Sleep(heartbeatTimeout + time.Duration(500+c.rng.IntN(1500))*time.Millisecond)
		s.procs[id].Signal(syscall.SIGCONT)
	default:
		c.serverAction(n)
	}
}

// killAndRestart SIGKILLs a process and starts it again after up to maxGapMs.
func (c *chaos) killAndRestart(name string, maxGapMs int, restart func()) {
	c.logf("kill %s", name)
	c.s.procs[name].Kill()
	c.killed++
	time.Sleep(time.Duration(c.rng.IntN(maxGapMs)) * time.Millisecond)
	restart()
}

// serverAction restarts a server. On a cluster, actions past 9 (and every
// one when servers are not restarted) restart a NATS node.
func (c *chaos) serverAction(n int) {
	switch {
	case c.s.cluster != nil && (n > 9 || !c.restartServers):
		c.restartNATSNode()
	case !c.restartServers:
		// the short run keeps its servers
	case c.rng.IntN(2) == 0:
		if c.s.cluster != nil {
			c.restartNATSNode()
		} else {
			c.restartNATS()
		}
	default:
		c.restartPostgres()
	}
}

func (c *chaos) restartNATS() {
	c.logf("restart the NATS server")
	c.s.nats.Shutdown()
	time.Sleep(time.Second)
	c.s.nats.Start(c.t)
	c.serverRestarts++
}

func (c *chaos) restartPostgres() {
	c.logf("restart Postgres")
	c.s.pg.Stop(c.t)
	time.Sleep(time.Second)
	c.s.pg.Start(c.t)
	c.s.reconnect()
	c.serverRestarts++
}

// restartNATSNode crashes or stops one random node of the cluster, starts it
// again, and waits until the cluster is whole (a meta leader, every node
// healthy, the stream current) before the next action can touch a node.
func (c *chaos) restartNATSNode() {
	i := c.rng.IntN(len(c.s.cluster.Nodes))
	crash := c.rng.IntN(2) == 0
	gap := time.Duration(c.rng.IntN(2000)) * time.Millisecond
	how := "stop"
	if crash {
		how = "crash"
	}
	c.logf("%s NATS node %s for %s", how, c.s.cluster.Nodes[i].Name, gap)
	down := time.Now()
	c.s.cluster.Stop(i, crash)
	time.Sleep(gap)
	c.s.cluster.Start(i)
	c.s.cluster.WaitHealthy(2*time.Minute, fanout.StreamName)
	c.serverRestarts++
	c.nodeRestarts++
	c.logf("NATS cluster whole again %s after the %s", time.Since(down).Round(time.Millisecond), how)
}

// restartExited restarts the processes that died on their own (they may
// exit on a fatal error by design), so the pipeline can drain.
func (c *chaos) restartExited() {
	for name, p := range c.s.procs {
		if exited, err := p.Exited(); exited {
			c.t.Logf("%s had exited (%v); restarting it for the drain", name, err)
			switch name {
			case "ingest":
				c.s.startIngest()
			case "flushd":
				c.s.startFlushd()
			default:
				c.s.startConsumer(name)
			}
		}
	}
}

// chaosLoad commits a mix of transactions until stop: small inserts, moves
// between shapes, deletes, large transactions and TOASTed values.
func (s *stack) chaosLoad(stop <-chan struct{}, seed uint64, txns, changes *atomic.Int64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	nextID := 1
	for {
		select {
		case <-stop:
			return
		default:
		}
		if conn == nil {
			c, err := pgx.Connect(context.Background(), s.pg.URL)
			if err != nil {
				time.Sleep(200 * time.Millisecond) // Postgres restarting
				continue
			}
			conn = c
		}
		var sql string
		var n int
		switch k := rng.IntN(20); {
		case k < 10:
			sql = fmt.Sprintf(`INSERT INTO items SELECT g, g %% 43, 'z' || g, NULL FROM generate_series(%d, %d) g`, nextID, nextID+9)
			nextID, n = nextID+10, 10
		case k < 15:
			sql = fmt.Sprintf(`UPDATE items SET owner = (owner + %d) %% 43 WHERE id %% 17 = %d AND id > %d`, 1+rng.IntN(5), rng.IntN(17), nextID-200)
			n = 12
		case k < 17:
			sql = fmt.Sprintf(`DELETE FROM items WHERE id %% 29 = %d AND id > %d`, rng.IntN(29), nextID-300)
			n = 10
		case k < 18:
			sql = fmt.Sprintf(`INSERT INTO items SELECT g, g %% 43, 'big', NULL FROM generate_series(%d, %d) g`, nextID, nextID+4999)
			nextID, n = nextID+5000, 5000
		default:
			sql = fmt.Sprintf(`UPDATE items SET body = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 3000) g), owner = 35 WHERE id = %d;
				UPDATE items SET title = 'z-toast' WHERE id = %d`, nextID-5, nextID-5)
			n = 2
		}
		if _, err := conn.Exec(context.Background(), sql); err != nil {
			conn.Close(context.Background())
			conn = nil
			continue
		}
		txns.Add(1)
		changes.Add(int64(n))
		time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
	}
}

// walSample is the WAL position and the slot's retained WAL at one moment.
type walSample struct {
	at       time.Time
	lsn      int64 // pg_current_wal_insert_lsn, in bytes
	retained int64 // pg_current_wal_insert_lsn - confirmed_flush_lsn
}

// walSamples records a walSample every 200 ms while the chaos runs.
type walSamples struct {
	list []walSample // read only after run returned
}

func (w *walSamples) run(s *stack, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(200 * time.Millisecond):
		}
		if smp, ok := s.walSampleQuiet(); ok {
			w.list = append(w.list, smp)
		}
	}
}

// peak is the sample with the most retained WAL.
func (w *walSamples) peak() walSample {
	var p walSample
	for _, smp := range w.list {
		if smp.retained > p.retained {
			p = smp
		}
	}
	return p
}

// meanRate is the workload's WAL write rate over the run, in bytes/s.
func (w *walSamples) meanRate() float64 {
	if len(w.list) < 2 {
		return 0
	}
	first, last := w.list[0], w.list[len(w.list)-1]
	return float64(last.lsn-first.lsn) / last.at.Sub(first.at).Seconds()
}

// busiestWindow is the most WAL written within any span of window: the
// difference to the last sample at least window earlier, so a span may be
// up to one sampling interval longer (never shorter) than window.
func (w *walSamples) busiestWindow(window time.Duration) int64 {
	var most int64
	j := 0
	for _, cur := range w.list {
		for j+1 < len(w.list) && !w.list[j+1].at.After(cur.at.Add(-window)) {
			j++
		}
		most = max(most, cur.lsn-w.list[j].lsn)
	}
	return most
}

// walSampleQuiet is one walSample for the sampler; ok is false while
// Postgres is unreachable (restarting), as no WAL is written then either.
func (s *stack) walSampleQuiet() (walSample, bool) {
	s.sampleMu.Lock()
	defer s.sampleMu.Unlock()
	if s.sampler == nil {
		c, err := pgx.Connect(context.Background(), s.pg.URL)
		if err != nil {
			return walSample{}, false
		}
		s.sampler = c
	}
	var smp walSample
	var retained *int64
	err := s.sampler.QueryRow(context.Background(), `SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint,
		(SELECT (pg_current_wal_insert_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'fanout')`).Scan(&smp.lsn, &retained)
	if err != nil {
		s.sampler.Close(context.Background())
		s.sampler = nil
		return walSample{}, false
	}
	smp.at = time.Now()
	if retained != nil {
		smp.retained = *retained
	}
	return smp, true
}

// walBound is the most WAL the slot may retain during the run if nothing
// holds confirmed_flush_lsn back longer than the stack's detection timeouts
// and recovery allow.
type walBound struct {
	bytes     int64
	rate      float64       // mean WAL write rate of the run, bytes/s
	window    time.Duration // the longest the slot may be held back
	terms     []string      // what window adds up, for the summary
	windowWAL int64         // most WAL written within any window
}

// walBound computes the bound from the run's samples.
//
// While confirmed_flush_lsn is held back, retained WAL grows by what the
// workload writes. An episode may hold it back from its first fault until
// its recovery window after its last fault has passed: its span plus that
// window, W. So retained WAL never exceeds the WAL written in the busiest W
// of the run (the mean rate x W would understate a burst of large
// transactions), for the episode with the longest W, plus slack. W is taken
// from the stack's settings and the schedule, none of it fitted to the
// retention seen. The slack, 2 WAL segments, covers what is legitimately in
// flight at any moment (transactions being decoded, published and
// persisted) and the 200 ms sampling.
func (c *chaos) walBound(w *walSamples) walBound {
	b := walBound{rate: w.meanRate()}
	for _, ep := range c.episodes {
		window, terms := ep.recoveryWindow()
		if ep.span()+window > b.window {
			b.window = ep.span() + window
			b.terms = append([]string{fmt.Sprintf("episode of %d faults %s", ep.faults, ep.span().Round(time.Millisecond))}, terms...)
		}
	}
	b.windowWAL = w.busiestWindow(b.window)
	b.bytes = b.windowWAL + 2*walSegment
	return b
}

func (b walBound) String() string {
	return fmt.Sprintf("WAL rate %.2f MB/s, WAL bound %.1f MB (%.1f MB written in the busiest %s = %s; + 2 segments)",
		b.rate/(1<<20), mb(b.bytes), mb(b.windowWAL), b.window, strings.Join(b.terms, " + "))
}

func mb(n int64) float64 { return float64(n) / (1 << 20) }

// logScan is what the shape logs hold on disk.
type logScan struct {
	logs, frames int
	// rawDups are frames at a position the log already holds: a fragment
	// persisted twice (a redelivery); readers skip them.
	rawDups int
	// zombieFrames are frames written at an epoch older than one the log
	// already holds: a fenced owner's writes; readers skip them.
	zombieFrames int
	// brokenTxns are transactions whose applied fragments are not exactly
	// what ingest publishes for a shape's part of a transaction, Seq 0, 1,
	// ..., n with Last on n and nothing after: a fragment lost or repeated.
	// Must be 0.
	brokenTxns int
	// historyDiffs are logs whose applied operations differ from what
	// Postgres committed (checkLogsFollowHistory). Must be 0.
	historyDiffs int
}

func (l logScan) String() string {
	return fmt.Sprintf("log frames %d in %d logs, duplicate frames %d and zombie frames %d (skipped by readers), transactions with a fragment lost or repeated %d, logs differing from the committed history %d",
		l.frames, l.logs, l.rawDups, l.zombieFrames, l.brokenTxns, l.historyDiffs)
}

// scanShapeLogs reads every frame of every shape log under storage.dir:
// what is on disk (duplicates, zombie writes), and whether the fragments
// readers apply form whole transactions as ingest published them. It does
// not judge the acceptor by itself: ScanLog's Accepted is what readers
// apply, and that must match what was published.
func scanShapeLogs(t *testing.T, storage string) logScan {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(storage, "shapes"))
	if err != nil {
		t.Fatalf("list shape logs: %v", err)
	}
	var total logScan
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		total.logs++
		written := map[fanout.Position]bool{}
		var maxEpoch uint64
		err := shapelog.ScanLog(storage, e.Name(), func(r shapelog.LogRecord) error {
			total.frames++
			switch {
			case r.Epoch < maxEpoch:
				total.zombieFrames++
			case written[r.Position]:
				total.rawDups++
			}
			maxEpoch = max(maxEpoch, r.Epoch)
			written[r.Position] = true
			return nil
		})
		if err != nil {
			t.Errorf("scan the log of shape %s: %v", e.Name(), err)
		}
		broken, err := checkTransactions(storage, e.Name())
		if err != nil {
			t.Errorf("read the log of shape %s: %v", e.Name(), err)
		}
		for i, b := range broken {
			if i == 5 {
				t.Errorf("shape %s: %d more broken transactions", e.Name(), len(broken)-5)
				break
			}
			t.Errorf("shape %s: %s", e.Name(), b)
		}
		total.brokenTxns += len(broken)
	}
	return total
}

// checkTransactions checks that the applied fragments of a log are whole
// transactions in order: each begins at Seq 0, goes on at Seq+1 within the
// same commit LSN, and ends with the one marked Last. It returns what
// breaks that, one line per transaction.
func checkTransactions(storage, handle string) ([]string, error) {
	var broken []string
	report := func(format string, args ...any) { broken = append(broken, fmt.Sprintf(format, args...)) }
	var open *fanout.Fragment // the transaction's last applied fragment, until its Last
	chain, err := shapelog.LoadChain(storage, handle)
	if err != nil {
		return nil, err
	}
	// Every log still on disk, through the generations of a compacted shape.
	_, err = chain.Read(chain.Oldest().LogStart(), func(e shapelog.LogEntry, _ shapelog.Cursor) error {
		f, err := e.Fragment()
		if err != nil {
			return err
		}
		switch {
		case open != nil && f.CommitLSN != open.CommitLSN:
			report("transaction %s ends at fragment %d without its last fragment; the next applied is %s (a fragment lost)", open.CommitLSN, open.Seq, f.Position())
			if f.Seq != 0 {
				report("transaction %s begins at fragment %d (fragments lost)", f.CommitLSN, f.Seq)
			}
		case open != nil && f.Seq != open.Seq+1:
			report("transaction %s goes from fragment %d to %d (a fragment lost or repeated)", f.CommitLSN, open.Seq, f.Seq)
		case open == nil && f.Seq != 0:
			report("transaction %s begins at fragment %d (fragments lost)", f.CommitLSN, f.Seq)
		}
		open = f
		if f.Last {
			open = nil
		}
		return nil
	})
	if open != nil {
		report("the log ends inside transaction %s at fragment %d, after the drain (its last fragment lost)", open.CommitLSN, open.Seq)
	}
	return broken, err
}

// rowDiff names, by id, up to ten rows that differ between a shape log and its query.
func rowDiff(got, want []row) string {
	index := func(rows []row) map[string]string {
		m := map[string]string{}
		for _, r := range rows {
			id := "<nil>"
			if r["id"] != nil {
				id = *r["id"]
			}
			m[id] = renderRows([]row{r})
		}
		return m
	}
	g, w := index(got), index(want)
	var out []string
	for id, wr := range w {
		if gr, ok := g[id]; !ok {
			out = append(out, "missing "+strings.TrimSpace(wr))
		} else if gr != wr {
			out = append(out, "stale "+strings.TrimSpace(gr)+" want "+strings.TrimSpace(wr))
		}
	}
	for id, gr := range g {
		if _, ok := w[id]; !ok {
			out = append(out, "extra "+strings.TrimSpace(gr))
		}
	}
	sort.Strings(out)
	if len(out) > 10 {
		out = append(out[:10], fmt.Sprintf("... %d more", len(out)-10))
	}
	return fmt.Sprintf("%d rows in the log, %d in the query; %s", len(got), len(want), strings.Join(out, "; "))
}

// compactionSummary says how far compaction went: the shapes compacted,
// the generations made, and those whose first log expired.
func compactionSummary(t *testing.T, storage string, defs []shapeDef) string {
	compacted, gens, expired := 0, uint64(0), 0
	for _, d := range defs {
		chain, err := shapelog.LoadChain(storage, d.handle)
		if err != nil {
			t.Errorf("shape %s: %v", d.handle, err)
			continue
		}
		if n := chain.Current().Number; n > 0 {
			compacted++
			gens += n
		}
		if chain.Oldest().Number > 0 {
			expired++
		}
	}
	return fmt.Sprintf("compacted shapes %d of %d, generations made %d, shapes whose first log expired %d", compacted, len(defs), gens, expired)
}
