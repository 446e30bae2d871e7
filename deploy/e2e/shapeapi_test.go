package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/fanout/testenv"
)

// The Electric clients from npm (deploy/e2e/electric, installed by `make
// test` with npm ci from its lockfile) sync shapes through bin/shapeapi;
// every comparison is against SELECT in Postgres, values parsed as the
// client parses them.

// electricDir is the node project with the pinned clients.
func electricDir(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "electric")
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("node is not installed; the shape API tests run the Electric clients from npm (apt-get install nodejs npm)")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@electric-sql", "client")); err != nil {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	return dir
}

var (
	shapeapiOnce sync.Once
	shapeapiBin  string
	shapeapiErr  error
)

// shapeapiBinary builds ./consumers/cmd/shapeapi once per test process.
func shapeapiBinary(t *testing.T) string {
	t.Helper()
	shapeapiOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		dir, err := os.MkdirTemp("", "fanout-shapeapi-")
		if err != nil {
			shapeapiErr = err
			return
		}
		shapeapiBin = filepath.Join(dir, "shapeapi")
		cmd := exec.Command("go", "build", "-o", shapeapiBin, "./consumers/cmd/shapeapi")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			shapeapiErr = fmt.Errorf("go build ./consumers/cmd/shapeapi: %v\n%s", err, out)
		}
	})
	if shapeapiErr != nil {
		t.Fatal(shapeapiErr)
	}
	return shapeapiBin
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startShapeAPI runs bin/shapeapi on the stack and returns its /v1/shape URL.
func (s *stack) startShapeAPI(env ...string) string {
	s.t.Helper()
	port := freePort(s.t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	cmd := exec.Command(shapeapiBinary(s.t))
	cmd.Env = append(append(append(os.Environ(), s.env...),
		"FANOUT_API_ADDR=127.0.0.1:"+strconv.Itoa(port),
		"FANOUT_API_LONG_POLL_TIMEOUT=5s",
		"FANOUT_API_CHUNK_BYTES=10000", // Electric's tests' size: responses get cut
		"FANOUT_API_ALLOW_DELETE=true",
		"FANOUT_API_MAX_AGE=1s", "FANOUT_API_STALE_AGE=3s",
	), env...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if s.t.Failed() || os.Getenv("FANOUT_TEST_LOGS") != "" {
			s.t.Logf("---- shapeapi output ----\n%s", out.String())
		}
	})
	testenv.Eventually(s.t, 60*time.Second, "shapeapi /v1/health to be active", func() bool {
		resp, err := http.Get(base + "/v1/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return base + "/v1/shape"
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// client is one node process running an Electric client (sync.mjs).
type client struct {
	name string
	mu   sync.Mutex
	rows []map[string]any
	hand string
	off  string
	errs []map[string]any
	msgs []map[string]any // mode messages: every message received
	evs  []map[string]any // mode subset: the requested and fetched events
	seen int              // rows events
	done chan struct{}
	out  *lockedBuffer
}

type clientArgs struct {
	Client string            `json:"client"`
	URL    string            `json:"url"`
	Params map[string]any    `json:"params"`
	SSE    bool              `json:"sse,omitempty"`
	Mode   string            `json:"mode,omitempty"`
	Offset string            `json:"offset,omitempty"`
	Handle string            `json:"handle,omitempty"`
	Once   bool              `json:"once,omitempty"`
	Log    string            `json:"log,omitempty"`
	Subset map[string]any    `json:"subset,omitempty"`
	Fetch  map[string]any    `json:"fetch,omitempty"`
	Record bool              `json:"record,omitempty"` // mode rows: keep the messages too
	Extra  map[string]string `json:"-"`
}

func (s *stack) startClient(name string, a clientArgs) *client {
	s.t.Helper()
	dir := electricDir(s.t)
	arg, _ := json.Marshal(a)
	cmd := exec.Command("node", "sync.mjs", string(arg))
	cmd.Dir = dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	c := &client{name: name, done: make(chan struct{}), out: &lockedBuffer{}}
	cmd.Stderr = c.out
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			var ev struct {
				Event    string           `json:"event"`
				Handle   string           `json:"handle"`
				Offset   string           `json:"offset"`
				Rows     []map[string]any `json:"rows"`
				Messages []map[string]any `json:"messages"`
			}
			line := sc.Bytes()
			if err := json.Unmarshal(line, &ev); err != nil {
				c.out.Write([]byte("stdout: " + string(line) + "\n"))
				continue
			}
			c.mu.Lock()
			switch ev.Event {
			case "rows":
				c.rows, c.hand, c.off = ev.Rows, ev.Handle, ev.Offset
				c.seen++
			case "messages":
				c.msgs = append(c.msgs, ev.Messages...)
				c.hand, c.off = ev.Handle, ev.Offset
			case "error":
				var e map[string]any
				json.Unmarshal(line, &e)
				c.errs = append(c.errs, e)
			case "requested", "fetched":
				var e map[string]any
				json.Unmarshal(line, &e)
				c.evs = append(c.evs, e)
			}
			c.mu.Unlock()
		}
		cmd.Wait()
	}()
	s.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-c.done
		}
		if s.t.Failed() {
			s.t.Logf("---- client %s stderr ----\n%s", name, c.out.String())
		}
	})
	return c
}

func (c *client) state() (rows []map[string]any, handle string, errs []map[string]any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rows, c.hand, c.errs
}

// colTypes are the Postgres types of the test table's columns.
var colTypes = map[string]string{"id": "int4", "owner": "int4", "title": "text", "big": "int8",
	"flag": "bool", "meta": "jsonb", "score": "float8", "tags": "text[]"}

const electricItems = `CREATE TABLE items (
	id int4 PRIMARY KEY, owner int4, title text NOT NULL DEFAULT '', big int8,
	flag bool, meta jsonb, score float8, tags text[])`

// clientValue is a Postgres text value as the Electric client parses it
// (by the electric-schema header), in the JSON sync.mjs prints.
func clientValue(typ string, v *string) any {
	if v == nil {
		return nil
	}
	switch typ {
	case "int2", "int4", "float4", "float8":
		f, _ := strconv.ParseFloat(*v, 64)
		return f
	case "int8":
		return map[string]any{"bigint": *v}
	case "bool":
		return *v == "t" || *v == "true"
	case "json", "jsonb":
		var x any
		json.Unmarshal([]byte(*v), &x)
		return x
	case "text[]":
		inner := strings.TrimSuffix(strings.TrimPrefix(*v, "{"), "}")
		out := []any{}
		if inner != "" {
			for _, p := range strings.Split(inner, ",") {
				out = append(out, p)
			}
		}
		return out
	}
	return *v
}

// expectedClientRows is SELECT columns FROM table WHERE where, parsed as the client parses it.
func (s *stack) expectedClientRows(table, where string, columns []string) []map[string]any {
	s.t.Helper()
	rows := s.expectedRows(table, where, columns)
	out := make([]map[string]any, 0, len(rows))
	for _, r := range rows {
		m := map[string]any{}
		for k, v := range r {
			m[k] = clientValue(colTypes[k], v)
		}
		out = append(out, normalize(m))
	}
	return out
}

// normalize makes a value compare with reflect.DeepEqual to its JSON round trip.
func normalize(m map[string]any) map[string]any {
	b, _ := json.Marshal(m)
	var out map[string]any
	json.Unmarshal(b, &out)
	return out
}

func sortByID(rows []map[string]any) []map[string]any {
	out := append([]map[string]any(nil), rows...)
	sort.Slice(out, func(i, j int) bool {
		a, _ := out[i]["id"].(float64)
		b, _ := out[j]["id"].(float64)
		return a < b
	})
	return out
}

// waitEqual waits until client c's rows equal the query's.
func (s *stack) waitEqual(c *client, table, where string, columns []string) {
	s.t.Helper()
	want := s.expectedClientRows(table, where, columns)
	var got []map[string]any
	deadline := time.Now().Add(60 * time.Second)
	for {
		rows, _, errs := c.state()
		if len(errs) > 0 {
			s.t.Fatalf("client %s stopped with an error: %v", c.name, errs)
		}
		got = sortByID(rows)
		if reflect.DeepEqual(got, want) || (len(got) == 0 && len(want) == 0 && rows != nil) {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("client %s (%s WHERE %s) differs from SELECT:\n--- client (%d rows)\n%s\n--- SELECT (%d rows)\n%s",
		c.name, table, where, len(got), firstRows(got), len(want), firstRows(want))
}

func firstRows(rows []map[string]any) string {
	var b strings.Builder
	for i, r := range rows {
		if i == 20 {
			fmt.Fprintf(&b, "... %d more\n", len(rows)-20)
			break
		}
		j, _ := json.Marshal(r)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

func TestElectricClientsSyncShapes(t *testing.T) {
	s := newStack(t)
	s.exec(electricItems)
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, g * 1000000000000, g % 2 = 0,
		jsonb_build_object('g', g), g / 4.0, ARRAY['a' || g, 'b'] FROM generate_series(1, 60) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	url := s.startShapeAPI()

	owner1 := map[string]any{"table": "items", "where": "owner = 1"}
	longPoll := s.startClient("1.5-longpoll", clientArgs{Client: "1.5", URL: url, Params: owner1, Record: true})
	sse := s.startClient("1.5-sse", clientArgs{Client: "1.5", URL: url, Params: owner1, SSE: true})
	all := s.startClient("1.5-sse-all", clientArgs{Client: "1.5", URL: url, Params: map[string]any{"table": "public.items"}, SSE: true})
	cols := s.startClient("1.5-columns-full", clientArgs{Client: "1.5", URL: url, Params: map[string]any{
		"table": "items", "where": "owner = 2", "columns": []string{"id", "title", "owner"}, "replica": "full"}, Record: true})
	old := s.startClient("1.0-longpoll", clientArgs{Client: "1.0", URL: url, Params: owner1})

	check := func(what string) {
		t.Helper()
		start := time.Now()
		for _, c := range []*client{longPoll, sse, old} {
			s.waitEqual(c, "items", "owner = 1", nil)
		}
		s.waitEqual(all, "items", "", nil)
		s.waitEqual(cols, "items", "owner = 2", []string{"id", "title", "owner"})
		t.Logf("%s: every client equals SELECT (%s)", what, time.Since(start).Round(time.Millisecond))
	}
	check("initial sync")

	before := s.clientRowsByID("items")
	s.exec(`INSERT INTO items VALUES (100, 1, 'new', 5, true, '{"x": [1, 2]}', 1.5, '{x,y}'), (101, 2, 'other', NULL, NULL, NULL, NULL, NULL)`)
	s.exec(`UPDATE items SET title = 'changed', score = 2.25 WHERE id IN (1, 4, 100)`) // updates in place
	s.exec(`UPDATE items SET owner = 2 WHERE id IN (7, 10)`)                           // move out of owner = 1, into owner = 2
	s.exec(`UPDATE items SET owner = 1 WHERE id IN (2, 5)`)                            // move in
	s.exec(`DELETE FROM items WHERE id IN (13, 3)`)                                    // deletes
	s.exec(`UPDATE items SET id = 500 WHERE id = 16`)                                  // a primary-key change
	s.exec(`BEGIN; INSERT INTO items VALUES (600, 1, 'tx'); UPDATE items SET owner = 2 WHERE id = 600; UPDATE items SET owner = 1, title = 'back' WHERE id = 600; COMMIT`)
	// In owner = 2 (the replica=full client): in-place updates, one of a
	// column it does not select, a delete and a key change.
	s.exec(`UPDATE items SET title = 'changed2' WHERE id IN (8, 11)`)
	s.exec(`UPDATE items SET score = 9.5 WHERE id = 20`)
	s.exec(`DELETE FROM items WHERE id = 14`)
	s.exec(`UPDATE items SET id = 501 WHERE id = 17`)
	check("live changes")
	checkReplicaModes(t, longPoll, cols, before, s.clientRowsByID("items"))

	// A 2,000-row transaction, cut into several responses (chunk_bytes 10000).
	s.exec(`INSERT INTO items SELECT g, g % 3, 'bulk' || g, g, g % 2 = 1, '[]', g, '{}' FROM generate_series(1000, 2999) g`)
	check("a 2,000-row transaction")

	t.Run("resume from lastOffset and handle", func(t *testing.T) {
		first := s.startClient("1.5-resume-1", clientArgs{Client: "1.5", URL: url, Params: owner1, Mode: "messages", Once: true})
		<-first.done
		first.mu.Lock()
		offset, handle := first.off, first.hand
		first.mu.Unlock()
		if offset == "" || handle == "" {
			t.Fatalf("first run ended without an offset and handle: %s", first.out.String())
		}
		s.exec(`INSERT INTO items VALUES (700, 1, 'after'), (701, 0, 'elsewhere')`)
		s.exec(`UPDATE items SET title = 'after2' WHERE id = 700`)
		s.exec(`DELETE FROM items WHERE id = 100`)
		var got []string
		testenv.Eventually(t, 30*time.Second, "the resumed client to see the three changes", func() bool {
			c := s.startClient("1.5-resume-2", clientArgs{Client: "1.5", URL: url, Params: owner1, Mode: "messages", Once: true, Offset: offset, Handle: handle})
			<-c.done
			c.mu.Lock()
			defer c.mu.Unlock()
			got = nil
			for _, m := range c.msgs {
				h, _ := m["headers"].(map[string]any)
				if op, ok := h["operation"].(string); ok {
					got = append(got, op+" "+fmt.Sprint(m["key"]))
				}
			}
			if len(got) < 3 {
				t.Logf("resumed from %s %s: %d messages, changes %v, errors %v", offset, handle, len(c.msgs), got, c.errs)
			}
			return len(got) >= 3
		})
		want := []string{`insert "public"."items"/"700"`, `update "public"."items"/"700"`, `delete "public"."items"/"100"`}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("resumed from %s got %v, want exactly %v", offset, got, want)
		}
	})

	t.Run("bad where clause", func(t *testing.T) {
		c := s.startClient("1.5-bad-where", clientArgs{Client: "1.5", URL: url, Params: map[string]any{"table": "items", "where": "owner = = 1"}})
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
			t.Fatal("the client did not stop on a bad where clause")
		}
		_, _, errs := c.state()
		if len(errs) == 0 || errs[0]["status"] != float64(400) || !strings.Contains(fmt.Sprint(errs[0]), "where") {
			t.Fatalf("client errors %v, want a 400 naming the where clause", errs)
		}
		t.Logf("server's message: %v", errs[0]["json"])
	})

	t.Run("shape rm makes clients refetch", func(t *testing.T) {
		_, handle, _ := longPoll.state()
		s.ctl("shape", "rm", handle)
		s.exec(`INSERT INTO items VALUES (800, 1, 'after rm')`)
		s.exec(`UPDATE items SET owner = 1 WHERE id = 801 OR id = 1000`)
		for _, c := range []*client{longPoll, sse, old} {
			testenv.Eventually(t, 60*time.Second, c.name+" to refetch a new handle", func() bool {
				_, h, _ := c.state()
				return h != "" && h != handle
			})
		}
		check("after shape rm")
	})
}

// clientRowsByID is every row of table as the client parses it, by id.
func (s *stack) clientRowsByID(table string) map[int]map[string]any {
	s.t.Helper()
	out := map[int]map[string]any{}
	for _, r := range s.expectedClientRows(table, "", nil) {
		id, _ := r["id"].(float64)
		out[int(id)] = r
	}
	return out
}

// only is row's columns cols (row as the client parses it, normalized).
func only(row map[string]any, cols ...string) map[string]any {
	out := map[string]any{}
	for _, c := range cols {
		out[c] = row[c]
	}
	return normalize(out)
}

func itemKey(id int) string { return fmt.Sprintf(`"public"."items"/"%d"`, id) }

// change is client c's one message of operation op on the row keyed id,
// waited for; the test fails when there is none or more than one.
func (c *client) change(t *testing.T, op string, id int) map[string]any {
	t.Helper()
	var found []map[string]any
	find := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		found = found[:0]
		for _, m := range c.msgs {
			if h, _ := m["headers"].(map[string]any); h["operation"] == op && m["key"] == itemKey(id) {
				found = append(found, m)
			}
		}
		return len(found) > 0
	}
	testenv.Eventually(t, 30*time.Second, fmt.Sprintf("client %s to get the %s of row %d", c.name, op, id), find)
	if len(found) != 1 {
		t.Fatalf("client %s got %d %s messages of row %d, want one: %v", c.name, len(found), op, id, found)
	}
	return found[0]
}

// checkReplicaModes checks the messages the real clients got for the live
// changes against Postgres's rows before and after them: with
// replica=default, an update's value is the key and the changed columns
// and a delete's the key; with replica=full (cols selects id, title,
// owner), an update carries the whole row and old_value with the old values
// of exactly the changed columns, a delete the whole old row.
func checkReplicaModes(t *testing.T, def, full *client, before, after map[int]map[string]any) {
	t.Helper()
	expect := func(c *client, m map[string]any, field string, want map[string]any) {
		t.Helper()
		got, ok := m[field].(map[string]any)
		if !ok {
			t.Errorf("client %s: %s has no %s, want %v (message %v)", c.name, m["key"], field, want, m)
		} else if !reflect.DeepEqual(normalize(got), want) {
			t.Errorf("client %s: %s %s is %v, want %v (message %v)", c.name, m["key"], field, got, want, m)
		}
	}
	header := func(c *client, m map[string]any, name, want string) {
		t.Helper()
		if h, _ := m["headers"].(map[string]any); h[name] != want {
			t.Errorf("client %s: %s header %s is %v, want %s", c.name, m["key"], name, h[name], want)
		}
	}
	// replica=default, owner = 1, every column.
	for _, id := range []int{1, 4, 100} { // SET title, score
		m := def.change(t, "update", id)
		expect(def, m, "value", only(after[id], "id", "title", "score"))
		if _, ok := m["old_value"]; ok {
			t.Errorf("client %s: a default-replica update has old_value: %v", def.name, m)
		}
	}
	for _, id := range []int{13, 7} { // a delete, a move out
		expect(def, def.change(t, "delete", id), "value", only(before[id], "id"))
	}
	m := def.change(t, "delete", 16) // key change 16 -> 500
	expect(def, m, "value", only(before[16], "id"))
	header(def, m, "key_change_to", itemKey(500))
	m = def.change(t, "insert", 500)
	expect(def, m, "value", normalize(after[500]))
	header(def, m, "key_change_from", itemKey(16))

	// replica=full, owner = 2, columns id, title, owner.
	cols := []string{"id", "title", "owner"}
	for _, id := range []int{8, 11} { // SET title
		m := full.change(t, "update", id)
		expect(full, m, "value", only(after[id], cols...))
		expect(full, m, "old_value", only(before[id], "title"))
	}
	m = full.change(t, "update", 20) // SET score, a column the shape does not select
	expect(full, m, "value", only(after[20], cols...))
	expect(full, m, "old_value", map[string]any{})
	for _, id := range []int{14, 2, 5} { // a delete, two moves out
		expect(full, full.change(t, "delete", id), "value", only(before[id], cols...))
	}
	m = full.change(t, "delete", 17) // key change 17 -> 501
	expect(full, m, "value", only(before[17], cols...))
	header(full, m, "key_change_to", itemKey(501))
	m = full.change(t, "insert", 501)
	expect(full, m, "value", only(after[501], cols...))
	header(full, m, "key_change_from", itemKey(17))
}

// event waits for client c's first event named name (mode subset).
func (c *client) event(t *testing.T, name string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		evs, errs := c.evs, c.errs
		c.mu.Unlock()
		if len(errs) > 0 {
			t.Fatalf("client %s stopped with an error: %v", c.name, errs)
		}
		for _, e := range evs {
			if e["event"] == name {
				return e
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("client %s: no %s event in 60 s\n%s", c.name, name, c.out.String())
	return nil
}

// clientError waits for client c to stop with an error and returns it.
func (c *client) clientError(t *testing.T) map[string]any {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("client %s did not stop with an error", c.name)
	}
	_, _, errs := c.state()
	if len(errs) == 0 {
		t.Fatalf("client %s stopped without an error\n%s", c.name, c.out.String())
	}
	return errs[0]
}

// ids lists the id of every row (as the client parses an int4: a float64).
func ids(rows []map[string]any) []float64 {
	out := make([]float64, len(rows))
	for i, r := range rows {
		out[i], _ = r["id"].(float64)
	}
	return out
}

// TestShapeAPISubsetSnapshots: the 1.5 client in log: 'changes_only' mode
// asks for subsets of a shape (requestSnapshot by GET, fetchSnapshot by
// POST) and holds exactly the rows of the corresponding SELECT, then keeps
// them current from the stream; bad where clauses and order_by get
// Electric's 400s.
func TestShapeAPISubsetSnapshots(t *testing.T) {
	s := newStack(t)
	s.exec(electricItems)
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, g * 1000000000000, g % 2 = 0,
		jsonb_build_object('g', g), g / 4.0, ARRAY['a' || g, 'b'] FROM generate_series(1, 60) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	url := s.startShapeAPI()

	// The shape is owner <> $1 (0); the subset adds its own where, with its
	// own $1, bound after the shape's.
	shape := map[string]any{"table": "items", "where": "owner <> $1", "params": map[string]string{"1": "0"}}
	c := s.startClient("1.5-subset", clientArgs{Client: "1.5", URL: url, Params: shape, Mode: "subset", Log: "changes_only",
		Subset: map[string]any{"where": "score > $1", "params": map[string]string{"1": "3"}, "orderBy": "score DESC NULLS LAST", "limit": 7},
		Fetch:  map[string]any{"where": "title LIKE $1", "params": []string{"t1%"}, "orderBy": "id DESC", "limit": 4, "offset": 1, "method": "POST"}})

	requested := c.event(t, "requested")
	var held []map[string]any
	b, _ := json.Marshal(requested["rows"])
	json.Unmarshal(b, &held)
	// (items.score: expectedRows selects score::text AS score, which would order as text)
	want := s.expectedClientRows("items", "owner <> 0 AND (score > 3) ORDER BY items.score DESC NULLS LAST, items.id LIMIT 7", nil)
	if got := sortByID(held); !reflect.DeepEqual(got, want) {
		t.Fatalf("requestSnapshot rows differ from SELECT:\n--- client (%d rows)\n%s\n--- SELECT (%d rows)\n%s", len(got), firstRows(got), len(want), firstRows(want))
	}
	t.Logf("requestSnapshot (GET): the client holds the %d rows of the SELECT", len(held))

	fetched := c.event(t, "fetched")
	var data []map[string]any
	b, _ = json.Marshal(fetched["data"])
	json.Unmarshal(b, &data)
	meta, _ := fetched["metadata"].(map[string]any)
	for _, k := range []string{"xmin", "xmax", "database_lsn"} {
		if v, ok := meta[k].(string); !ok || v == "" {
			t.Fatalf("metadata %s is %v, want a decimal string: %v", k, meta[k], meta)
		}
	}
	if _, ok := meta["xip_list"].([]any); !ok {
		t.Fatalf("metadata xip_list is %v", meta["xip_list"])
	}
	var values []map[string]any
	for _, m := range data {
		h, _ := m["headers"].(map[string]any)
		if h["operation"] != "insert" || h["snapshot_mark"] != meta["snapshot_mark"] || meta["snapshot_mark"] == nil {
			t.Fatalf("subset row headers %v, metadata %v", h, meta)
		}
		v, _ := m["value"].(map[string]any)
		values = append(values, normalize(v))
	}
	rows, err := s.conn.Query(context.Background(), `SELECT id FROM items WHERE owner <> 0 AND title LIKE 't1%' ORDER BY id DESC LIMIT 4 OFFSET 1`)
	if err != nil {
		t.Fatal(err)
	}
	wantIDs, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	var wantOrder []float64
	for _, id := range wantIDs {
		wantOrder = append(wantOrder, float64(id))
	}
	if got := ids(values); !reflect.DeepEqual(got, wantOrder) {
		t.Fatalf("fetchSnapshot (POST) ids %v, SELECT gives %v", got, wantOrder)
	}
	if want := s.expectedClientRows("items", "owner <> 0 AND title LIKE 't1%' ORDER BY items.id DESC LIMIT 4 OFFSET 1", nil); !reflect.DeepEqual(sortByID(values), want) {
		t.Fatalf("fetchSnapshot rows differ from SELECT:\n%s\n---\n%s", firstRows(sortByID(values)), firstRows(want))
	}
	t.Logf("fetchSnapshot (POST): %d rows in SELECT order, metadata %v", len(values), meta)

	// The stream keeps the held rows current: a change after the snapshot
	// reaches the client (its xid is not one the snapshot saw).
	var heldIDs []string
	for _, id := range ids(held) {
		heldIDs = append(heldIDs, strconv.Itoa(int(id)))
	}
	s.exec(`UPDATE items SET title = 'changed after the subset', flag = NULL WHERE id = ` + heldIDs[0])
	s.waitEqual(c, "items", "id IN ("+strings.Join(heldIDs, ",")+")", nil)
	t.Logf("a change to a held row after the subset reached the client")

	t.Run("bad where clause", func(t *testing.T) {
		c := s.startClient("1.5-bad-where-location", clientArgs{Client: "1.5", URL: url, Params: map[string]any{"table": "items", "where": "owner = = 1"}})
		e := c.clientError(t)
		body, _ := e["json"].(map[string]any)
		errs, _ := body["errors"].(map[string]any)
		where, _ := errs["where"].([]any)
		if e["status"] != float64(400) || body["message"] != "Invalid request" || len(where) != 1 || where[0] != `At location 23: syntax error at or near "="` {
			t.Fatalf("client error %v, want a 400 with errors.where [At location 23: syntax error at or near \"=\"]", e)
		}
	})

	t.Run("bad subset where and order_by", func(t *testing.T) {
		for name, tc := range map[string]struct {
			subset map[string]any
			field  string
			msg    string
		}{
			"syntax":      {map[string]any{"where": "id = = 1"}, "where", `At location 20: syntax error at or near "="`},
			"type":        {map[string]any{"where": "title > 3"}, "where", ""},
			"order_by":    {map[string]any{"orderBy": "nope DESC", "limit": 2}, "order_by", `At location 18: unknown reference "nope"`},
			"expressions": {map[string]any{"orderBy": "lower(title)", "limit": 2}, "order_by", ""},
		} {
			c := s.startClient("1.5-bad-subset-"+name, clientArgs{Client: "1.5", URL: url, Params: shape, Mode: "subset", Log: "changes_only", Subset: tc.subset})
			e := c.clientError(t)
			body, _ := e["json"].(map[string]any)
			errs, _ := body["errors"].(map[string]any)
			sub, _ := errs["subset"].(map[string]any)
			msgs, _ := sub[tc.field].([]any)
			if e["status"] != float64(400) || len(msgs) == 0 || (tc.msg != "" && msgs[0] != tc.msg) {
				t.Errorf("%s: client error %v, want a 400 with errors.subset.%s %q", name, e, tc.field, tc.msg)
				continue
			}
			t.Logf("%s: %v", name, msgs[0])
		}
	})
}
