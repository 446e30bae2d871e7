package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout/testenv"
)

// The HTTP shape API (bin/shapeapi), measured as Electric's clients use it:
// the initial sync of a 100K-row shape against COPY of the same rows; 2,000
// held live long polls over 1,000 shapes (resident memory per held request),
// and commit-to-client latency at 500 changes/s.

// startShapeAPI builds and runs bin/shapeapi on the pipe; it returns the API
// base URL and its metrics address.
func (p *pipe) startShapeAPI() (api, metrics string) {
	p.b.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	bin := filepath.Join(p.b.TempDir(), "shapeapi")
	build := exec.Command("go", "build", "-o", bin, "./consumers/cmd/shapeapi")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		p.b.Fatalf("go build ./consumers/cmd/shapeapi: %v\n%s", err, out)
	}
	apiAddr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(p.b))
	metrics = "127.0.0.1:" + strconv.Itoa(testenv.FreePort(p.b))
	cmd := exec.Command(bin)
	cmd.Env = append(append(os.Environ(), p.env...), "FANOUT_API_ADDR="+apiAddr, "FANOUT_HTTP_ADDR="+metrics,
		"FANOUT_API_LONG_POLL_TIMEOUT=20s", "FANOUT_API_READY_TIMEOUT=5m")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		p.b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p.b.Cleanup(func() { cmd.Process.Kill(); <-done })
	p.http["shapeapi"] = metrics
	p.pids["shapeapi"] = cmd.Process.Pid
	testenv.Eventually(p.b, time.Minute, "shapeapi to be ready", func() bool { return p.ready("shapeapi") })
	return "http://" + apiAddr + "/v1/shape", metrics
}

// newAPIPipe is a pipeline with a snapshotting consumer (c3: startAll's
// take no snapshots) and bin/shapeapi; it returns the API's base URL.
func newAPIPipe(b *testing.B) (*pipe, string) {
	p := newPipe(b, 0)
	p.startAll()
	p.start("c3", "consumer", "FANOUT_CONSUMER_ID=c3")
	testenv.Eventually(b, 2*time.Minute, "c3 /readyz", func() bool { return p.ready("c3") })
	base, _ := p.startShapeAPI()
	return p, base
}

// shapeResponse is one GET /v1/shape answer.
type shapeResponse struct {
	status   int
	handle   string
	offset   string
	cursor   string
	upToDate bool
	body     []byte
	header   http.Header
}

func getShape(ctx context.Context, c *http.Client, base string, q url.Values) (shapeResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"?"+q.Encode(), nil)
	if err != nil {
		return shapeResponse{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return shapeResponse{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	_, upToDate := resp.Header["Electric-Up-To-Date"]
	return shapeResponse{status: resp.StatusCode, handle: resp.Header.Get("electric-handle"), offset: resp.Header.Get("electric-offset"),
		cursor: resp.Header.Get("electric-cursor"), upToDate: upToDate, body: body, header: resp.Header}, err
}

// syncShape reads a shape from -1 to up-to-date, as a client's initial sync
// does, retrying 503s (a new shape's snapshot is being taken). It returns
// the handle, the offset to go live from, and the messages read.
func syncShape(ctx context.Context, c *http.Client, base string, def url.Values) (handle, offset string, messages int, err error) {
	handle, offset, messages, _, err = syncShapeSized(ctx, c, base, def)
	return handle, offset, messages, err
}

// syncShapeSized is syncShape that also counts the bytes of the bodies read.
func syncShapeSized(ctx context.Context, c *http.Client, base string, def url.Values) (handle, offset string, messages int, size int64, err error) {
	offset = "-1"
	for {
		q := url.Values{}
		for k, v := range def {
			q[k] = v
		}
		q.Set("offset", offset)
		if handle != "" {
			q.Set("handle", handle)
		}
		r, err := getShape(ctx, c, base, q)
		if err != nil {
			return "", "", 0, 0, err
		}
		switch r.status {
		case http.StatusOK:
		case http.StatusServiceUnavailable:
			time.Sleep(200 * time.Millisecond)
			continue
		default:
			return "", "", 0, 0, fmt.Errorf("GET %s: %d %s", q.Encode(), r.status, r.body)
		}
		// Counted, not parsed: the server is measured, not a JSON decoder.
		messages += bytes.Count(r.body, []byte(`{"key":`))
		size += int64(len(r.body))
		handle, offset = r.handle, r.offset
		if r.upToDate {
			return handle, offset, messages, size, nil
		}
	}
}

func BenchmarkShapeAPI(b *testing.B) {
	rows := 100_000 / scale()
	shapes := max(1000/scale(), 10)
	const polls = 2000
	p, base := newAPIPipe(b)
	ctx := context.Background()
	p.pg.Exec(b, p.conn, fmt.Sprintf(`INSERT INTO items SELECT g, g %% %d, 'title ' || g FROM generate_series(1, %d) g`, shapes, rows))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: polls + 100, IdleConnTimeout: time.Minute}}

	// Initial sync of the whole table: the first read once the shape's
	// snapshot is taken, then a second client's. (Version 2 snapshot chunks
	// hold the messages: both copy the chunk files; older snapshots are
	// decoded and encoded, then served from the API's chunk cache.)
	all := url.Values{"table": {"items"}}
	var first, second time.Duration
	testenv.Eventually(b, 5*time.Minute, "the shape's snapshot", func() bool {
		// offset=now answers once the snapshot is complete, without reading it.
		r, err := getShape(ctx, client, base, url.Values{"table": {"items"}, "offset": {"now"}})
		return err == nil && r.status == http.StatusOK
	})
	// The read is measured, not the pipeline: wait until ingest decoded the
	// insert and the consumers have persisted what it routed (their counts
	// hold still for a second).
	persisted := func() float64 {
		return p.metric("c1", "fanout_consumer_changes_persisted_total") + p.metric("c2", "fanout_consumer_changes_persisted_total") +
			p.metric("c3", "fanout_consumer_changes_persisted_total")
	}
	quietBy := time.Now().Add(2 * time.Minute)
	for last := -1.0; time.Now().Before(quietBy); time.Sleep(time.Second) {
		n := persisted()
		if n == last && p.metric("ingest", "fanout_ingest_changes_decoded_total") >= float64(rows) {
			break
		}
		last = n
	}
	for i, d := range []*time.Duration{&first, &second} {
		wait := func() {}
		if i == 0 { // FANOUT_BENCH_PROFILE=<dir>: a CPU profile of the first read
			wait = p.profile("shapeapi-first-sync", 3, "shapeapi")
			time.Sleep(100 * time.Millisecond)
		}
		start := time.Now()
		_, _, n, err := syncShape(ctx, client, base, all)
		if err != nil {
			b.Fatal(err)
		}
		*d = time.Since(start)
		wait()
		if n < rows {
			b.Fatalf("initial sync read %d messages, the table has %d rows", n, rows)
		}
	}
	// The ceiling: the best of three COPYs of the same rows (a warm table,
	// as BenchmarkSnapshot measures it; one run varied 31 to 57 ms).
	copyTime := time.Duration(1 << 62)
	for range 3 {
		start := time.Now()
		if _, err := p.conn.PgConn().CopyTo(ctx, io.Discard, `COPY (SELECT id, owner, title FROM items) TO STDOUT`); err != nil {
			b.Fatal(err)
		}
		copyTime = min(copyTime, time.Since(start))
	}
	addRow("shapeapi initial sync (first read), rows/s", fmt.Sprintf("%.0f", rate(rows, first)), fmt.Sprintf("%.2f of COPY", copyTime.Seconds()/first.Seconds()),
		fmt.Sprintf("%d rows in %s (the first client once the snapshot is taken: chunk files copied), COPY %s; target ratio 0.5", rows, first.Round(time.Millisecond), copyTime.Round(time.Millisecond)))
	addRow("shapeapi initial sync (cached chunks), rows/s", fmt.Sprintf("%.0f", rate(rows, second)), fmt.Sprintf("%.2f of COPY", copyTime.Seconds()/second.Seconds()),
		fmt.Sprintf("%d rows in %s (a second client of the shape), COPY %s; target ratio 0.5", rows, second.Round(time.Millisecond), copyTime.Round(time.Millisecond)))

	// Shapes owner = i, created on demand, 8 requests at a time.
	type live struct{ handle, offset string }
	lives := make([]live, shapes)
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	start := time.Now()
	for i := range shapes {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			h, off, _, err := syncShape(ctx, client, base, url.Values{"table": {"items"}, "where": {fmt.Sprintf("owner = %d", i)}})
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
			lives[i] = live{h, off}
		})
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d shapes created on demand and synced in %s", shapes, time.Since(start).Round(time.Millisecond))

	runtime.GC()
	time.Sleep(time.Second)
	baseRSS := p.rss("shapeapi")

	// polls long-poll clients, polls/shapes per shape; each records when it
	// first saw each inserted id.
	var seenMu sync.Mutex
	seen := map[int64]time.Time{}
	pctx, stop := context.WithCancel(ctx)
	var clients sync.WaitGroup
	for i := range polls {
		sh := lives[i%shapes]
		clients.Go(func() {
			offset, handle, cursor := sh.offset, sh.handle, ""
			for pctx.Err() == nil {
				q := url.Values{"table": {"items"}, "where": {fmt.Sprintf("owner = %d", i%shapes)}, "offset": {offset}, "handle": {handle}, "live": {"true"}, "cursor": {cursor}}
				r, err := getShape(pctx, client, base, q)
				if err != nil || r.status != http.StatusOK {
					if pctx.Err() == nil {
						time.Sleep(100 * time.Millisecond)
					}
					continue
				}
				noteInserts(r.body, time.Now(), &seenMu, seen)
				offset, cursor = r.offset, r.cursor
			}
		})
	}
	testenv.Eventually(b, 2*time.Minute, fmt.Sprintf("%d live requests to be held", polls), func() bool {
		return p.metric("shapeapi", "fanout_shapeapi_held_requests") >= polls
	})
	time.Sleep(2 * time.Second)
	heldRSS := p.rss("shapeapi")
	perHeld := (heldRSS - baseRSS) / polls
	addRow("shapeapi resident memory per held long poll", fmt.Sprintf("%.1f KiB", perHeld/1024), "",
		fmt.Sprintf("%d held over %d shapes: RSS %.1f MiB -> %.1f MiB", polls, shapes, baseRSS/(1<<20), heldRSS/(1<<20)))

	// 500 changes/s for 10 s, each an insert into a random shape.
	const perSec, secs = 500, 10
	// FANOUT_BENCH_PROFILE=<dir>: a CPU profile of the API's wake-ups.
	profiled := p.profile("shapeapi-live", secs-2, "shapeapi")
	committed := map[int64]time.Time{}
	tick := time.NewTicker(time.Second / perSec)
	next := int64(rows + 1)
	for range perSec * secs {
		<-tick.C
		owner := rand.IntN(shapes)
		if _, err := p.conn.Exec(ctx, `INSERT INTO items VALUES ($1, $2, 'live')`, next, owner); err != nil {
			b.Fatal(err)
		}
		committed[next] = time.Now()
		next++
	}
	tick.Stop()
	profiled()
	lat := commitToClient(b, committed, &seenMu, seen)
	stop()
	clients.Wait()
	addRow("shapeapi commit-to-client latency p50 / p99", pct(lat, 50)+" / "+pct(lat, 99), "",
		fmt.Sprintf("%d changes/s for %d s over %d shapes, %d long-poll clients; target p99 < 250 ms", perSec, secs, shapes, polls))
}

// noteInserts records when each id inserted in a response's messages was
// first seen.
func noteInserts(body []byte, now time.Time, mu *sync.Mutex, seen map[int64]time.Time) {
	var msgs []struct {
		Value   map[string]*string `json:"value"`
		Headers map[string]any     `json:"headers"`
	}
	json.Unmarshal(body, &msgs)
	mu.Lock()
	defer mu.Unlock()
	for _, m := range msgs {
		if m.Headers["operation"] == "insert" && m.Value["id"] != nil {
			id, _ := strconv.ParseInt(*m.Value["id"], 10, 64)
			if _, ok := seen[id]; !ok {
				seen[id] = now
			}
		}
	}
}

// commitToClient waits until a client saw every committed id, and returns
// the times from commit to client, sorted.
func commitToClient(b testing.TB, committed map[int64]time.Time, mu *sync.Mutex, seen map[int64]time.Time) []time.Duration {
	b.Helper()
	var lat []time.Duration
	testenv.Eventually(b, time.Minute, "every committed change to reach a client", func() bool {
		mu.Lock()
		defer mu.Unlock()
		lat = lat[:0]
		for id, at := range committed {
			t, ok := seen[id]
			if !ok {
				return false
			}
			lat = append(lat, t.Sub(at))
		}
		return true
	})
	slices.Sort(lat)
	return lat
}
