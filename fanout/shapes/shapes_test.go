package shapes

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapestate"
	"github.com/fanout/pipeline/fanout/testenv"
)

const testTables = `
CREATE TABLE items (id int PRIMARY KEY, owner int, title text, price numeric, doc jsonb);
CREATE TABLE nokey (a int);
CREATE TABLE ck (a int, b text, c int, PRIMARY KEY (b, a));
CREATE VIEW v AS SELECT * FROM items;
`

type env struct {
	bus  *fanout.Bus
	conn *pgx.Conn
	ctx  context.Context
}

func start(t *testing.T) *env {
	t.Helper()
	pg := testenv.StartPostgres(t)
	conn := pg.Connect(t)
	pg.Exec(t, conn, testTables)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return &env{bus: testenv.StartNATS(t).Bus(t), conn: conn, ctx: ctx}
}

// add registers a shape of items with where.
func (e *env) add(t *testing.T, where string) *fanout.Shape {
	t.Helper()
	s, err := Add(e.ctx, e.bus, e.conn, "items", where, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *env) keys(t *testing.T) []string {
	t.Helper()
	list, err := List(e.ctx, e.bus)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range list {
		keys = append(keys, s.Handle)
	}
	return keys
}

func TestLoadSchema(t *testing.T) {
	e := start(t)
	cols, pk, err := LoadSchema(e.ctx, e.conn, "ck")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(pk, ",") != "b,a" {
		t.Errorf("primary key %v, want [b a] in key order", pk)
	}
	want := []fanout.Column{{Name: "a", Type: "integer", OID: 23}, {Name: "b", Type: "text", OID: 25}, {Name: "c", Type: "integer", OID: 23}}
	if len(cols) != 3 || cols[0] != want[0] || cols[1] != want[1] || cols[2] != want[2] {
		t.Errorf("columns %+v, want %+v", cols, want)
	}
	for table, msg := range map[string]string{
		"public.missing": "table public.missing does not exist (names are case-sensitive; write schema.table)",
		"nokey":          "table public.nokey has no primary key; shapes key their rows by it (ALTER TABLE public.nokey ADD PRIMARY KEY (...))",
		"public.v":       `public.v is not a table (relkind "v"): shapes need a table that logical replication publishes`,
	} {
		if _, _, err := LoadSchema(e.ctx, e.conn, table); err == nil || err.Error() != msg {
			t.Errorf("LoadSchema(%s): %v, want %q", table, err, msg)
		}
	}
}

func TestAddValidatesAndStoresNothingOnError(t *testing.T) {
	e := start(t)
	const items = "id, owner, title, price, doc"
	bad := []struct {
		table, where string
		columns      []string
		err          string // a regexp
	}{
		{"public.missing", "", nil, `^table public\.missing does not exist`},
		{"nokey", "", nil, `^table public\.nokey has no primary key`},
		{"items", "", []string{"id", "nope"}, `^table public\.items has no column "nope"; its columns are: ` + items + `$`},
		{"items", "ownr = 7", nil, `^table public\.items: where clause: column "ownr" does not exist; the table's columns are: ` + items + `$`},
		{"items", "owner = = 7", nil, `^table public\.items: where clause does not parse: syntax error at or near "=" \(at character 9 of the clause\)$`},
		{"items", "owner = 'abc'", nil, `^table public\.items: where clause: column "owner" is integer, and constant 'abc' does not convert to it: "abc" is not a valid integer$`},
		{"items", "owner IN (SELECT 1)", nil, `^table public\.items: where clause`},
		{"items", "owner = 7; DELETE FROM items", nil, `^table public\.items: where clause must be one boolean expression; remove the ';'`},
		{"items", "owner = 7", []string{"title"}, `^shape s[0-9a-f]{16}: --columns must include the primary key column "id"$`},
		{"ck", "", []string{"a", "c"}, `^shape s[0-9a-f]{16}: --columns must include the primary key column "b"$`},
	}
	for _, c := range bad {
		s, err := Add(e.ctx, e.bus, e.conn, c.table, c.where, nil, c.columns)
		if err == nil {
			t.Errorf("Add(%s, %q, %v) = %s, want an error", c.table, c.where, c.columns, s.Handle)
			continue
		}
		if !regexp.MustCompile(c.err).MatchString(err.Error()) {
			t.Errorf("Add(%s, %q, %v):\n got: %v\nwant: /%s/", c.table, c.where, c.columns, err, c.err)
		}
	}
	if keys := e.keys(t); len(keys) != 0 {
		t.Fatalf("failed adds left shapes in the bucket: %v", keys)
	}

	s, err := Add(e.ctx, e.bus, e.conn, "items", " owner = 7 ", nil, []string{"title", "id", "title"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Table != "public.items" || s.Where != "owner = 7" || strings.Join(s.Columns, ",") != "title,id" ||
		strings.Join(s.PrimaryKey, ",") != "id" || len(s.Schema) != 5 {
		t.Fatalf("stored shape %+v", s)
	}
	got, err := Get(e.ctx, e.bus, s.Handle)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Encode()) != string(s.Encode()) {
		t.Fatalf("Get = %s, want %s", got.Encode(), s.Encode())
	}
}

func TestListSorted(t *testing.T) {
	e := start(t)
	var want []*fanout.Shape
	for _, table := range []string{"items", "ck", "items", "ck"} {
		s, err := Add(e.ctx, e.bus, e.conn, table, "", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, s)
	}
	sort.Slice(want, func(i, j int) bool {
		if want[i].Table != want[j].Table {
			return want[i].Table < want[j].Table
		}
		return want[i].Handle < want[j].Handle
	})
	list, err := List(e.ctx, e.bus)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(want) {
		t.Fatalf("List returned %d shapes, want %d", len(list), len(want))
	}
	for i := range want {
		if list[i].Handle != want[i].Handle {
			t.Fatalf("List[%d] = %s %s, want %s %s", i, list[i].Table, list[i].Handle, want[i].Table, want[i].Handle)
		}
	}
	// An invalid value is reported with its key, not skipped.
	if _, err := e.bus.Shapes.Put(e.ctx, "sbroken", []byte("{")); err != nil {
		t.Fatal(err)
	}
	if _, err := List(e.ctx, e.bus); err == nil || !strings.Contains(err.Error(), "KV bucket fanout_shapes key sbroken: shape definition is not valid JSON") {
		t.Fatalf("List with a broken value: %v", err)
	}
}

func TestRemoveDeletesTheShape(t *testing.T) {
	e := start(t)
	a, b := e.add(t, "owner = 1"), e.add(t, "owner = 2")
	if err := Remove(e.ctx, e.bus, a.Handle); err != nil {
		t.Fatal(err)
	}
	if _, err := Get(e.ctx, e.bus, a.Handle); !errors.Is(err, ErrUnknownShape) {
		t.Fatalf("Get of a removed shape: %v", err)
	}
	if err := Remove(e.ctx, e.bus, a.Handle); !errors.Is(err, ErrUnknownShape) || err.Error() != "shape "+a.Handle+": unknown shape (fanoutctl shape ls lists the shapes)" {
		t.Fatalf("second Remove: %v", err)
	}
	if err := Remove(e.ctx, e.bus, "Bad Handle"); err == nil || !strings.Contains(err.Error(), "is not 1-64 characters") {
		t.Fatalf("Remove of an invalid handle: %v", err)
	}
	if keys := e.keys(t); len(keys) != 1 || keys[0] != b.Handle {
		t.Fatalf("bucket holds %v, want only %s", keys, b.Handle)
	}
}

func TestWatch(t *testing.T) {
	e := start(t)
	first, err := Add(e.ctx, e.bus, e.conn, "items", "owner = 1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []string
	var logs bytes.Buffer
	record := func(ev string) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, ev)
	}
	seen := func(ev string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, x := range events {
				if x == ev {
					return true
				}
			}
			return false
		}
	}
	log := slog.New(slog.NewTextHandler(&syncWriter{w: &logs, mu: &mu}, nil))
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, e.bus.Shapes,
			func(s *fanout.Shape) { record("put " + s.Handle) },
			func(h string) { record("delete " + h) },
			log, WithReady(func() { record("ready") }))
	}()
	testenv.Eventually(t, 10*time.Second, "the existing shape, then ready", func() bool { return seen("ready")() })
	mu.Lock()
	if events[0] != "put "+first.Handle {
		t.Errorf("first event %q, want the existing shape before ready", events[0])
	}
	mu.Unlock()

	second, err := Add(e.ctx, e.bus, e.conn, "items", "owner = 2", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the added shape", seen("put "+second.Handle))
	if err := Remove(e.ctx, e.bus, first.Handle); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the removal", seen("delete "+first.Handle))
	if _, err := e.bus.Shapes.Put(e.ctx, "sbroken", []byte(`{"handle":"sbroken"}`)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the invalid value logged", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(logs.String(), "invalid shape definition skipped") && strings.Contains(logs.String(), "key=sbroken")
	})
	if seen("put sbroken")() {
		t.Error("an invalid shape was passed to onPut")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Watch returned %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return within 10s of its context ending")
	}
}

// syncWriter serialises log writes with the test's mutex.
type syncWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// A new shape starts creating in the shape-state bucket; removing it clears
// its state.
func TestAddStartsCreatingAndRemoveClearsState(t *testing.T) {
	e := start(t)
	s, err := Add(e.ctx, e.bus, e.conn, "items", "owner = 7", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := shapestate.Open(e.ctx, e.bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	st, rev, err := shapestate.Get(e.ctx, kv, s.Handle)
	if err != nil || st.Phase != shapestate.Creating || rev == 0 {
		t.Fatalf("state after Add: %+v rev %d, %v; want creating, stored", st, rev, err)
	}
	if err := Remove(e.ctx, e.bus, s.Handle); err != nil {
		t.Fatal(err)
	}
	if _, rev, err := shapestate.Get(e.ctx, kv, s.Handle); err != nil || rev != 0 {
		t.Fatalf("state left after Remove: rev %d, %v", rev, err)
	}
}

// Removing a shape deletes the generation the HTTP API recorded serving it
// at, and no other handle's; a record that cannot be deleted is a logged
// warning, never a failed removal.
func TestRemoveDeletesTheServedRecord(t *testing.T) {
	e := start(t)
	defs, err := e.bus.JS.CreateKeyValue(e.ctx, jetstream.KeyValueConfig{Bucket: fanout.APIDefinitionsBucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	a, b := e.add(t, "owner = 1"), e.add(t, "owner = 2")
	for _, h := range []string{a.Handle, b.Handle} {
		if _, err := defs.Put(e.ctx, ServedKey(h), []byte("3")); err != nil {
			t.Fatal(err)
		}
	}
	if err := Remove(e.ctx, e.bus, a.Handle); err != nil {
		t.Fatal(err)
	}
	if _, err := defs.Get(e.ctx, ServedKey(a.Handle)); !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
		t.Fatalf("served record of the removed shape: %v, want it gone", err)
	}
	if v, err := defs.Get(e.ctx, ServedKey(b.Handle)); err != nil || string(v.Value()) != "3" {
		t.Fatalf("served record of the shape still there: %v, %v", v, err)
	}

	// A sealed bucket refuses the delete: the shape is removed all the same.
	info, err := e.bus.JS.Stream(e.ctx, "KV_"+fanout.APIDefinitionsBucket)
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.CachedInfo().Config
	cfg.Sealed = true
	if _, err := e.bus.JS.UpdateStream(e.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(&syncWriter{w: &logs, mu: &mu}, nil))
	if err := Remove(e.ctx, e.bus, b.Handle, WithRemoveLog(log)); err != nil {
		t.Fatalf("Remove with the served record undeletable: %v", err)
	}
	if _, err := Get(e.ctx, e.bus, b.Handle); !errors.Is(err, ErrUnknownShape) {
		t.Fatalf("Get of the removed shape: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if out := logs.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "nats kv del "+fanout.APIDefinitionsBucket+" "+ServedKey(b.Handle)) {
		t.Fatalf("log %q, want a warning naming the record", out)
	}
}
