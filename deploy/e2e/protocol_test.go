package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout/testenv"
)

// apiResponse is one answer of GET /v1/shape as the test reads it.
type apiResponse struct {
	status   int
	header   http.Header
	messages []map[string]any
	raw      string
}

func (r apiResponse) offset() string { return r.header.Get("electric-offset") }

func (r apiResponse) upToDate() bool {
	_, ok := r.header["Electric-Up-To-Date"]
	return ok
}

// rowIDs are the ids of the row messages of r, in order.
func (r apiResponse) rowIDs() []string {
	var ids []string
	for _, m := range r.messages {
		if v, ok := m["value"].(map[string]any); ok {
			ids = append(ids, fmt.Sprint(v["id"]))
		}
	}
	return ids
}

func (r apiResponse) control(name string) map[string]any {
	for _, m := range r.messages {
		if h, ok := m["headers"].(map[string]any); ok && h["control"] == name {
			return h
		}
	}
	return nil
}

// apiGet sends GET /v1/shape with params.
func apiGet(t *testing.T, base string, params url.Values) apiResponse {
	t.Helper()
	return request(t, http.MethodGet, base, params)
}

func request(t *testing.T, method, base string, params url.Values) apiResponse {
	t.Helper()
	r, err := fetch(method, base, params)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fetch is request for goroutines other than the test's: it returns the
// error instead of failing the test.
func fetch(method, base string, params url.Values) (apiResponse, error) {
	req, err := http.NewRequest(method, base+"?"+params.Encode(), nil)
	if err != nil {
		return apiResponse{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return apiResponse{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return apiResponse{}, fmt.Errorf("%s %v: read body: %w", method, params, err)
	}
	r := apiResponse{status: resp.StatusCode, header: resp.Header, raw: string(body)}
	if resp.StatusCode == 200 && method == http.MethodGet && len(body) > 0 {
		if err := json.Unmarshal(body, &r.messages); err != nil {
			return r, fmt.Errorf("GET %v: body is not a JSON array: %w\n%.500s", params, err, body)
		}
	}
	return r, nil
}

func shapeParams(table, where string, kv ...string) url.Values {
	q := url.Values{"table": {table}}
	if where != "" {
		q.Set("where", where)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return q
}

// syncToEnd reads a shape from -1 response by response, as a client does,
// until a response is up-to-date, and returns every response.
func syncToEnd(t *testing.T, base string, q url.Values) []apiResponse {
	t.Helper()
	q = cloneValues(q)
	q.Set("offset", "-1")
	var out []apiResponse
	for range 1000 {
		r := apiGet(t, base, q)
		if r.status != 200 {
			t.Fatalf("GET %v: %d %s", q, r.status, r.raw)
		}
		out = append(out, r)
		if r.upToDate() {
			return out
		}
		q.Set("offset", r.offset())
		q.Set("handle", r.header.Get("electric-handle"))
	}
	t.Fatalf("no up-to-date after 1000 responses of %v", q)
	return nil
}

func cloneValues(q url.Values) url.Values {
	c := url.Values{}
	for k, v := range q {
		c[k] = append([]string(nil), v...)
	}
	return c
}

// Electric's protocol details that its clients rely on (ELECTRIC_API.md,
// "Details the clients rely on"), each checked on a running shapeapi.
func TestShapeAPIProtocolDetails(t *testing.T) {
	s := newStack(t)
	s.exec(electricItems)
	// About 35 KB of snapshot: Electric's test wants it in chunks of about
	// 10 kB with chunk_bytes 10000.
	s.exec(`INSERT INTO items SELECT g, 1, repeat('x', 150) || g, g, g % 2 = 0, '{}', g, '{}' FROM generate_series(1, 150) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	base := s.startShapeAPI()
	root := strings.TrimSuffix(base, "/v1/shape")

	t.Run("snapshot chunks of api.chunk_bytes", func(t *testing.T) {
		rs := syncToEnd(t, base, shapeParams("items", "owner = 1"))
		var ids []string
		for i, r := range rs {
			ids = append(ids, r.rowIDs()...)
			if r.control("snapshot-end") != nil && i != len(rs)-2 {
				t.Errorf("snapshot-end in response %d of %d", i, len(rs))
			}
			if i < len(rs)-2 && (len(r.raw) < 8000 || len(r.raw) > 12000) {
				t.Errorf("snapshot response %d is %d bytes, want about 10000", i, len(r.raw))
			}
			if r.header.Get("electric-server") == "" {
				t.Errorf("response %d has no electric-server header", i)
			}
		}
		if len(ids) != 150 || len(rs) < 4 {
			t.Fatalf("%d rows in %d responses", len(ids), len(rs))
		}
		if rs[0].upToDate() {
			t.Fatal("the -1 response is up-to-date")
		}
		if hd := rs[0].header.Get("electric-has-data"); hd != "true" {
			t.Errorf("electric-has-data of a snapshot response is %q", hd)
		}
	})

	t.Run("HEAD, GET / and health", func(t *testing.T) {
		r := request(t, http.MethodHead, base, shapeParams("items", "owner = 1", "offset", "-1"))
		if r.status != 200 || r.header.Get("electric-handle") == "" || r.raw != "" {
			t.Fatalf("HEAD: %d, handle %q, body %q", r.status, r.header.Get("electric-handle"), r.raw)
		}
		resp, err := http.Get(root + "/")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET /: %v %v", resp, err)
		}
		resp.Body.Close()
		resp, err = http.Get(root + "/v1/health")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != `{"status":"active"}` {
			t.Fatalf("health: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("offset=now and 0_inf", func(t *testing.T) {
		q := shapeParams("items", "owner = 999")
		q.Set("offset", "now")
		r := apiGet(t, base, q)
		if r.status != 200 || r.offset() != "0_inf" || !r.upToDate() || r.header.Get("electric-has-data") != "false" {
			t.Fatalf("offset=now on a shape without entries: %d offset %q up-to-date %v has-data %q %s", r.status, r.offset(), r.upToDate(), r.header.Get("electric-has-data"), r.raw)
		}
		q.Set("offset", "0_inf")
		q.Set("handle", r.header.Get("electric-handle"))
		if r := apiGet(t, base, q); r.status != 200 || !r.upToDate() {
			t.Fatalf("offset=0_inf: %d %s", r.status, r.raw)
		}
	})

	t.Run("log=changes_only from -1", func(t *testing.T) {
		q := shapeParams("items", "owner = 1", "log", "changes_only", "offset", "-1")
		r := apiGet(t, base, q)
		if r.status != 200 || len(r.messages) != 1 || r.control("snapshot-end") == nil || r.upToDate() {
			t.Fatalf("changes_only -1: %d up-to-date %v %s", r.status, r.upToDate(), r.raw)
		}
		q.Set("offset", r.offset())
		q.Set("handle", r.header.Get("electric-handle"))
		if r := apiGet(t, base, q); r.status != 200 || !r.upToDate() || len(r.rowIDs()) != 0 {
			t.Fatalf("changes_only after -1: %d up-to-date %v rows %v", r.status, r.upToDate(), r.rowIDs())
		}
	})

	t.Run("out-of-bounds offsets", func(t *testing.T) {
		rs := syncToEnd(t, base, shapeParams("items", "owner = 1"))
		handle := rs[0].header.Get("electric-handle")
		for _, off := range []string{"0_18446744073709551615", "0_9999999999", "99999999999999_0"} {
			q := shapeParams("items", "owner = 1", "offset", off, "handle", handle)
			start := time.Now()
			r := apiGet(t, base, q)
			if r.status != 400 || !strings.Contains(r.raw, "out of bounds") && !strings.Contains(r.raw, "out of range") {
				t.Errorf("offset %s: %d %s, want 400 out of bounds", off, r.status, r.raw)
			}
			if strings.HasPrefix(off, "9") && time.Since(start) < 2*time.Second {
				t.Errorf("offset %s past the log's end was refused after %s, not held for half the long poll", off, time.Since(start))
			}
		}
	})

	t.Run("a large transaction is never served in part", func(t *testing.T) {
		q := shapeParams("items", "owner = 1")
		rs := syncToEnd(t, base, q)
		handle := rs[0].header.Get("electric-handle")
		s.exec(`INSERT INTO items SELECT g, 1, 'bulk' || g, g, true, '{}', g, '{}' FROM generate_series(1000, 3999) g`)
		// Follow the log from the end as a client does, until the bulk is in.
		off := rs[len(rs)-1].offset()
		var ids []string
		testenv.Eventually(t, 60*time.Second, "the bulk insert to be read", func() bool {
			q := shapeParams("items", "owner = 1", "offset", off, "handle", handle)
			r := apiGet(t, base, q)
			if r.status != 200 {
				t.Fatalf("GET %v: %d %s", q, r.status, r.raw)
			}
			got := r.rowIDs()
			ids = append(ids, got...)
			if r.upToDate() && len(ids) > 0 && len(ids) < 3000 {
				t.Fatalf("up-to-date after %d of the transaction's 3000 rows (offset %s)", len(ids), r.offset())
			}
			off = r.offset()
			return len(ids) >= 3000 && r.upToDate()
		})
		if len(ids) != 3000 {
			t.Fatalf("read %d rows of the 3000-row transaction", len(ids))
		}
	})

	t.Run("SSE sends up-to-date only after data", func(t *testing.T) {
		rs := syncToEnd(t, base, shapeParams("items", "owner = 1"))
		last := rs[len(rs)-1]
		q := shapeParams("items", "owner = 1", "offset", last.offset(), "handle", last.header.Get("electric-handle"),
			"live", "true", "live_sse", "true")
		resp, err := http.Get(base + "?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		events := make(chan string, 100)
		go func() {
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 1<<20), 1<<24)
			for sc.Scan() {
				if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
					events <- line
				}
			}
			close(events)
		}()
		select {
		case ev := <-events:
			t.Fatalf("an SSE stream opened at the end sent %s before any change", ev)
		case <-time.After(2 * time.Second):
		}
		s.exec(`INSERT INTO items VALUES (5000, 1, 'sse')`)
		var got []string
		deadline := time.After(30 * time.Second)
		for len(got) == 0 || !strings.Contains(got[len(got)-1], "up-to-date") {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("SSE stream ended after %v", got)
				}
				got = append(got, ev)
			case <-deadline:
				t.Fatalf("SSE events after an insert: %v", got)
			}
		}
		if len(got) != 2 || !strings.Contains(got[0], `"5000"`) {
			t.Fatalf("SSE events after an insert: %v, want the insert then up-to-date", got)
		}
	})

	t.Run("up-to-date watermarks are true", func(t *testing.T) {
		rs := syncToEnd(t, base, shapeParams("items", "owner = 1"))
		utd := rs[len(rs)-1].control("up-to-date")
		w, err := strconv.ParseUint(fmt.Sprint(utd["global_last_seen_lsn"]), 10, 64)
		if err != nil {
			t.Fatalf("up-to-date %v", utd)
		}
		// Everything committed at or below the watermark is in the shape:
		// Postgres's current WAL position at least covers it.
		if cur := uint64(s.currentWAL()); w > cur {
			t.Fatalf("watermark %d is past the WAL's end %d", w, cur)
		}
	})
}

// A large transaction that reaches a shape's log in many records, persisted
// one bus message at a time by a consumer that is frozen and then killed
// halfway through it (the rest persisted by the next owner), is served to
// readers in one step: no response before its last record is durable holds
// any of it, and none that is up-to-date holds part of it.
func TestLargeTransactionReachesReadersWhole(t *testing.T) {
	s := newStack(t)
	s.exec(`CREATE TABLE big (id int PRIMARY KEY, batch int NOT NULL, v text)`)
	s.startFlushd()
	oneAtATime := "FANOUT_CONSUMER_BATCH=1" // each bus message is its own batch: a transaction lands record by record
	c1 := s.start("c1", "consumer", "FANOUT_CONSUMER_ID=c1", oneAtATime)
	s.start("ingest", "ingest", smallFragments...)
	s.waitSlot()
	base := s.startShapeAPI()
	rs := syncToEnd(t, base, shapeParams("big", "batch > 0"))
	handle := rs[0].header.Get("electric-handle")

	// Readers follow the log as clients do, until they have the
	// transaction, and record what every response held of it.
	type seen struct {
		rows     int
		upToDate bool
	}
	results := make(chan []seen, 2)
	stop := make(chan struct{})
	follow := func(live bool) {
		var got []seen
		defer func() { results <- got }()
		off, total := rs[len(rs)-1].offset(), 0
		for total < 3000 {
			select {
			case <-stop:
				return
			default:
			}
			q := shapeParams("big", "batch > 0", "offset", off, "handle", handle)
			if live {
				q.Set("live", "true")
			}
			r, err := fetch(http.MethodGet, base, q)
			if err == nil && r.status != 200 {
				err = fmt.Errorf("GET %v: %d %s", q, r.status, r.raw)
			}
			if err != nil {
				select {
				case <-stop: // the test ended
				default:
					t.Errorf("reader: %v", err)
				}
				return
			}
			n := len(r.rowIDs())
			total += n
			got = append(got, seen{rows: total, upToDate: r.upToDate()})
			off = r.offset()
		}
	}
	go follow(false)
	go follow(true)
	defer close(stop)

	c1.Signal(syscall.SIGSTOP)
	s.exec(`INSERT INTO big SELECT g, 7, repeat('v', 40) || g FROM generate_series(1, 3000) g`)
	commit := s.currentWAL()
	// Let c1 persist part of the transaction, then freeze it again.
	handleLog := func() (records, last int) {
		shapelog.ScanLog(s.storageDir(), handle, func(r shapelog.LogRecord) error {
			if r.Accepted {
				records++
				if r.Last {
					last++
				}
			}
			return nil
		})
		return records, last
	}
	testenv.Eventually(t, 30*time.Second, "ingest to publish the transaction", func() bool {
		return s.publishedLSN() >= commit
	})
	c1.Signal(syscall.SIGCONT)
	partial := false
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if records, _ := handleLog(); records > 0 {
			c1.Signal(syscall.SIGSTOP)
			records, last := handleLog()
			partial = last == 0
			t.Logf("consumer frozen with %d records of the transaction in the log (its last one: %v)", records, last > 0)
			break
		}
		time.Sleep(time.Millisecond)
	}
	if !partial {
		t.Fatal("could not freeze the consumer in the middle of the transaction: the test proves nothing (the log was complete)")
	}
	// While only part of it is durable, readers get none of it.
	for range 5 {
		q := shapeParams("big", "batch > 0", "offset", rs[len(rs)-1].offset(), "handle", handle)
		if r := apiGet(t, base, q); len(r.rowIDs()) != 0 {
			t.Fatalf("a read while the transaction is persisted in part served %d of its rows", len(r.rowIDs()))
		}
	}
	// The owner dies; the next one persists the rest.
	c1.Kill()
	s.start("c2", "consumer", "FANOUT_CONSUMER_ID=c2", oneAtATime)
	for range 2 {
		select {
		case got := <-results:
			for i, r := range got {
				if r.rows > 0 && r.rows < 3000 && r.upToDate {
					t.Fatalf("response %d was up-to-date with %d of the transaction's 3000 rows", i, r.rows)
				}
			}
			if len(got) == 0 || got[len(got)-1].rows != 3000 {
				t.Fatalf("a reader ended with %v", got[max(0, len(got)-1):])
			}
		case <-time.After(90 * time.Second):
			t.Fatal("the readers did not get the whole transaction after the takeover")
		}
	}
}
