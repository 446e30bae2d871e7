// Package bench measures the pipeline against the raw ceilings of its two
// real components, measured in the same run on the same data: Postgres
// decoding the workload through pgoutput with a reader that does nothing,
// and JetStream taking as many messages of the same size by async publish.
// `make bench` runs every benchmark once and prints one markdown table at
// the end (TestMain); BENCHMARKS.md explains it.
//
// Environment:
//
//	FANOUT_BENCH_SCALE=10        divide the workload row counts by 10
//	FANOUT_BENCH_PROFILE=DIR     save CPU profiles of ingest, a consumer and flushd
//	                             taken while the pipeline catches up (pprof files)
//	FANOUT_BENCH_SHAPES_MAX=N    cap the largest shape count (300,000 by default)
package bench

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/testenv"
)

// ---- the table printed at the end ----

var (
	tableMu sync.Mutex
	table   []string
)

// addRow adds one line to the final table.
func addRow(measurement, value, ratio, note string) {
	tableMu.Lock()
	defer tableMu.Unlock()
	row := fmt.Sprintf("| %s | %s | %s | %s |", measurement, value, ratio, note)
	table = append(table, row)
	fmt.Fprintln(os.Stderr, "result", row) // kept even if a later benchmark never ends
}

func TestMain(m *testing.M) {
	code := m.Run()
	if len(table) > 0 {
		fmt.Printf("\nFANOUT_BENCH_SCALE=%d, %d CPUs, started %s\n\n", scale(), runtime.NumCPU(), started.Format(time.RFC3339))
		fmt.Println("| measurement | value | ratio | note |")
		fmt.Println("|---|---|---|---|")
		for _, r := range table {
			fmt.Println(r)
		}
	}
	os.Exit(code)
}

var started = time.Now()

// scale divides the workload sizes (FANOUT_BENCH_SCALE=10 runs a tenth).
func scale() int {
	if n, err := strconv.Atoi(os.Getenv("FANOUT_BENCH_SCALE")); err == nil && n > 0 {
		return n
	}
	return 1
}

func maxShapes() int {
	if n, err := strconv.Atoi(os.Getenv("FANOUT_BENCH_SHAPES_MAX")); err == nil && n > 0 {
		return n
	}
	return 300_000
}

func rate(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }

// ---- a private pipeline ----

// pipe is a private Postgres, an embedded NATS, the shapes and the services.
type pipe struct {
	b     testing.TB
	pg    *testenv.Postgres
	ns    *testenv.NATS
	conn  *pgx.Conn
	bus   *fanout.Bus
	dir   string
	env   []string
	procs map[string]*testenv.Process
	http  map[string]string // service name -> host:port of /metrics and /debug/pprof
	pids  map[string]int    // processes started outside procs (shapeapi), for their CPU

	shapes  int
	putTime time.Duration // how long the shape definitions took to store in KV
}

// newPipe starts Postgres and NATS, creates the items table and a
// publication and slot "raw" for the ceiling reader, and stores shapes
// equality shapes `owner = i` in KV.
func newPipe(b testing.TB, shapes int, env ...string) *pipe {
	b.Helper()
	testenv.Binaries(b) // build first, so build time is in no measurement
	p := &pipe{b: b, shapes: shapes, dir: b.TempDir(), procs: map[string]*testenv.Process{}, http: map[string]string{}, pids: map[string]int{}}
	// wal_sender_timeout off: the throughput benchmark pauses ingest
	// (SIGSTOP) while the workload commits.
	// synchronous_commit on: with it off, the WAL writer flushes (and a
	// walsender sends) a commit only every wal_writer_delay (200 ms), which
	// would be Postgres's latency, not the pipeline's. fsync stays off.
	p.pg = testenv.StartPostgres(b, testenv.WithSetting("max_wal_size", "4GB"), testenv.WithSetting("wal_sender_timeout", "0"),
		testenv.WithSetting("synchronous_commit", "on"))
	p.ns = testenv.StartNATS(b)
	p.conn = p.pg.Connect(b)
	p.pg.Exec(b, p.conn, `CREATE TABLE items (id bigint PRIMARY KEY, owner int NOT NULL, title text)`)
	p.pg.Exec(b, p.conn, `ALTER TABLE items REPLICA IDENTITY FULL`)
	p.pg.Exec(b, p.conn, `CREATE PUBLICATION raw FOR TABLE items`)
	p.pg.Exec(b, p.conn, `SELECT pg_create_logical_replication_slot('raw', 'pgoutput')`)
	p.bus = p.ns.Bus(b)
	start := time.Now()
	if err := putEqualityShapes(context.Background(), p.bus.JS, shapes); err != nil {
		b.Fatal(err)
	}
	p.putTime = time.Since(start)
	p.env = append([]string{
		"FANOUT_POSTGRES_URL=" + p.pg.URL, "FANOUT_NATS_URL=" + p.ns.URL,
		"FANOUT_STORAGE_DIR=" + filepath.Join(p.dir, "shapes"),
		"FANOUT_LOG_LEVEL=" + cmp.Or(os.Getenv("FANOUT_BENCH_LOG_LEVEL"), "warn"),
		"FANOUT_HTTP_PPROF=true", // FANOUT_BENCH_PROFILE takes CPU profiles
	}, env...)
	return p
}

// start runs a service with its own HTTP port.
func (p *pipe) start(name, bin string, env ...string) *testenv.Process {
	p.b.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(p.b))
	p.http[name] = addr
	proc := testenv.StartProcess(p.b, name, bin, nil, append(append(slices.Clone(p.env), env...), "FANOUT_HTTP_ADDR="+addr)...)
	if dir := os.Getenv("FANOUT_BENCH_LOGS"); dir != "" {
		// Registered after StartProcess's own cleanup, so it runs first.
		label := strings.NewReplacer("/", "_", " ", "_").Replace(p.b.Name())
		p.b.Cleanup(func() { os.WriteFile(filepath.Join(dir, label+"-"+name+".log"), []byte(proc.Output()), 0o644) })
	}
	p.procs[name] = proc
	return proc
}

// startAll starts flushd, consumers c1 and c2 and ingest and waits until
// ingest replicates and every partition has its durable consumer.
func (p *pipe) startAll() {
	p.b.Helper()
	p.start("flushd", "flushd")
	// The throughput runs put up to 300K shapes in KV at once: their initial
	// snapshots are measured by BenchmarkSnapshot, not here.
	p.start("c1", "consumer", "FANOUT_CONSUMER_ID=c1", "FANOUT_SNAPSHOT_ENABLED=false")
	p.start("c2", "consumer", "FANOUT_CONSUMER_ID=c2", "FANOUT_SNAPSHOT_ENABLED=false")
	p.start("ingest", "ingest")
	// 300K shapes take a while to load and compile.
	for _, name := range []string{"flushd", "c1", "c2", "ingest"} {
		testenv.Eventually(p.b, 10*time.Minute, name+" /readyz", func() bool { return p.ready(name) })
	}
	testenv.Eventually(p.b, 2*time.Minute, "a durable consumer on each of the 64 partitions", func() bool {
		info, err := p.bus.Stream.Info(context.Background())
		return err == nil && info.State.Consumers >= 64
	})
}

func (p *pipe) ready(name string) bool {
	resp, err := http.Get("http://" + p.http[name] + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// metric reads one unlabelled metric from a service's /metrics (0 if absent).
func (p *pipe) metric(name, metric string) float64 {
	resp, err := http.Get("http://" + p.http[name] + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), metric+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// rss is a service's resident memory (VmRSS, from its process collector).
func (p *pipe) rss(name string) float64 { return p.metric(name, "process_resident_memory_bytes") }

func (p *pipe) lsn(sql string) pglogrepl.LSN {
	var text *string
	if err := p.conn.QueryRow(context.Background(), sql).Scan(&text); err != nil {
		p.b.Fatalf("%s: %v", sql, err)
	}
	if text == nil {
		return 0
	}
	l, err := pglogrepl.ParseLSN(*text)
	if err != nil {
		p.b.Fatal(err)
	}
	return l
}

func (p *pipe) currentWAL() pglogrepl.LSN { return p.lsn(`SELECT pg_current_wal_lsn()::text`) }

// waitConfirmed waits until the pipeline's slot confirmed lsn.
func (p *pipe) waitConfirmed(lsn pglogrepl.LSN, timeout time.Duration) {
	p.b.Helper()
	testenv.Eventually(p.b, timeout, "confirmed_flush_lsn to reach "+lsn.String(), func() bool {
		for name, proc := range p.procs {
			if exited, err := proc.Exited(); exited {
				out := proc.Output()
				p.b.Fatalf("%s exited (%v) while the pipeline was catching up; its last output:\n%s", name, err, out[max(0, len(out)-3000):])
			}
		}
		return p.lsn(`SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'fanout'`) >= lsn
	})
}

// insert commits rows ids [from, from+n) in transactions of perTxn rows;
// row id goes to shape id % shapes.
func (p *pipe) insert(from, n, perTxn int) {
	p.b.Helper()
	for id := from; id < from+n; id += perTxn {
		k := min(perTxn, from+n-id)
		if _, err := p.conn.Exec(context.Background(), `INSERT INTO items SELECT g, g % $3, 'title ' || g FROM generate_series($1::bigint, $2::bigint) g`, id, id+k-1, p.shapes); err != nil {
			p.b.Fatal(err)
		}
	}
}

// checkRowCounts fails the benchmark unless the shape logs hold, in all,
// as many rows as the table: a fast pipeline that loses changes is no result.
func (p *pipe) checkRowCounts() {
	p.b.Helper()
	var want int
	if err := p.conn.QueryRow(context.Background(), `SELECT count(*) FROM items`).Scan(&want); err != nil {
		p.b.Fatal(err)
	}
	got := 0
	for i := 0; i < p.shapes; i++ {
		rows, err := shapelog.Materialize(filepath.Join(p.dir, "shapes"), fmt.Sprintf("bench%06d", i), []string{"id"})
		if err != nil {
			p.b.Fatalf("materialize shape %d: %v", i, err)
		}
		got += len(rows)
	}
	if got != want {
		p.b.Fatalf("the shape logs hold %d rows in all, the table %d: changes were lost or duplicated", got, want)
	}
}

// logProgress logs where the changes are: decoded and published by ingest,
// waiting in the stream, persisted by the consumers.
func (p *pipe) logProgress() {
	var msgs uint64
	if info, err := p.bus.Stream.Info(context.Background()); err == nil {
		msgs = info.State.Msgs
	}
	var ackPending, waiting, redelivered int
	consumers := p.bus.Stream.ListConsumers(context.Background())
	for ci := range consumers.Info() {
		ackPending += ci.NumAckPending
		waiting += ci.NumWaiting
		redelivered += ci.NumRedelivered
	}
	persisted := p.metric("c1", "fanout_consumer_changes_persisted_total") + p.metric("c2", "fanout_consumer_changes_persisted_total")
	batches := p.metric("c1", "fanout_consumer_batch_persist_seconds_count") + p.metric("c2", "fanout_consumer_batch_persist_seconds_count")
	persistSec := p.metric("c1", "fanout_consumer_batch_persist_seconds_sum") + p.metric("c2", "fanout_consumer_batch_persist_seconds_sum")
	dups := p.metric("c1", "fanout_consumer_duplicates_skipped_total") + p.metric("c2", "fanout_consumer_duplicates_skipped_total")
	fmt.Fprintf(os.Stderr, "progress %s: ingest decoded %.0f, published %.0f fragments (in flight %.0f); stream holds %d (ack pending %d, redelivered %d, pulls waiting %d); consumers persisted %.0f changes in %.0f batches (%.1fs persisting), skipped %.0f duplicates; safe LSN %s\n",
		time.Now().Format("15:04:05.0"), p.metric("ingest", "fanout_ingest_changes_decoded_total"), p.metric("ingest", "fanout_ingest_fragments_published_total"),
		p.metric("ingest", "fanout_ingest_inflight_publishes"), msgs, ackPending, redelivered, waiting, persisted, batches, persistSec, dups, safeLSN(context.Background(), p.bus))
}

// profile saves CPU profiles of the named services over the next seconds,
// in the background, when FANOUT_BENCH_PROFILE names a folder.
func (p *pipe) profile(label string, seconds int, names ...string) (wait func()) {
	dir := os.Getenv("FANOUT_BENCH_PROFILE")
	if dir == "" {
		return func() {}
	}
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.http[name], seconds)
			resp, err := http.Get(url)
			if err != nil {
				p.b.Logf("profile of %s: %v", name, err)
				return
			}
			defer resp.Body.Close()
			f, err := os.Create(filepath.Join(dir, label+"-"+name+".pprof"))
			if err != nil {
				p.b.Logf("profile of %s: %v", name, err)
				return
			}
			defer f.Close()
			io.Copy(f, resp.Body)
		}()
	}
	return wg.Wait
}

// putEqualityShapes stores shapes `owner = i` in the shapes bucket with
// async publishes to the bucket's subjects (what KV Put does, without
// waiting for each ack in turn).
func putEqualityShapes(ctx context.Context, js jetstream.JetStream, n int) error {
	for i := 0; i < n; i++ {
		s := &fanout.Shape{
			Handle: fmt.Sprintf("bench%06d", i), Table: "public.items", Where: fmt.Sprintf("owner = %d", i),
			PrimaryKey: []string{"id"},
			Schema:     []fanout.Column{{Name: "id", Type: "bigint", OID: 20}, {Name: "owner", Type: "integer", OID: 23}, {Name: "title", Type: "text", OID: 25}},
			CreatedAt:  time.Now(),
		}
		if _, err := js.PublishAsync("$KV."+fanout.ShapesBucket+"."+s.Handle, s.Encode(), jetstream.WithStallWait(time.Minute)); err != nil {
			return fmt.Errorf("store shape %s: %w", s.Handle, err)
		}
		if i%4096 == 4095 {
			if err := waitAsync(ctx, js); err != nil {
				return err
			}
		}
	}
	return waitAsync(ctx, js)
}

func waitAsync(ctx context.Context, js jetstream.JetStream) error {
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("async publishes not acked within 5 minutes (%d pending)", js.PublishAsyncPending())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ---- throughput ----

type workload struct {
	name   string
	rows   int
	perTxn int
	shapes int
	memory bool // also report ingest and flushd resident memory
	warm   bool // write every shape log once before the measured workload
}

// BenchmarkThroughput runs each workload: the pipeline is started and
// ready, ingest is paused (SIGSTOP), the workload is committed, the two
// ceilings read it, and ingest is resumed: the pipeline's time is from
// SIGCONT to confirmed_flush_lsn reaching the end of the workload, that is
// every change routed, published, persisted (fsync) by a consumer and
// confirmed to Postgres.
func BenchmarkThroughput(b *testing.B) {
	div := scale()
	big := maxShapes()
	workloads := []workload{
		{name: "1,000-row txns, 1K shapes", rows: 1_000_000 / div, perTxn: 1000, shapes: 1000, warm: true},
		{name: "1-row txns, 1K shapes", rows: 100_000 / div, perTxn: 1, shapes: 1000, warm: true},
		{name: "1,000-row txns, 10K shapes", rows: 200_000 / div, perTxn: 1000, shapes: 10_000, memory: true, warm: true},
	}
	if big > 10_000 {
		// Cold: most of the workload's rows go to a shape whose log does
		// not exist yet (creating a log is a directory, a file and three
		// fsyncs). Warm: every log was written once before.
		workloads = append(workloads,
			workload{name: fmt.Sprintf("1,000-row txns, %dK shapes, new logs", big/1000), rows: 200_000 / div, perTxn: 1000, shapes: big, memory: true},
			workload{name: fmt.Sprintf("1,000-row txns, %dK shapes, logs already written", big/1000), rows: 200_000 / div, perTxn: 1000, shapes: big, warm: true})
	}
	for _, w := range workloads {
		b.Run(strings.ReplaceAll(w.name, " ", "_"), func(b *testing.B) { runWorkload(b, w) })
	}
	memMu.Lock()
	small, large := memIdle[10_000], memIdle[big]
	memMu.Unlock()
	if small > 0 && large > 0 && big > 10_000 {
		perShape := (large - small) / float64(big-10_000)
		verdict := "meets"
		if perShape >= 900 {
			verdict = "misses"
		}
		addRow(fmt.Sprintf("resident memory per added shape, 10K to %dK shapes, idle", big/1000), fmt.Sprintf("%.0f B", perShape), "",
			"ingest + flushd; "+verdict+" the target of under 900 B per shape")
	}
}

func runWorkload(b *testing.B, w workload) {
	ctx := context.Background()
	p := newPipe(b, w.shapes, "FANOUT_FLUSHD_POLL_INTERVAL=50ms")
	if w.memory {
		addRow(fmt.Sprintf("store %d shape definitions in KV (async puts)", w.shapes), fmt.Sprintf("%.1fs", p.putTime.Seconds()),
			"", fmt.Sprintf("%.0f puts/s", rate(w.shapes, p.putTime)))
	}
	start := time.Now()
	p.startAll()
	if w.memory {
		addRow(fmt.Sprintf("pipeline start with %d shapes (all ready)", w.shapes), fmt.Sprintf("%.1fs", time.Since(start).Seconds()), "", "")
	}
	idleIngest, idleFlushd := p.rss("ingest"), p.rss("flushd")
	if w.warm {
		// One row per shape first, so every shape log exists: creating a log
		// (directory, file, three fsyncs) is a one-time cost per shape that
		// a sustained rate does not include.
		start := time.Now()
		p.insert(w.rows, w.shapes, 1000)
		p.waitConfirmed(p.currentWAL(), 10*time.Minute)
		// The ceiling reads only the measured workload.
		p.pg.Exec(b, p.conn, `SELECT pg_replication_slot_advance('raw', pg_current_wal_lsn())`)
		addRow(fmt.Sprintf("warm-up, %s: first write to each of the %d shape logs", w.name, w.shapes), fmt.Sprintf("%.1fs", time.Since(start).Seconds()),
			"", fmt.Sprintf("%.0f new shape logs/s", rate(w.shapes, time.Since(start))))
	}

	ingest := p.procs["ingest"]
	ingest.Signal(syscall.SIGSTOP)
	start = time.Now()
	p.insert(0, w.rows, w.perTxn)
	commit := time.Since(start)
	end := p.currentWAL()

	// Ceiling 1: Postgres decoding the same WAL through pgoutput.
	start = time.Now()
	decoded, err := rawDecode(ctx, p.pg.URL, w.rows)
	if err != nil {
		b.Fatal(err)
	}
	pgRate := rate(decoded, time.Since(start))
	// Ceiling 2: JetStream async publish of as many messages of fragment size.
	jsRate, err := rawPublish(ctx, p.ns.URL, w.rows, w.shapes)
	if err != nil {
		b.Fatal(err)
	}
	ceiling := min(pgRate, jsRate)
	// Not a ceiling of the targets, but what the bus alone can do of the
	// pipeline's work: publish, deliver to 64 partition consumers, ack.
	cycleRate, err := rawCycle(ctx, p.ns.URL, w.rows, w.shapes)
	if err != nil {
		b.Fatal(err)
	}

	// The pipeline catches up.
	var peakIngest, peakFlushd float64
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // peak resident memory and progress while catching up
		defer close(sampled)
		last := time.Now()
		for {
			peakIngest, peakFlushd = max(peakIngest, p.rss("ingest")), max(peakFlushd, p.rss("flushd"))
			if time.Since(last) >= time.Second {
				last = time.Now()
				p.logProgress()
			}
			select {
			case <-done:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	cpuBefore := p.cpuNow()
	ingest.Signal(syscall.SIGCONT)
	start = time.Now()
	waitProfiles := p.profile(strings.ReplaceAll(w.name, " ", "_"), 10, "ingest", "c1", "flushd")
	p.waitConfirmed(end, 30*time.Minute)
	elapsed := time.Since(start)
	cpuAfter := p.cpuNow()
	close(done)
	<-sampled
	waitProfiles()
	e2e := rate(w.rows, elapsed)
	if w.shapes <= 10_000 {
		p.checkRowCounts()
	}

	addRow(fmt.Sprintf("ceiling: pgoutput decode, %s", w.name), fmt.Sprintf("%.0f changes/s", pgRate), "", fmt.Sprintf("%d changes; commit took %.1fs", decoded, commit.Seconds()))
	addRow(fmt.Sprintf("ceiling: JetStream async publish, %s", w.name), fmt.Sprintf("%.0f msgs/s", jsRate), "", fmt.Sprintf("%d msgs of 180 B, Nats-Msg-Id, file store", w.rows))
	addRow(fmt.Sprintf("JetStream work-queue cycle (publish, pull, ack; 64 partition consumers), %s", w.name), fmt.Sprintf("%.0f msgs/s", cycleRate), "",
		fmt.Sprintf("%d msgs of 180 B; the bus's part of the pipeline's work, without decoding or persisting", w.rows))
	addRow(fmt.Sprintf("**pipeline, %s**", w.name), fmt.Sprintf("**%.0f changes/s**", e2e), fmt.Sprintf("**%.2f**", e2e/ceiling),
		fmt.Sprintf("%d changes in %.1fs, commit to fsynced and confirmed; ratio to the lower ceiling %.0f/s; %.2f of the bus cycle", w.rows, elapsed.Seconds(), ceiling, e2e/cycleRate))
	perChange, cpuNote := describeCPU(cpuBefore, cpuAfter, w.rows, elapsed)
	addRow(fmt.Sprintf("CPU per change while catching up, %s", w.name), perChange, "", cpuNote)
	if w.memory {
		perShape := (idleIngest + idleFlushd) / float64(w.shapes)
		addRow(fmt.Sprintf("resident memory, %d shapes, idle", w.shapes), fmt.Sprintf("ingest %.0f MB, flushd %.0f MB", idleIngest/1e6, idleFlushd/1e6),
			"", fmt.Sprintf("%.0f B per shape (ingest + flushd)", perShape))
		addRow(fmt.Sprintf("resident memory, %d shapes, peak while catching up", w.shapes), fmt.Sprintf("ingest %.0f MB, flushd %.0f MB", peakIngest/1e6, peakFlushd/1e6),
			"", fmt.Sprintf("%.0f B per shape (ingest + flushd)", (peakIngest+peakFlushd)/float64(w.shapes)))
		memMu.Lock()
		memIdle[w.shapes] = idleIngest + idleFlushd
		memMu.Unlock()
	}
}

var (
	memMu   sync.Mutex
	memIdle = map[int]float64{} // shapes -> idle ingest + flushd RSS
)

// rawDecode reads slot "raw" with a pgoutput reader that does nothing but
// count insert messages, until it has seen want of them.
func rawDecode(ctx context.Context, url string, want int) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	conn, err := pgconn.Connect(ctx, url+"&replication=database")
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	if err := pglogrepl.StartReplication(ctx, conn, "raw", 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'raw'"},
	}); err != nil {
		return 0, err
	}
	changes := 0
	for changes < want {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return changes, fmt.Errorf("raw decode after %d of %d changes: %w", changes, want, err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 {
			continue
		}
		switch cd.Data[0] {
		case pglogrepl.XLogDataByteID:
			// The XLogData header is 24 bytes; the pgoutput message follows.
			if len(cd.Data) > 25 && cd.Data[25] == 'I' {
				changes++
			}
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			k, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				return 0, err
			}
			if k.ReplyRequested {
				pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: k.ServerWALEnd})
			}
		}
	}
	return changes, nil
}

// rawPublish publishes one message per fragment the pipeline publishes for
// these workloads (each row goes to another shape: one 1-row fragment per
// row), of about an encoded row change's size, with Nats-Msg-Id, async,
// into a file-stored stream with a duplicate window like FANOUT's.
func rawPublish(ctx context.Context, url string, msgs, shapes int) (float64, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "RAW", Subjects: []string{"raw.>"}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute}); err != nil {
		return 0, err
	}
	defer js.DeleteStream(context.Background(), "RAW")
	body := []byte(strings.Repeat("x", 180))
	start := time.Now()
	for i := 0; i < msgs; i++ {
		if _, err := js.PublishAsync(fmt.Sprintf("raw.%d.bench%06d", i%64, i%shapes), body, jetstream.WithMsgID(strconv.Itoa(i)), jetstream.WithStallWait(time.Minute)); err != nil {
			return 0, err
		}
	}
	if err := waitAsync(ctx, js); err != nil {
		return 0, err
	}
	return rate(msgs, time.Since(start)), nil
}

// ---- routing ----

// BenchmarkRouting routes the same changes through a registry of 1K and
// of 300K equality shapes, in process: the cost per change must not grow
// with the number of shapes.
func BenchmarkRouting(b *testing.B) {
	schema := []fanout.Column{{Name: "id", Type: "bigint", OID: 20}, {Name: "owner", Type: "integer", OID: 23}, {Name: "title", Type: "text", OID: 25}}
	const changes = 500_000
	perChange := map[int]time.Duration{}
	for _, n := range []int{1_000, maxShapes()} {
		reg := match.NewRegistry()
		start := time.Now()
		for i := 0; i < n; i++ {
			s := &fanout.Shape{Handle: fmt.Sprintf("s%d", i), Table: "public.items", Where: fmt.Sprintf("owner = %d", i), PrimaryKey: []string{"id"}, Schema: schema}
			if err := reg.Add(s); err != nil {
				b.Fatal(err)
			}
		}
		compile := time.Since(start)
		rows := make([]fanout.Row, 4096)
		rng := rand.New(rand.NewSource(1))
		for i := range rows {
			id, owner, title := strconv.Itoa(i), strconv.Itoa(rng.Intn(n)), "title "+strconv.Itoa(i)
			rows[i] = fanout.Row{"id": &id, "owner": &owner, "title": &title}
		}
		// Best of three runs: the machine is shared.
		best := time.Duration(1 << 62)
		for run := 0; run < 3; run++ {
			emitted := 0
			start := time.Now()
			for i := 0; i < changes; i++ {
				reg.Route(match.RowChange{Table: "public.items", Op: fanout.OpInsert, New: rows[i%len(rows)]},
					func(*fanout.Shape, fanout.Change) { emitted++ })
			}
			best = min(best, time.Since(start))
			if emitted != changes {
				b.Fatalf("%d shapes: %d changes routed to %d shapes, want one each", n, changes, emitted)
			}
		}
		perChange[n] = best / changes
		ratio := ""
		if n != 1_000 {
			ratio = fmt.Sprintf("%.2f", float64(perChange[n])/float64(perChange[1_000]))
		}
		addRow(fmt.Sprintf("routing per change, %d equality shapes", n), perChange[n].String(), ratio,
			fmt.Sprintf("in process, best of 3 x %d inserts; registering the shapes took %.1fs", changes, compile.Seconds()))
	}
}

// ---- latency ----

// BenchmarkLatency commits a paced load well below saturation (one
// 10-row transaction every 20 ms, each to its own shape) and measures,
// per transaction, from commit (Exec returned) to
//   - persisted: its shape's log file has the fragment (the file is polled
//     every 50 ms; the size is visible a moment before the fsync ends), and
//   - confirmed: confirmed_flush_lsn passes its end LSN (polled every 50 ms;
//     the end LSN is read afterwards from the raw slot, by xid).
func BenchmarkLatency(b *testing.B) {
	const txns, perTxn, every = 500, 10, 20 * time.Millisecond
	p := newPipe(b, 1000, "FANOUT_FLUSHD_POLL_INTERVAL=50ms")
	p.startAll()
	ctx := context.Background()
	sampler := p.pg.Connect(b)

	type txn struct {
		xid       uint32
		commit    time.Time
		persisted time.Time
		confirmed time.Time
		end       pglogrepl.LSN
	}
	all := make([]*txn, txns)
	var mu sync.Mutex
	type sample struct {
		at  time.Time
		lsn pglogrepl.LSN
	}
	var samples []sample
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // every 50 ms: shape log files and confirmed_flush_lsn
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			now := time.Now()
			mu.Lock()
			for i, t := range all {
				if t == nil || !t.persisted.IsZero() {
					continue
				}
				if fi, err := os.Stat(filepath.Join(p.dir, "shapes", "shapes", fmt.Sprintf("bench%06d", i), "log")); err == nil && fi.Size() > 0 {
					t.persisted = now
				}
			}
			mu.Unlock()
			var text *string
			if err := sampler.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'fanout'`).Scan(&text); err == nil && text != nil {
				l, _ := pglogrepl.ParseLSN(*text)
				mu.Lock()
				samples = append(samples, sample{now, l})
				mu.Unlock()
			}
		}
	}()

	next := time.Now()
	for i := 0; i < txns; i++ {
		time.Sleep(time.Until(next))
		next = next.Add(every)
		var xid uint32
		// Every row of transaction i goes to shape i.
		err := p.conn.QueryRow(ctx, `WITH ins AS (INSERT INTO items SELECT g, $3, 'title ' || g FROM generate_series($1::bigint, $2::bigint) g RETURNING 1)
			SELECT (txid_current() % 4294967296)::bigint FROM ins LIMIT 1`, i*perTxn, i*perTxn+perTxn-1, i).Scan(&xid)
		if err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		all[i] = &txn{xid: xid, commit: time.Now()}
		mu.Unlock()
	}
	final := p.currentWAL()
	p.waitConfirmed(final, 2*time.Minute)
	testenv.Eventually(b, time.Minute, "every transaction's shape log to be written, and a slot sample past the last commit", func() bool {
		mu.Lock()
		defer mu.Unlock()
		if len(samples) == 0 || samples[len(samples)-1].lsn < final {
			return false
		}
		for _, t := range all {
			if t.persisted.IsZero() {
				return false
			}
		}
		return true
	})
	close(stop)
	wg.Wait()

	ends, err := commitEnds(ctx, p.pg.URL, txns)
	if err != nil {
		b.Fatal(err)
	}
	var persisted, confirmed []time.Duration
	for _, t := range all {
		t.end = ends[t.xid]
		if t.end == 0 {
			b.Fatalf("xid %d not seen in the raw slot", t.xid)
		}
		persisted = append(persisted, max(0, t.persisted.Sub(t.commit)))
		for _, s := range samples {
			if s.lsn >= t.end && s.at.After(t.commit) {
				confirmed = append(confirmed, s.at.Sub(t.commit))
				break
			}
		}
	}
	if len(confirmed) != txns {
		b.Fatalf("only %d of %d transactions seen confirmed in the samples", len(confirmed), txns)
	}
	load := fmt.Sprintf("%d txns of %d rows, one every %s (%d changes/s), 1K shapes", txns, perTxn, every, int(float64(perTxn)/every.Seconds()))
	addRow("commit to persisted in the shape log, p50 / p99", fmt.Sprintf("%s / %s", pct(persisted, 50), pct(persisted, 99)), "", load+"; log file polled every 50 ms")
	addRow("commit to confirmed_flush_lsn, p50 / p99", fmt.Sprintf("%s / %s", pct(confirmed, 50), pct(confirmed, 99)), "", load+"; slot polled every 50 ms")
}

func pct(ds []time.Duration, p int) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := min(len(s)-1, (len(s)*p+99)/100-1)
	return s[max(0, i)].Round(time.Millisecond).String()
}

// commitEnds reads slot "raw" until it has seen n commits and returns each
// transaction's end LSN (what the pipeline confirms) by xid.
func commitEnds(ctx context.Context, url string, n int) (map[uint32]pglogrepl.LSN, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	conn, err := pgconn.Connect(ctx, url+"&replication=database")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	if err := pglogrepl.StartReplication(ctx, conn, "raw", 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'raw'"},
	}); err != nil {
		return nil, err
	}
	ends := map[uint32]pglogrepl.LSN{}
	var xid uint32
	for len(ends) < n {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return nil, fmt.Errorf("raw slot after %d of %d commits: %w", len(ends), n, err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 || cd.Data[0] != pglogrepl.XLogDataByteID {
			continue
		}
		x, err := pglogrepl.ParseXLogData(cd.Data[1:])
		if err != nil {
			return nil, err
		}
		m, err := pglogrepl.Parse(x.WALData)
		if err != nil {
			return nil, err
		}
		switch m := m.(type) {
		case *pglogrepl.BeginMessage:
			xid = m.Xid
		case *pglogrepl.CommitMessage:
			ends[xid] = m.TransactionEndLSN
		}
	}
	return ends, nil
}

// ---- recovery ----

// BenchmarkRecovery SIGKILLs a consumer under a steady load, with the
// production detection settings (heartbeat every 1s, timeout 5s), and
// measures the time until the safe LSN passes the WAL position of the
// moment of the kill (everything committed before the kill is persisted by
// the survivor), and the peak retained WAL of the slot meanwhile.
func BenchmarkRecovery(b *testing.B) {
	const heartbeatTimeout = 5 * time.Second
	p := newPipe(b, 1000, "FANOUT_FLUSHD_POLL_INTERVAL=100ms", "FANOUT_FLUSHD_HEARTBEAT_TIMEOUT="+heartbeatTimeout.String(),
		"FANOUT_CONSUMER_HEARTBEAT_INTERVAL=1s", "FANOUT_POSTGRES_STATUS_INTERVAL=10s")
	p.startAll()
	ctx := context.Background()

	// Steady load: a 100-row transaction over 100 shapes every 20 ms.
	stop := make(chan struct{})
	loadDone := make(chan error, 1)
	loadConn := p.pg.Connect(b)
	go func() {
		id := 0
		for {
			select {
			case <-stop:
				loadDone <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := loadConn.Exec(ctx, `INSERT INTO items SELECT g, g % 1000, 'title ' || g FROM generate_series($1::bigint, $2::bigint) g`, id, id+99); err != nil {
				loadDone <- err
				return
			}
			id += 100
		}
	}()
	time.Sleep(3 * time.Second) // the load runs steadily before the kill

	kill := time.Now()
	p.procs["c1"].Kill()
	delete(p.procs, "c1") // killed on purpose
	atKill := p.currentWAL()
	var peak int64
	var recovered time.Duration
	testenv.Eventually(b, 2*time.Minute, "the safe LSN to pass the WAL position of the kill", func() bool {
		retained := int64(p.currentWAL()) - int64(p.lsn(`SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'fanout'`))
		peak = max(peak, retained)
		if safeLSN(ctx, p.bus) >= atKill {
			recovered = time.Since(kill)
			return true
		}
		return false
	})
	// Keep sampling retained WAL until the confirmed position has caught up too.
	testenv.Eventually(b, 2*time.Minute, "confirmed_flush_lsn to pass the WAL position of the kill", func() bool {
		c := p.lsn(`SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'fanout'`)
		peak = max(peak, int64(p.currentWAL())-int64(c))
		return c >= atKill
	})
	close(stop)
	if err := <-loadDone; err != nil {
		b.Fatal(err)
	}
	target := heartbeatTimeout + 2*time.Second
	verdict := "meets"
	if recovered > target {
		verdict = "misses"
	}
	addRow("recovery: SIGKILL of a consumer to safe LSN past the kill point", recovered.Round(10*time.Millisecond).String(), "",
		fmt.Sprintf("heartbeat timeout %s; %s the target of %s; load 5,000 changes/s", heartbeatTimeout, verdict, target))
	addRow("recovery: peak retained WAL (current - confirmed_flush_lsn) meanwhile", fmt.Sprintf("%.1f MB", float64(peak)/1e6), "", "sampled every 50 ms from the kill until confirmed passed the kill point")
}

func safeLSN(ctx context.Context, bus *fanout.Bus) pglogrepl.LSN {
	e, err := bus.State.Get(ctx, fanout.KeySafeLSN)
	if err != nil {
		return 0
	}
	s, err := fanout.DecodeSafeLSN(e.Value())
	if err != nil {
		return 0
	}
	return s.LSN
}
