// Package e2e runs the whole pipeline as OS processes against a real
// Postgres and NATS, kills them, and checks the guarantees of the brief on
// what really happened: rows in shape logs, confirmed_flush_lsn in
// pg_replication_slots.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/fanout/testenv"
)

// walSegment is the default WAL segment size: the brief's bound on retained
// WAL once load stops.
const walSegment = 16 << 20

// testPartitions is the test stack's bus.partitions: few, so that two
// consumers each own several and every partition sees traffic.
const testPartitions = 8

// Detection settings of the test stack: short, so kills are noticed quickly.
const (
	heartbeatTimeout = 2 * time.Second
	// statusInterval is how often ingest confirms the safe LSN to Postgres.
	statusInterval = time.Second
)

type stack struct {
	t       *testing.T
	pg      *testenv.Postgres
	nats    *testenv.NATS        // the single server, or nil on a cluster
	cluster *testenv.NATSCluster // the cluster, or nil on a single server
	conn    *pgx.Conn
	dir     string
	env     []string
	procs   map[string]*testenv.Process
	history []string // tables whose changes Postgres records (recordHistory)

	sampleMu sync.Mutex
	sampler  *pgx.Conn // the chaos WAL sampler's own connection
}

// newStack is Postgres and one embedded NATS server, with the services'
// environment set up; it starts no service.
func newStack(t *testing.T) *stack {
	t.Helper()
	testenv.Binaries(t) // build first, so build time is not counted in any deadline
	n := testenv.StartNATS(t)
	s := newStackOn(t, n.URL, 1)
	s.nats = n
	return s
}

// newClusterStack is newStack on a 3-node JetStream cluster: the services
// get every node's URL, and the stream and buckets have 3 replicas.
func newClusterStack(t *testing.T) *stack {
	t.Helper()
	testenv.Binaries(t)
	c := testenv.StartNATSCluster(t, 3)
	s := newStackOn(t, c.URL, 3)
	s.cluster = c
	return s
}

func newStackOn(t *testing.T, natsURL string, replicas int) *stack {
	t.Helper()
	s := &stack{t: t, pg: testenv.StartPostgres(t), dir: t.TempDir(), procs: map[string]*testenv.Process{}}
	s.conn = s.pg.Connect(t)
	t.Cleanup(func() {
		if s.sampler != nil {
			s.sampler.Close(context.Background())
		}
	})
	s.env = []string{
		"FANOUT_POSTGRES_URL=" + s.pg.URL,
		"FANOUT_NATS_URL=" + natsURL,
		"FANOUT_BUS_REPLICAS=" + strconv.Itoa(replicas),
		"FANOUT_STORAGE_DIR=" + s.storageDir(),
		"FANOUT_HTTP_ADDR=127.0.0.1:0",
		"FANOUT_BUS_PARTITIONS=" + strconv.Itoa(testPartitions),
		"FANOUT_LOG_LEVEL=info",
		"FANOUT_POSTGRES_IDLE_HEARTBEAT=1s",
		"FANOUT_POSTGRES_STATUS_INTERVAL=" + statusInterval.String(),
		"FANOUT_FLUSHD_HEARTBEAT_TIMEOUT=" + heartbeatTimeout.String(),
		"FANOUT_FLUSHD_POLL_INTERVAL=50ms",
		"FANOUT_CONSUMER_HEARTBEAT_INTERVAL=250ms",
	}
	return s
}

// storageDir is the consumers' storage.dir.
func (s *stack) storageDir() string { return filepath.Join(s.dir, "shapes") }

func (s *stack) start(name, bin string, env ...string) *testenv.Process {
	s.t.Helper()
	p := testenv.StartProcess(s.t, name, bin, nil, append(append([]string(nil), s.env...), env...)...)
	s.procs[name] = p
	return p
}

func (s *stack) startIngest() *testenv.Process { return s.start("ingest", "ingest") }
func (s *stack) startFlushd() *testenv.Process { return s.start("flushd", "flushd") }
func (s *stack) startConsumer(id string) *testenv.Process {
	return s.start(id, "consumer", "FANOUT_CONSUMER_ID="+id)
}

// ctl runs fanoutctl and fails the test on error.
func (s *stack) ctl(args ...string) string {
	s.t.Helper()
	out, errOut, err := testenv.Run(s.t, "fanoutctl", args, s.env...)
	if err != nil {
		s.t.Fatalf("fanoutctl %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// reconnect replaces the test's connection after a Postgres restart.
func (s *stack) reconnect() {
	s.t.Helper()
	s.conn = s.pg.Connect(s.t)
}

func (s *stack) exec(sql string, args ...any) {
	s.t.Helper()
	s.pg.Exec(s.t, s.conn, sql, args...)
}

func (s *stack) queryLSN(sql string) pglogrepl.LSN {
	s.t.Helper()
	var text *string
	if err := s.conn.QueryRow(context.Background(), sql).Scan(&text); err != nil {
		s.t.Fatalf("%s: %v", sql, err)
	}
	if text == nil {
		return 0
	}
	lsn, err := pglogrepl.ParseLSN(*text)
	if err != nil {
		s.t.Fatal(err)
	}
	return lsn
}

func (s *stack) currentWAL() pglogrepl.LSN {
	return s.queryLSN("SELECT pg_current_wal_insert_lsn()::text")
}

func (s *stack) confirmedFlush() pglogrepl.LSN {
	return s.queryLSN("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'fanout'")
}

// retainedWAL is how much WAL the slot keeps: current WAL - confirmed_flush_lsn.
func (s *stack) retainedWAL() int64 {
	c := s.confirmedFlush()
	if c == 0 {
		return 0
	}
	return int64(s.currentWAL()) - int64(c)
}

// waitConfirmed waits until confirmed_flush_lsn reaches lsn.
func (s *stack) waitConfirmed(lsn pglogrepl.LSN, timeout time.Duration) {
	s.t.Helper()
	testenv.Eventually(s.t, timeout, fmt.Sprintf("confirmed_flush_lsn to reach %s", lsn), func() bool {
		return s.confirmedFlush() >= lsn
	})
}

// waitSlot waits until ingest has created its slot and confirmed once.
func (s *stack) waitSlot() {
	s.t.Helper()
	testenv.Eventually(s.t, 60*time.Second, "replication slot fanout to be active", func() bool {
		var n int
		s.conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'fanout' AND active").Scan(&n)
		return n == 1
	})
}

// row is one row with values in Postgres text format, as shape logs keep them.
type row map[string]*string

// expectedRows runs the shape's query in Postgres: SELECT columns FROM
// table WHERE where, every value cast to text (the shape logs' format).
func (s *stack) expectedRows(table, where string, columns []string) []row {
	s.t.Helper()
	ctx := context.Background()
	if len(columns) == 0 {
		rows, err := s.conn.Query(ctx, `SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, table)
		if err != nil {
			s.t.Fatal(err)
		}
		columns, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			s.t.Fatal(err)
		}
	}
	var sel []string
	for _, c := range columns {
		sel = append(sel, pgx.Identifier{c}.Sanitize()+"::text")
	}
	q := fmt.Sprintf("SELECT %s FROM %s", strings.Join(sel, ", "), table)
	if where != "" {
		q += " WHERE " + where
	}
	rows, err := s.conn.Query(ctx, q)
	if err != nil {
		s.t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var out []row
	for rows.Next() {
		vals := make([]*string, len(columns))
		ptrs := make([]any, len(columns))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			s.t.Fatal(err)
		}
		r := row{}
		for i, c := range columns {
			r[c] = vals[i]
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		s.t.Fatal(err)
	}
	sortRows(out)
	return out
}

// shapeRows is what `fanoutctl shape rows` prints, parsed.
func (s *stack) shapeRows(handle string) []row {
	s.t.Helper()
	out := s.ctl("shape", "rows", "--wait", "30s", handle) // a new shape is served once its snapshot is ready
	var rows []row
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var r row
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			s.t.Fatalf("shape rows printed a line that is not a JSON object: %q", line)
		}
		rows = append(rows, r)
	}
	sortRows(rows)
	return rows
}

func sortRows(rows []row) {
	key := func(r row) int {
		if r["id"] == nil {
			return -1
		}
		n, _ := strconv.Atoi(*r["id"])
		return n
	}
	sort.Slice(rows, func(i, j int) bool { return key(rows[i]) < key(rows[j]) })
}

func renderRows(rows []row) string {
	var b strings.Builder
	for _, r := range rows {
		j, _ := json.Marshal(r)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

type shapeDef struct {
	handle  string
	table   string
	where   string
	columns []string
}

func (s *stack) addShape(table, where string, columns ...string) shapeDef {
	s.t.Helper()
	args := []string{"shape", "add", "--table", table}
	if where != "" {
		args = append(args, "--where", where)
	}
	if len(columns) > 0 {
		args = append(args, "--columns", strings.Join(columns, ","))
	}
	handle := strings.TrimSpace(s.ctl(args...))
	if handle == "" || strings.ContainsAny(handle, " \n") {
		s.t.Fatalf("shape add printed %q, want a handle", handle)
	}
	return shapeDef{handle: handle, table: table, where: where, columns: columns}
}

// checkShapes asserts every shape log equals its query, the oracle of guarantee 5.
func (s *stack) checkShapes(defs []shapeDef) {
	s.t.Helper()
	s.checkShapeRows(defs, 30*time.Second)
	// Equal final rows can hide a change applied twice: compare each
	// log's operations with what Postgres committed too.
	s.checkLogsFollowHistory(defs)
}

// checkShapeRows asserts every shape's rows equal its query, waiting up to
// wait for each.
func (s *stack) checkShapeRows(defs []shapeDef, wait time.Duration) {
	s.t.Helper()
	for _, d := range defs {
		want := renderRows(s.expectedRows(d.table, d.where, d.columns))
		var got string
		deadline := time.Now().Add(wait)
		for {
			got = renderRows(s.shapeRows(d.handle))
			if got == want || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if got != want {
			s.t.Errorf("shape %s (%s WHERE %s) differs from its query:\n--- shape rows\n%s--- SELECT\n%s", d.handle, d.table, d.where, got, want)
		}
	}
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}
