package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/fanout/testenv"
)

// TestChaos runs a mixed workload over many shapes while a seeded random
// schedule kills, restarts and freezes every kind of process, then checks the
// oracle: every shape log equals its query, and WAL was released.
//
// `make test` runs a short schedule; `make chaos` sets FANOUT_CHAOS_DURATION
// (e.g. 5m) and FANOUT_CHAOS_SERVERS=1, which also restarts NATS and Postgres.
func TestChaos(t *testing.T) {
	duration := 20 * time.Second
	if d, err := time.ParseDuration(os.Getenv("FANOUT_CHAOS_DURATION")); err == nil {
		duration = d
	}
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("FANOUT_CHAOS_SEED"), 10, 64); err == nil {
		seed = v
	}
	restartServers := os.Getenv("FANOUT_CHAOS_SERVERS") == "1"
	t.Logf("chaos seed %d (FANOUT_CHAOS_SEED=%d reproduces the schedule), duration %s", seed, seed, duration)
	rng := rand.New(rand.NewPCG(seed, 0))

	s := newStack(t)
	s.exec(itemsTable)
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
	consumers := []string{"c1", "c2", "c3"}
	for _, id := range consumers {
		s.startConsumer(id)
	}
	s.startIngest()
	s.waitSlot()

	var txns, changes atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.chaosLoad(stop, seed, &txns, &changes) }()

	var maxRetained atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if r := s.retainedWALQuiet(); r > maxRetained.Load() {
				maxRetained.Store(r)
			}
		}
	}()

	killed := 0
	end := time.Now().Add(duration)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(1000+rng.IntN(2000)) * time.Millisecond)
		action := rng.IntN(10)
		t.Logf("%s chaos action %d", time.Now().Format("15:04:05.000"), action)
		switch {
		case action < 4: // SIGKILL a consumer, restart it
			id := consumers[rng.IntN(len(consumers))]
			s.procs[id].Kill()
			killed++
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
			s.startConsumer(id)
		case action < 6:
			s.procs["ingest"].Kill()
			killed++
			time.Sleep(time.Duration(rng.IntN(1000)) * time.Millisecond)
			s.startIngest()
		case action < 7:
			s.procs["flushd"].Kill()
			killed++
			time.Sleep(time.Duration(rng.IntN(1000)) * time.Millisecond)
			s.startFlushd()
		case action < 9: // a zombie: frozen past the heartbeat timeout, then woken
			id := consumers[rng.IntN(len(consumers))]
			s.procs[id].Signal(syscall.SIGSTOP)
			time.Sleep(heartbeatTimeout + time.Duration(500+rng.IntN(1500))*time.Millisecond)
			s.procs[id].Signal(syscall.SIGCONT)
		default:
			if restartServers {
				if rng.IntN(2) == 0 {
					s.nats.Shutdown()
					time.Sleep(time.Second)
					s.nats.Start(t)
				} else {
					s.pg.Stop(t)
					time.Sleep(time.Second)
					s.pg.Start(t)
					s.reconnect()
				}
			}
		}
	}
	close(stop)
	wg.Wait()

	// Processes that died on their own (they may exit on a fatal error by
	// design) are restarted so the pipeline can drain.
	for name, p := range s.procs {
		if exited, err := p.Exited(); exited {
			t.Logf("%s had exited (%v); restarting it for the drain", name, err)
			switch name {
			case "ingest":
				s.startIngest()
			case "flushd":
				s.startFlushd()
			default:
				s.startConsumer(name)
			}
		}
	}
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
	fmt.Printf("chaos: seed %d, %s, processes killed %d, transactions %d, changes %d, shapes %d, mismatches %d, max retained WAL %.1f MB, final retained WAL %.1f MB\n",
		seed, duration, killed, txns.Load(), changes.Load(), len(defs), mismatches, float64(maxRetained.Load())/(1<<20), float64(final)/(1<<20))
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

// retainedWALQuiet is retainedWAL for a sampler: errors read as 0.
func (s *stack) retainedWALQuiet() int64 {
	var lag *int64
	s.sampleMu.Lock()
	defer s.sampleMu.Unlock()
	if s.sampler == nil {
		c, err := pgx.Connect(context.Background(), s.pg.URL)
		if err != nil {
			return 0
		}
		s.sampler = c
	}
	if err := s.sampler.QueryRow(context.Background(), `SELECT (pg_current_wal_insert_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'fanout'`).Scan(&lag); err != nil {
		s.sampler.Close(context.Background())
		s.sampler = nil
		return 0
	}
	if lag == nil {
		return 0
	}
	return *lag
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
