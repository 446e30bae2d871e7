// Command devstack is `make run`: the whole pipeline on one machine. It
// starts an embedded NATS JetStream server, a private Postgres cluster in a
// scratch folder (or uses FANOUT_POSTGRES_URL), flushd, two consumers and
// ingest from ./bin, adds a few shapes on a demo table, runs a demo load and
// prints progress every second. Ctrl-C stops everything.
package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapes"
	"github.com/fanout/pipeline/fanout/testenv"
	"github.com/fanout/pipeline/flushd"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "make run:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	work, err := filepath.Abs(".run")
	if err != nil {
		return err
	}
	os.RemoveAll(work)
	if err := os.MkdirAll(filepath.Join(work, "logs"), 0o755); err != nil {
		return err
	}

	pgURL := os.Getenv("FANOUT_POSTGRES_URL")
	if pgURL == "" {
		if _, err := exec.LookPath("initdb"); err != nil {
			return errors.New("the PostgreSQL server binaries (initdb, pg_ctl, postgres) are not on PATH.\n" +
				"  Install them (Debian/Ubuntu: apt-get install postgresql-15, then export PATH=$PATH:/usr/lib/postgresql/15/bin),\n" +
				"  or point FANOUT_POSTGRES_URL at a Postgres 15 with wal_level=logical")
		}
		fmt.Println("starting a private Postgres cluster (wal_level=logical)...")
		pg, err := testenv.NewPostgres()
		if err != nil {
			return err
		}
		defer pg.Close()
		pgURL = pg.URL
	}
	fmt.Println("starting an embedded NATS JetStream server...")
	ns, err := testenv.NewNATS("127.0.0.1", 0)
	if err != nil {
		return err
	}
	defer ns.Close()
	fmt.Printf("  postgres: %s\n  nats:     %s   (try: nats --server %s stream info FANOUT)\n  logs:     %s\n",
		pgURL, ns.URL, ns.URL, filepath.Join(work, "logs"))

	nc, err := nats.Connect(ns.URL)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	bus, err := fanout.EnsureBus(ctx, js, fanout.DefaultBusConfig())
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		return fmt.Errorf("connect to Postgres: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS items (id bigint PRIMARY KEY, owner int NOT NULL, title text, done bool NOT NULL DEFAULT false)`); err != nil {
		return fmt.Errorf("create demo table: %w", err)
	}
	for _, where := range []string{"owner = 1", "owner = 2", "owner IN (3, 4) AND NOT done", "title LIKE 'urgent%'"} {
		s, err := shapes.Add(ctx, bus, conn, "public.items", where, nil)
		if err != nil {
			return fmt.Errorf("add demo shape %q: %w", where, err)
		}
		fmt.Printf("  shape %s: items WHERE %s   (fanoutctl --nats.url %s shape rows %s)\n", s.Handle, where, ns.URL, s.Handle)
	}

	env := append(os.Environ(),
		"FANOUT_POSTGRES_URL="+pgURL,
		"FANOUT_NATS_URL="+ns.URL,
		"FANOUT_STORAGE_DIR="+filepath.Join(work, "shapes"),
		"FANOUT_HTTP_ADDR=127.0.0.1:0",
	)
	var procs []*exec.Cmd
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			done := make(chan struct{})
			go func() { p.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				p.Process.Kill()
			}
		}
		fmt.Println("stopped all services")
	}()
	for _, svc := range []struct{ name, bin, id string }{
		{"flushd", "flushd", ""}, {"consumer-1", "consumer", "consumer-1"}, {"consumer-2", "consumer", "consumer-2"}, {"ingest", "ingest", ""},
	} {
		cmd, err := startService(work, svc.name, svc.bin, svc.id, env)
		if err != nil {
			return err
		}
		procs = append(procs, cmd)
	}

	var changes atomic.Int64
	loadDone := make(chan error, 1)
	go func() { loadDone <- demoLoad(ctx, pgURL, &changes) }()
	fmt.Println("running; Ctrl-C stops everything")
	return progress(ctx, bus, pgURL, &changes, loadDone)
}

func startService(work, name, bin, id string, env []string) (*exec.Cmd, error) {
	path, err := filepath.Abs(filepath.Join("bin", bin))
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(work, "logs", name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path)
	cmd.Env = env
	if id != "" {
		cmd.Env = append(append([]string(nil), env...), "FANOUT_CONSUMER_ID="+id)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches devstack only; it stops them in order
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (run make build first): %w", path, err)
	}
	return cmd, nil
}

// demoLoad inserts, moves and deletes items at a modest rate until ctx ends.
func demoLoad(ctx context.Context, url string, changes *atomic.Int64) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	titles := []string{"urgent: fix", "later", "review", "urgent: call"}
	for id := int64(1); ctx.Err() == nil; id++ {
		batch := &pgx.Batch{}
		batch.Queue(`INSERT INTO items (id, owner, title) VALUES ($1, $2, $3)`, id, rand.IntN(6), titles[rand.IntN(len(titles))])
		if id > 10 {
			batch.Queue(`UPDATE items SET owner = $2, done = NOT done WHERE id = $1`, id-rand.Int64N(10), rand.IntN(6))
		}
		if id > 100 && id%5 == 0 {
			batch.Queue(`DELETE FROM items WHERE id = $1`, id-100)
		}
		if err := conn.SendBatch(ctx, batch).Close(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("demo load: %w", err)
		}
		changes.Add(int64(batch.Len()))
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

func progress(ctx context.Context, bus *fanout.Bus, pgURL string, changes *atomic.Int64, loadDone <-chan error) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := int64(0)
	for {
		select {
		case <-ctx.Done():
			fmt.Println("\nstopping...")
			return nil
		case err := <-loadDone:
			return err
		case <-tick.C:
		}
		n := changes.Load()
		safe := "-"
		if e, err := bus.State.Get(ctx, fanout.KeySafeLSN); err == nil {
			if s, err := fanout.DecodeSafeLSN(e.Value()); err == nil {
				safe = s.LSN.String()
			}
		}
		retained := "-"
		if slot, err := flushd.SlotLag(ctx, pgURL, "fanout"); err == nil {
			retained = fmt.Sprintf("%.1f MB", float64(slot.LagBytes)/(1<<20))
		}
		pending := uint64(0)
		if info, err := bus.Stream.Info(ctx); err == nil {
			pending = info.State.Msgs
		}
		owners := map[string]int{}
		if keys, err := bus.Bindings.ListKeys(ctx); err == nil {
			for k := range keys.Keys() {
				if e, err := bus.Bindings.Get(ctx, k); err == nil {
					if b, err := fanout.DecodeBinding(e.Value()); err == nil {
						owners[b.Consumer]++
					}
				}
			}
		}
		var bound []string
		for c, k := range owners {
			bound = append(bound, fmt.Sprintf("%s:%d", c, k))
		}
		sort.Strings(bound)
		fmt.Printf("%s  %5d changes/s  safe LSN %-12s retained WAL %-9s pending fragments %-5d consumers %s\n",
			time.Now().Format("15:04:05"), n-last, safe, retained, pending, strings.Join(bound, " "))
		last = n
	}
}
