package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout/testenv"
)

// Guarantee 8: the HTTP API is safe to expose. Each test is a finding of
// the review of issue 27 (a hostile or careless client on a private
// stack), against the real services, Postgres and NATS, on 127.0.0.1.

// apiResp is one answer of the shape API.
type apiResp struct {
	code int
	h    http.Header
	body string
}

func (r apiResp) String() string { return fmt.Sprintf("%d %s", r.code, r.body) }

// shapeGet sends one GET /v1/shape.
func shapeGet(t *testing.T, base string, q url.Values) apiResp {
	t.Helper()
	c := &http.Client{Timeout: time.Minute}
	resp, err := c.Get(base + "?" + q.Encode())
	if err != nil {
		t.Fatalf("GET %s: %v", q.Encode(), err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return apiResp{code: resp.StatusCode, h: resp.Header, body: string(b)}
}

// apiFirst sends GET /v1/shape until it is answered otherwise than 503,
// waiting what each 503's retry-after says, as the clients do.
func apiFirst(t *testing.T, base string, q url.Values, timeout time.Duration) apiResp {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := shapeGet(t, base, q)
		if r.code != http.StatusServiceUnavailable {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s still answers %s after %s", q.Encode(), r, timeout)
		}
		wait, _ := strconv.Atoi(r.h.Get("retry-after"))
		time.Sleep(time.Duration(max(wait, 1)) * time.Second)
	}
}

// syncPast503 reads a shape from -1 until up-to-date (waiting out 503s as
// clients do) and returns its handle
// and the offset to go live from.
func syncPast503(t *testing.T, base string, def url.Values) (handle, offset string) {
	t.Helper()
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
		r := apiFirst(t, base, q, 2*time.Minute)
		if r.code != http.StatusOK {
			t.Fatalf("sync %s: %s", q.Encode(), r)
		}
		handle, offset = r.h.Get("electric-handle"), r.h.Get("electric-offset")
		if _, ok := r.h["Electric-Up-To-Date"]; ok {
			return handle, offset
		}
	}
}

func shapeQuery(kv ...string) url.Values {
	q := url.Values{}
	for i := 0; i < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return q
}

// invalid asserts Electric's 400 body with an error on param containing want.
func invalid(t *testing.T, what string, r apiResp, param, want string) {
	t.Helper()
	var body struct {
		Message string         `json:"message"`
		Errors  map[string]any `json:"errors"`
	}
	if r.code != http.StatusBadRequest || json.Unmarshal([]byte(r.body), &body) != nil || body.Message != "Invalid request" {
		t.Errorf("%s: got %s, want 400 Invalid request", what, r)
		return
	}
	msgs, _ := json.Marshal(body.Errors[param])
	if body.Errors[param] == nil || !strings.Contains(string(msgs), want) {
		t.Errorf("%s: 400 errors %v, want %s containing %q", what, body.Errors, param, want)
	}
}

// Critical finding: pg_authid (SCRAM hashes), pg_statistic (sampled
// values) and a table outside the publication were served, and ingest set
// REPLICA IDENTITY FULL on that table for the request.
func TestShapeAPIServesOnlyPublishedTables(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.exec(`CREATE TABLE other (id int PRIMARY KEY, v text); CREATE SCHEMA private;
		CREATE TABLE private.secrets (id int PRIMARY KEY, secret text); INSERT INTO private.secrets VALUES (1, 'hunter2');
		INSERT INTO items VALUES (1, 1, 'a', 'b'); INSERT INTO other VALUES (1, 'x');
		ANALYZE items`)
	s.exec(`CREATE PUBLICATION fanout FOR TABLE items, other`) // ingest uses it as it is
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	base := s.startShapeAPI()

	for _, table := range []string{"pg_catalog.pg_authid", "pg_authid", "pg_catalog.pg_statistic", "information_schema.tables",
		"pg_toast.pg_toast_1262", "private.secrets"} {
		r := shapeGet(t, base, shapeQuery("table", table, "offset", "-1"))
		invalid(t, "GET table="+table, r, "table", "")
		if strings.Contains(r.body, "SCRAM") || strings.Contains(r.body, "hunter2") {
			t.Errorf("GET table=%s leaked data: %s", table, r.body)
		}
	}
	r := shapeGet(t, base, shapeQuery("table", "private.secrets", "offset", "-1"))
	invalid(t, "a table outside the publication", r, "table", "not in publication fanout")
	// No shape was made for it, so ingest never altered it.
	var ident string
	if err := s.conn.QueryRow(context.Background(), "SELECT relreplident::text FROM pg_class WHERE oid = 'private.secrets'::regclass").Scan(&ident); err != nil {
		t.Fatal(err)
	}
	if ident != "d" {
		t.Errorf("private.secrets has REPLICA IDENTITY %q, want d (untouched)", ident)
	}
	if out := s.ctl("shape", "ls"); strings.Contains(out, "secrets") || strings.Contains(out, "pg_") {
		t.Errorf("shapes were registered for refused tables:\n%s", out)
	}
	if r := apiFirst(t, base, shapeQuery("table", "items", "offset", "-1"), time.Minute); r.code != http.StatusOK || !strings.Contains(r.body, `"id":"1"`) {
		t.Fatalf("a published table: %s", r)
	}

	// api.tables narrows the publication.
	narrow := s.startShapeAPI("FANOUT_API_TABLES=public.other")
	invalid(t, "a published table not in api.tables", shapeGet(t, narrow, shapeQuery("table", "items", "offset", "-1")), "table", "api.tables")
	if r := apiFirst(t, narrow, shapeQuery("table", "other", "offset", "-1"), time.Minute); r.code != http.StatusOK {
		t.Fatalf("a table in api.tables: %s", r)
	}
}

// Medium and low findings about definitions: no bound on a clause's cost
// or a definition's size, schemas on operators (a client's function ran),
// no fixed search_path (another role's function ran), and definitions
// Postgres refuses that failed for ever instead of a 400.
func TestShapeAPIRefusesCostlyAndInvalidDefinitions(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.exec(`CREATE TABLE notes (id int PRIMARY KEY, title varchar(20))`)
	s.exec(`INSERT INTO items SELECT g, g % 3, CASE WHEN g = 2 THEN 'secret-value' ELSE g::text END, 'b' FROM generate_series(1, 10) g`)
	s.exec(`INSERT INTO notes SELECT g, CASE WHEN g % 2 = 0 THEN 'ABC' ELSE 'x' END FROM generate_series(1, 10) g`)
	// Another role's function with the exact argument type: on the default
	// search_path, lower(varchar) would run it instead of pg_catalog's.
	s.exec(`CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS $$ SELECT 'planted' $$`)
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	base := s.startShapeAPI()

	deep := strings.Repeat("concat(", 1000) + "title" + strings.Repeat(")", 1000) + " = 'x'"
	invalid(t, "concat nested 1,000 deep", shapeGet(t, base, shapeQuery("table", "items", "offset", "-1", "where", deep)), "where", "api.max_where_depth")
	ors := make([]string, 300)
	for i := range ors {
		ors[i] = fmt.Sprintf("(owner = %d AND title = 'x')", i)
	}
	invalid(t, "300 ORed conjunctions", shapeGet(t, base, shapeQuery("table", "items", "offset", "-1", "where", strings.Join(ors, " OR "))), "where", "api.max_where_nodes")
	big := strings.Repeat("x", 900<<10)
	invalid(t, "a 900 KB parameter", shapeGet(t, base, shapeQuery("table", "items", "offset", "-1", "where", "title = $1", "params[1]", big)), "params", "api.max_definition_bytes")
	invalid(t, "an operator of another schema", shapeGet(t, base, shapeQuery("table", "items", "offset", "-1", "where", "id OPERATOR(public.=) 1")), "where", "only pg_catalog")
	invalid(t, "a NUL byte in a param", shapeGet(t, base, shapeQuery("table", "items", "offset", "-1", "where", "title = $1", "params[1]", "a\x00b")), "params", "NUL")
	for _, where := range []string{"title::int4 > 0", "1 / (owner - owner) > 0"} {
		r := apiFirst(t, base, shapeQuery("table", "items", "offset", "-1", "where", where), time.Minute)
		invalid(t, where, r, "where", "SQLSTATE 22")
		if strings.Contains(r.body, "secret-value") {
			t.Errorf("%s: the 400 quotes a row's value: %s", where, r.body)
		}
	}
	if out := s.ctl("shape", "ls"); strings.Contains(out, "int4") || strings.Contains(out, "owner - owner") {
		t.Errorf("shapes Postgres refused are still registered:\n%s", out)
	}

	// The snapshot runs pg_catalog's lower: the rows equal the query with it.
	if r := apiFirst(t, base, shapeQuery("table", "notes", "offset", "-1", "where", "lower(title) = 'abc'"), time.Minute); r.code != http.StatusOK ||
		strings.Count(r.body, `"key"`) != 5 {
		t.Errorf("lower(title) = 'abc' with a planted public.lower: %s, want the 5 rows titled ABC", r)
	}

	// Numbers a client echoes, and subset fields.
	h, off := syncPast503(t, base, shapeQuery("table", "items", "where", "owner = 1"))
	q := shapeQuery("table", "items", "where", "owner = 1", "handle", h, "offset", "0_18446744073709551615")
	invalid(t, "an offset op past int64", shapeGet(t, base, q), "offset", "out of range")
	q = shapeQuery("table", "items", "where", "owner = 1", "handle", h, "offset", off, "live", "true", "cursor", "9223372036854775807")
	invalid(t, "a cursor that would wrap", shapeGet(t, base, q), "cursor", "out of range")
	q = shapeQuery("table", "items", "where", "owner = 1", "handle", h, "offset", off, "subset__limit", "0", "subset__order_by", "id")
	if r := shapeGet(t, base, q); r.code != http.StatusBadRequest || !strings.Contains(r.body, "limit") {
		t.Errorf("subset limit 0: %s, want a 400 on limit", r)
	}
	h, off = syncPast503(t, base, shapeQuery("table", "items", "where", "id > 0"))
	q = shapeQuery("table", "items", "where", "id > 0", "handle", h, "offset", off, "subset__where", "title::int > 0")
	if r := shapeGet(t, base, q); r.code != http.StatusBadRequest || strings.Contains(r.body, "secret-value") {
		t.Errorf("a subset where Postgres refuses on a row: %s, want a 400 that does not quote the row", r)
	}
}

// shapeCount is how many shapes the shapes bucket holds (fanoutctl shape ls).
func (s *stack) shapeCount() int {
	s.t.Helper()
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(s.ctl("shape", "ls")), "\n") {
		if !strings.HasPrefix(line, "HANDLE") && strings.TrimSpace(line) != "" {
			n++
		}
	}
	return n
}

// watchersOf is how many JetStream consumers read a KV bucket's stream:
// each watch is one.
func (s *stack) watchersOf(t *testing.T, bucket string) int {
	t.Helper()
	_, js := s.busClient()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Consumers
}

// refusedForLoad reports whether r is Electric's overload answer: 503
// concurrent_request_limit_exceeded with retry-after.
func refusedForLoad(r apiResp) bool {
	var body struct {
		Code string `json:"code"`
	}
	return r.code == http.StatusServiceUnavailable && r.h.Get("retry-after") != "" &&
		json.Unmarshal([]byte(r.body), &body) == nil && body.Code == "concurrent_request_limit_exceeded"
}

// High and medium findings: one client created 2,376 shapes in 45 s (no
// bound, shapes live for ever), 300 waiting new-shape requests made 298
// JetStream watchers, and nothing bounded concurrent requests.
func TestShapeAPIAdmitsNewShapesWithinItsBounds(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.exec(`INSERT INTO items SELECT g, g % 50, 't', 'b' FROM generate_series(1, 200) g`)
	s.startFlushd()
	s.startIngest() // no consumer yet: no snapshot completes
	s.waitSlot()
	base := s.startShapeAPI("FANOUT_API_MAX_NEW_SHAPE_REQUESTS=8", "FANOUT_API_MAX_PENDING_SNAPSHOTS=4", "FANOUT_API_READY_TIMEOUT=3s")
	statesBefore := s.watchersOf(t, "fanout_shape_state")

	// 40 clients ask for 40 new definitions at once.
	burst := func(n int, where func(i int) string) (refused, other []apiResp, peakWatchers int) {
		results := make(chan apiResp, n)
		for i := range n {
			go func() { results <- shapeGet(t, base, shapeQuery("table", "items", "offset", "-1", "where", where(i))) }()
		}
		done := 0
		for done < n {
			select {
			case r := <-results:
				done++
				if refusedForLoad(r) {
					refused = append(refused, r)
				} else {
					other = append(other, r)
				}
			case <-time.After(200 * time.Millisecond):
				peakWatchers = max(peakWatchers, s.watchersOf(t, "fanout_shape_state"))
			}
		}
		return refused, other, peakWatchers
	}
	refused, other, peak := burst(40, func(i int) string { return fmt.Sprintf("owner = %d", i) })
	if len(refused) < 40-8 {
		t.Errorf("%d of 40 new definitions refused with 503 concurrent_request_limit_exceeded, want at least 32 (api.max_new_shape_requests=8); others: %v", len(refused), other)
	}
	for _, r := range other {
		if r.code != http.StatusServiceUnavailable {
			t.Errorf("a new shape without a consumer to snapshot it: %s, want 503", r)
		}
	}
	if n := s.shapeCount(); n > 4 {
		t.Errorf("%d shapes registered with api.max_pending_snapshots=4", n)
	}
	if peak > statesBefore+1 {
		t.Errorf("%d JetStream watchers on the snapshot states during the burst (%d before): waiting requests must share one", peak, statesBefore)
	}

	// 30 clients wait for the same pending shape: at most 8 wait, on one watch.
	refused, other, peak = burst(30, func(int) string { return "owner = 0" })
	if len(refused) < 30-8 || peak > statesBefore+1 {
		t.Errorf("30 requests for one pending shape: %d refused (want at least 22), %d watchers (%d before)", len(refused), peak, statesBefore)
	}

	// Once snapshots run, a client that waits as told is served.
	s.startConsumer("c1")
	if r := apiFirst(t, base, shapeQuery("table", "items", "offset", "-1", "where", "owner = 0"), 2*time.Minute); r.code != http.StatusOK {
		t.Fatalf("after the snapshots ran: %s", r)
	}
}

// The lifecycle: at most api.max_shapes API shapes (the least recently
// read expires for a new one), idle ones expire, held ones never, and
// fanoutctl's shapes are never touched.
func TestShapeAPIBoundsShapesAndExpiresIdleOnes(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.exec(`INSERT INTO items SELECT g, g % 10, 't', 'b' FROM generate_series(1, 100) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	operators := s.addShape("public.items", "owner = 9")
	base := s.startShapeAPI("FANOUT_API_MAX_SHAPES=3", "FANOUT_API_SHAPE_IDLE_TIMEOUT=3s", "FANOUT_API_LONG_POLL_TIMEOUT=2s")
	def := func(owner int) url.Values {
		return shapeQuery("table", "items", "where", fmt.Sprintf("owner = %d", owner))
	}
	hA, offA := syncPast503(t, base, def(1))
	hB, offB := syncPast503(t, base, def(2))

	// B is held by a live client the whole time.
	ctx, stop := context.WithCancel(context.Background())
	held := make(chan string, 1)
	go func() {
		off := offB
		for ctx.Err() == nil {
			q := def(2)
			q.Set("handle", hB)
			q.Set("offset", off)
			q.Set("live", "true")
			r := shapeGet(t, base, q)
			if r.code != http.StatusOK {
				held <- r.String()
				return
			}
			off = r.h.Get("electric-offset")
		}
		held <- ""
	}()
	t.Cleanup(stop)

	syncPast503(t, base, def(3))
	syncPast503(t, base, def(4)) // the fourth: A, read least recently, expires
	q := def(1)
	q.Set("handle", hA)
	q.Set("offset", offA)
	if r := shapeGet(t, base, q); r.code != http.StatusConflict {
		t.Errorf("the least recently read shape after a fourth with api.max_shapes=3: %s, want 409", r)
	}
	// 3 and 4 are not read again: they expire; B, held, does not.
	testenv.Eventually(t, time.Minute, "idle API shapes to expire", func() bool { return s.shapeCount() <= 2 })
	stop()
	if msg := <-held; msg != "" {
		t.Errorf("the held shape was answered %s", msg)
	}
	q = def(2)
	q.Set("handle", hB)
	q.Set("offset", offB)
	if r := shapeGet(t, base, q); r.code != http.StatusOK {
		t.Errorf("the held shape after the idle ones expired: %s", r)
	}
	if out := s.ctl("shape", "ls"); !strings.Contains(out, operators.handle) {
		t.Errorf("fanoutctl's shape %s was removed:\n%s", operators.handle, out)
	}
}

// closedByServer reports whether the server closed c within d (a read
// returns EOF or a reset, not a timeout).
func closedByServer(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 64<<10)
	for {
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}

// High findings: no idle, read or write deadlines (300 idle keep-alive
// connections exhausted descriptors, no secret needed), and four subset
// requests that never read their answer held all four subset connections
// (everyone else got 503) with their backends in ClientWrite, past the
// statement timeout, their snapshots holding back VACUUM.
func TestShapeAPIDeadlinesFreeWhatSlowClientsHold(t *testing.T) {
	s := newStack(t)
	s.exec(`CREATE TABLE blobs (id int PRIMARY KEY, body text)`)
	s.exec(`INSERT INTO blobs SELECT g, repeat(md5(g::text), 64) FROM generate_series(1, 30000) g`) // 60 MB of JSON
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	base := s.startShapeAPI("FANOUT_API_IDLE_TIMEOUT=2s", "FANOUT_API_READ_TIMEOUT=2s", "FANOUT_API_WRITE_TIMEOUT=2s",
		"FANOUT_API_SUBSET_CONNECTIONS=2", "FANOUT_API_SUBSET_TIMEOUT=5m", "FANOUT_HTTP_ADDR="+metrics)
	u, _ := url.Parse(base)

	// Subset requests whose clients never read the 60 MB answer.
	h, off := syncPast503(t, base, shapeQuery("table", "blobs", "log", "changes_only"))
	stuck := shapeQuery("table", "blobs", "log", "changes_only", "handle", h, "offset", off, "subset__order_by", "id", "subset__limit", "30000")
	for range 4 {
		c, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.(*net.TCPConn).SetReadBuffer(16 << 10)
		fmt.Fprintf(c, "GET %s?%s HTTP/1.1\r\nHost: x\r\n\r\n", u.Path, stuck.Encode())
	}
	busy := func() int {
		var n int
		s.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'fanout-shapeapi-subset' AND (state = 'active' OR backend_xmin IS NOT NULL)`).Scan(&n)
		return n
	}
	testenv.Eventually(t, 30*time.Second, "the stuck subset reads to start", func() bool { return busy() > 0 })
	testenv.Eventually(t, 30*time.Second, "the stuck subset reads to end (api.write_timeout=2s)", func() bool { return busy() == 0 })
	ok := shapeQuery("table", "blobs", "log", "changes_only", "handle", h, "offset", off, "subset__order_by", "id", "subset__limit", "3")
	if r := apiFirst(t, base, ok, 30*time.Second); r.code != http.StatusOK || strings.Count(r.body, `"key"`) != 3 {
		t.Fatalf("a subset request after the stuck ones: %s", r)
	}

	// An SSE client that stops reading while 20 MB of changes stream to it.
	sse, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Close()
	sse.(*net.TCPConn).SetReadBuffer(16 << 10) // no window for the 20 MB: the server's writes block
	live := shapeQuery("table", "blobs", "log", "changes_only", "handle", h, "offset", off, "live", "true", "live_sse", "true")
	fmt.Fprintf(sse, "GET %s?%s HTTP/1.1\r\nHost: x\r\n\r\n", u.Path, live.Encode())
	held := func() string {
		_, body := get("http://" + metrics + "/metrics")
		for _, line := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(line, "fanout_shapeapi_held_requests "); ok {
				return v
			}
		}
		return "?"
	}
	testenv.Eventually(t, 30*time.Second, "the SSE request to be held", func() bool { return held() == "1" })
	s.exec(`UPDATE blobs SET body = body || 'x' WHERE id <= 10000`)
	testenv.Eventually(t, 2*time.Minute, "the SSE request nobody reads to end (api.write_timeout=2s)", func() bool { return held() == "0" })

	// Idle keep-alive connections, and one that never finishes its request.
	var idle []net.Conn
	for range 50 {
		c, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
		idle = append(idle, c)
	}
	slow, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "GET /v1/health HTTP/1.1\r\nHost: x\r\n") // and nothing more
	for i, c := range idle {
		if !closedByServer(c, 10*time.Second) {
			t.Fatalf("keep-alive connection %d still open 10s after its answer with api.idle_timeout=2s", i)
		}
	}
	if !closedByServer(slow, 10*time.Second) {
		t.Fatal("a connection that never finished its request is still open after 10s with api.read_timeout=2s")
	}
}

// High finding: behind costly clauses a 200-row transaction took 10.7 s to
// route; with wal_sender_timeout=10s Postgres kept dropping the replication
// connection (the keepalive replies waited behind routing, the status
// every postgres.status_interval=10s came too late) and ingest replayed the
// same transaction in a loop. The budget now refuses such clauses in the
// API, but an operator's may still be slow: ingest must stay connected.
func TestIngestStaysConnectedBehindSlowRouting(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.exec(`ALTER SYSTEM SET wal_sender_timeout = '2s'`)
	s.exec(`SELECT pg_reload_conf()`)
	s.startFlushd()
	s.startConsumer("c1")
	ingest := s.start("ingest", "ingest", "FANOUT_POSTGRES_STATUS_INTERVAL=10s")
	s.waitSlot()
	// An operator's shapes with costly clauses (fanoutctl has no budget).
	deep := strings.Repeat("concat(", 1000) + "title" + strings.Repeat(")", 1000) + " = 'x'"
	var defs []shapeDef
	for range 30 {
		defs = append(defs, s.addShape("public.items", deep))
	}
	s.waitReady(defs[len(defs)-1].handle, 2*time.Minute)
	start := time.Now()
	s.exec(`INSERT INTO items SELECT g, g, 'x', 'b' FROM generate_series(1, 200) g`)
	s.waitConfirmed(s.currentWAL(), 3*time.Minute)
	t.Logf("a 200-row transaction through 30 costly shapes confirmed in %s", time.Since(start).Round(time.Millisecond))
	out := ingest.Output()
	if strings.Contains(out, "replication session failed") {
		t.Errorf("ingest lost its replication connection behind slow routing:\n%s", tail(out, 3000))
	}
	if !strings.Contains(out, "wal_sender_timeout") {
		t.Errorf("ingest did not say that postgres.status_interval (10s) is not well under wal_sender_timeout (2s)")
	}
}

// Medium finding: the REPLICA IDENTITY FULL change ran on the path of a
// new shape and held an exclusive lock request up to 10 s: the
// application's queries on the table stalled 8.5 s per new definition,
// again on each failure.
func TestReplicaIdentityChangeStaysOffTheApplicationsPath(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.exec(`INSERT INTO items SELECT g, g % 5, 't', 'b' FROM generate_series(1, 100) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	base := s.startShapeAPI()

	// A long transaction holds a lock on items: ALTER TABLE must wait for it.
	ctx := context.Background()
	holder := s.pg.Connect(t)
	if _, err := holder.Exec(ctx, "BEGIN; SELECT count(*) FROM items"); err != nil {
		t.Fatal(err)
	}
	app := s.pg.Connect(t)
	stop := make(chan struct{})
	worst := make(chan time.Duration, 1)
	go func() {
		var w time.Duration
		for {
			select {
			case <-stop:
				worst <- w
				return
			default:
			}
			start := time.Now()
			var n int
			if err := app.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil {
				t.Error(err)
			}
			w = max(w, time.Since(start))
			time.Sleep(20 * time.Millisecond)
		}
	}()
	r := apiFirst(t, base, shapeQuery("table", "items", "offset", "-1", "where", "owner = 1"), time.Minute)
	// The application's queries are measured a while longer: ingest keeps
	// trying while the lock is held (1 s, then 2 s apart).
	window := time.NewTimer(5 * time.Second)
	<-window.C
	close(stop)
	w := <-worst
	if r.code != http.StatusOK {
		t.Errorf("the new shape while a transaction holds its table: %s", r)
	}
	if w > 2*time.Second { // each attempt waits 200ms for the lock; the old code's stalled 10 s
		t.Errorf("the application's queries on items stalled up to %s while ingest set the replica identity", w)
	}
	t.Logf("worst application query while the identity waited: %s", w.Round(time.Millisecond))
	if out := s.procs["ingest"].Output(); !strings.Contains(out, "waits for a lock on the table") {
		t.Errorf("ingest did not say it waits for the lock on items")
	}
	holder.Exec(ctx, "COMMIT")
	testenv.Eventually(t, time.Minute, "REPLICA IDENTITY FULL once the table is free", func() bool {
		var ident string
		s.conn.QueryRow(ctx, "SELECT relreplident::text FROM pg_class WHERE oid = 'items'::regclass").Scan(&ident)
		return ident == "f"
	})
}

// The least-privilege role of deploy/PRODUCTION.md is enough for the
// snapshots and the shape API, and a published table it may not read is a
// 400, not a shape that fails.
func TestShapeAPIWorksWithTheLeastPrivilegeRole(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.exec(`CREATE TABLE other (id int PRIMARY KEY, v text)`)
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, 'b' FROM generate_series(1, 30) g`)
	s.exec(`CREATE ROLE fanout_reader LOGIN PASSWORD 'r' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
		GRANT CONNECT ON DATABASE postgres TO fanout_reader;
		GRANT USAGE ON SCHEMA public TO fanout_reader;
		GRANT SELECT ON public.items TO fanout_reader;
		ALTER ROLE fanout_reader SET default_transaction_read_only = on;
		ALTER ROLE fanout_reader SET idle_in_transaction_session_timeout = '10min'`)
	reader := strings.Replace(s.pg.URL, "postgres://postgres@", "postgres://fanout_reader:r@", 1)
	s.startFlushd()
	s.start("c1", "consumer", "FANOUT_CONSUMER_ID=c1", "FANOUT_POSTGRES_URL="+reader)
	s.startIngest() // ingest keeps its own role
	s.waitSlot()
	base := s.startShapeAPI("FANOUT_POSTGRES_URL=" + reader)
	h, off := syncPast503(t, base, shapeQuery("table", "items", "where", "owner = 1"))
	s.exec(`INSERT INTO items VALUES (100, 1, 'new', 'b')`)
	q := shapeQuery("table", "items", "where", "owner = 1", "handle", h, "offset", off, "live", "true")
	if r := shapeGet(t, base, q); r.code != http.StatusOK || !strings.Contains(r.body, `"id":"100"`) {
		t.Fatalf("a live read with the reader role: %s", r)
	}
	q = shapeQuery("table", "items", "where", "owner = 1", "handle", h, "offset", off, "subset__order_by", "id", "subset__limit", "2")
	if r := shapeGet(t, base, q); r.code != http.StatusOK || strings.Count(r.body, `"key"`) != 2 {
		t.Fatalf("a subset with the reader role: %s", r)
	}
	invalid(t, "a published table the role may not read", shapeGet(t, base, shapeQuery("table", "other", "offset", "-1")), "table", "may not read")
}
