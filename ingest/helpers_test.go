package ingest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// testArgs are the flags every test run of ingest gets: fast status and
// heartbeat so tests see the slot move within seconds.
func testArgs(pg *testenv.Postgres, ns *testenv.NATS, extra ...string) []string {
	return append([]string{
		"--postgres.url", pg.URL,
		"--nats.url", ns.URL,
		"--http.addr", "127.0.0.1:0",
		"--postgres.status_interval", "200ms",
		"--postgres.idle_heartbeat", "300ms",
		"--ingest.progress_interval", "50ms",
	}, extra...)
}

// runIngest runs the service in this process until the returned stop is
// called (or the test ends); stop returns Run's error.
func runIngest(t *testing.T, pg *testenv.Postgres, ns *testenv.NATS, extra ...string) (stop func() error) {
	t.Helper()
	var cfg Config
	if err := configs.Load("ingest", testArgs(pg, ns, extra...), &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	cfg.HTTP.Addr = ""
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, quietLog(), nil) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(time.Minute):
				err = errors.New("ingest did not stop within 1m of its context ending")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// startIngestProcess runs bin/ingest as an OS process (killed when the test ends).
func startIngestProcess(t *testing.T, args []string, env ...string) *testenv.Process {
	t.Helper()
	return testenv.StartProcess(t, "ingest", "ingest", args, env...)
}

// peakRSS is the process's high-water resident set size in bytes.
func peakRSS(t *testing.T, p *testenv.Process) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb * 1024
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}

// addShape stores a shape on table with an empty where (every row).
func addShape(t *testing.T, bus *fanout.Bus, handle, table string) {
	t.Helper()
	s := fanout.Shape{Handle: handle, Table: table, PrimaryKey: []string{"id"},
		Schema:    []fanout.Column{{Name: "id", Type: "integer", OID: 23}, {Name: "v", Type: "text", OID: 25}},
		CreatedAt: time.Now()}
	if _, err := bus.Shapes.Put(context.Background(), handle, s.Encode()); err != nil {
		t.Fatal(err)
	}
}

// published reads ingest's published LSN from the state bucket (0 if none).
func published(t *testing.T, bus *fanout.Bus) pglogrepl.LSN {
	t.Helper()
	e, err := bus.State.Get(context.Background(), fanout.KeyIngestPublished)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	p, err := fanout.DecodeIngestProgress(e.Value())
	if err != nil {
		t.Fatal(err)
	}
	return p.PublishedLSN
}

// standInFlushd publishes ingest's published LSN as the safe LSN every
// 100 ms while ok says so, until the test ends: nothing consumes in these
// tests, so what is in the stream counts as persisted.
func standInFlushd(t *testing.T, bus *fanout.Bus, ok func(context.Context) bool) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if !ok(ctx) {
				continue
			}
			if e, err := bus.State.Get(ctx, fanout.KeyIngestPublished); err == nil {
				if p, err := fanout.DecodeIngestProgress(e.Value()); err == nil {
					bus.State.Put(ctx, fanout.KeySafeLSN, fanout.EncodeJSON(&fanout.SafeLSN{LSN: p.PublishedLSN, Computed: time.Now()}))
				}
			}
		}
	}()
}

// setSafe acts as flushd.
func setSafe(t *testing.T, bus *fanout.Bus, lsn pglogrepl.LSN) {
	t.Helper()
	if _, err := bus.State.Put(context.Background(), fanout.KeySafeLSN, fanout.EncodeJSON(&fanout.SafeLSN{LSN: lsn, Computed: time.Now()})); err != nil {
		t.Fatal(err)
	}
}

// lsnQuery runs a query returning one pg_lsn.
func lsnQuery(t *testing.T, conn *pgx.Conn, sql string, args ...any) pglogrepl.LSN {
	t.Helper()
	var s *string
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if s == nil {
		return 0
	}
	lsn, err := pglogrepl.ParseLSN(*s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

func slotConfirmed(t *testing.T, conn *pgx.Conn) pglogrepl.LSN {
	return lsnQuery(t, conn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'fanout'")
}

func currentLSN(t *testing.T, conn *pgx.Conn) pglogrepl.LSN {
	// The insert position: with synchronous_commit off the write position
	// (pg_current_wal_lsn) can lag behind commits already made.
	return lsnQuery(t, conn, "SELECT pg_current_wal_insert_lsn()::text")
}

// streamFragments reads every message in FANOUT in stream order.
func streamFragments(t *testing.T, bus *fanout.Bus) []*fanout.Fragment {
	t.Helper()
	ctx := context.Background()
	info, err := bus.Stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*fanout.Fragment
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := bus.Stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		frags := decodeMessage(t, m.Subject, m.Data)
		if got, want := m.Header.Get(fanout.HeaderMsgID), fanout.MsgID(partitionOf(t, m.Subject), frags); got != want {
			t.Fatalf("message %d has Nats-Msg-Id %q, want %q", seq, got, want)
		}
		if got := m.Header.Get(fanout.HeaderCommitLSN); got != frags[0].CommitLSN.String() {
			t.Fatalf("message %d has commit LSN header %q, first fragment %s", seq, got, frags[0].CommitLSN)
		}
		if got := m.Header.Get(fanout.HeaderShape); got != frags[0].Shape {
			t.Fatalf("message %d has shape header %q, first fragment's shape %s", seq, got, frags[0].Shape)
		}
		out = append(out, frags...)
	}
	return out
}

func partitionOf(t *testing.T, subject string) int {
	t.Helper()
	p, err := fanout.ParseSubject(subject)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// decodeMessage reads a bus message's fragments, failing on any error.
func decodeMessage(t *testing.T, subject string, data []byte) []*fanout.Fragment {
	t.Helper()
	items, err := fanout.DecodeMessage(partitionOf(t, subject), data)
	if err != nil {
		t.Fatalf("message on %s: %v", subject, err)
	}
	frags := make([]*fanout.Fragment, len(items))
	for i, it := range items {
		if it.Err != nil {
			t.Fatalf("message on %s: %v", subject, it.Err)
		}
		f, err := fanout.DecodeFragment(it.Raw) // with its changes
		if err != nil {
			t.Fatalf("message on %s: %v", subject, err)
		}
		frags[i] = f
	}
	return frags
}

// publishFragment publishes f alone in a message.
func publishFragment(ctx context.Context, p *Publisher, txn *Txn, partition int, f *fanout.Fragment) error {
	body, err := f.Encode()
	if err != nil {
		return err
	}
	x := &batch{partition: partition}
	x.append(f, body, txn)
	return p.Publish(ctx, x)
}

func fragmentID(f *fanout.Fragment) string {
	return fmt.Sprintf("%s:%s:%d", f.Shape, f.CommitLSN, f.Seq)
}
