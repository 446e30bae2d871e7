// Command devstack is `make run`: the whole pipeline on one machine. It
// starts an embedded NATS JetStream server, a private Postgres cluster in a
// scratch folder (or uses FANOUT_POSTGRES_URL), flushd, two consumers,
// ingest and, when it is built, shapeapi from ./bin, adds a few shapes on a
// demo table, runs a demo load and prints progress every second, with
// commands that show the demo shapes.
// Ctrl-C, SIGTERM or closing the terminal (SIGHUP) stops everything and
// exits 0.
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
	restore := takeTerminal()
	err := run()
	restore()
	if err != nil {
		fmt.Fprintln(os.Stderr, "make run:", err)
		os.Exit(1)
	}
}

// stopSignals end the demo: Ctrl-C, Ctrl-\, kill, and a closed terminal
// (SIGHUP). The services and Postgres run in their own process groups, so
// devstack stops them itself, whichever signal came.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), stopSignals...)
	defer stop()
	// A closed terminal or pipe must not kill devstack before it has
	// stopped what it started: writes to stdout then fail, and are ignored.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	suspend := make(chan os.Signal, 1)
	signal.Notify(suspend, syscall.SIGTSTP)
	defer func() { signal.Stop(suspend); close(suspend) }()
	go func() {
		for range suspend {
			fmt.Println("\n(make run cannot be suspended: Ctrl-C stops it)")
		}
	}()

	root, err := os.Getwd()
	if err != nil {
		return err
	}
	work := filepath.Join(root, ".run")
	bin := filepath.Join(root, "bin")
	os.RemoveAll(work)
	if err := os.MkdirAll(filepath.Join(work, "logs"), 0o755); err != nil {
		return err
	}
	storage := filepath.Join(work, "shapes")

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
		defer func() {
			pg.Close()
			fmt.Println("stopped Postgres")
		}()
		pgURL = pg.URL
		fmt.Printf("  postgres: %s   (data in %s)\n", pgURL, pg.DataDir)
	} else {
		fmt.Printf("  postgres: %s\n", pgURL)
	}
	fmt.Println("starting an embedded NATS JetStream server...")
	ns, err := testenv.NewNATS("127.0.0.1", 0)
	if err != nil {
		return err
	}
	defer ns.Close()
	fmt.Printf("  nats:     %s   (try: nats --server %s stream info FANOUT)\n  logs:     %s\n",
		ns.URL, ns.URL, filepath.Join(work, "logs"))

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
	var demo []demoShape
	for _, where := range []string{"owner = 1", "owner = 2", "owner IN (3, 4) AND NOT done", "title LIKE 'urgent%'"} {
		s, err := shapes.Add(ctx, bus, conn, "public.items", where, nil, nil)
		if err != nil {
			return fmt.Errorf("add demo shape %q: %w", where, err)
		}
		demo = append(demo, demoShape{handle: s.Handle, table: "public.items", where: where})
	}

	env := append(os.Environ(),
		"FANOUT_POSTGRES_URL="+pgURL,
		"FANOUT_NATS_URL="+ns.URL,
		"FANOUT_STORAGE_DIR="+storage,
		"FANOUT_HTTP_ADDR=127.0.0.1:0",
	)
	var procs []*exec.Cmd
	defer func() { stopServices(procs) }()
	for _, svc := range []struct{ name, bin, id string }{
		{"flushd", "flushd", ""}, {"consumer-1", "consumer", "consumer-1"}, {"consumer-2", "consumer", "consumer-2"}, {"ingest", "ingest", ""},
	} {
		cmd, err := startService(work, bin, svc.name, svc.bin, svc.id, env)
		if err != nil {
			return err
		}
		procs = append(procs, cmd)
	}
	api, err := startAPI(ctx, work, bin, env)
	if err != nil {
		return err
	}
	if api.cmd != nil {
		procs = append(procs, api.cmd)
	}

	var changes atomic.Int64
	loadDone := make(chan error, 1)
	go func() { loadDone <- demoLoad(ctx, pgURL, &changes) }()

	ctl := fanoutctl{bin: filepath.Join(bin, "fanoutctl"), natsURL: ns.URL, storage: storage}
	fmt.Println("demo shapes (every command below runs as printed, from any directory):")
	for _, d := range demo {
		fmt.Printf("  shape %s: items WHERE %s\n", d.handle, d.where)
		if api.base != "" {
			fmt.Printf("    rows:  %s\n", api.snapshotCommand(d))
		}
		fmt.Printf("    rows:  %s\n", ctl.rowsCommand(d.handle))
	}
	watch := demo[0]
	why := "bin/shapeapi is not built"
	if api.base != "" {
		// The API snapshots a shape when it is first asked for: ask once the
		// demo load has put rows in it, so that offset=-1 shows some.
		awaitRows(ctx, conn, watch)
		live, err := api.liveCommand(ctx, watch)
		if err == nil {
			fmt.Printf("watch items WHERE %s change live, in another terminal:\n  %s\n", watch.where, live)
		} else {
			why = fmt.Sprintf("shapeapi did not serve it: %v; see %s", err, filepath.Join(work, "logs", "shapeapi.log"))
			api.base = ""
		}
	} else if api.cmd != nil {
		why = "shapeapi is not ready; see " + filepath.Join(work, "logs", "shapeapi.log")
	}
	if api.base == "" && ctx.Err() == nil {
		fmt.Printf("watch shape %s (items WHERE %s) change, in another terminal (%s, so this polls fanoutctl every second):\n  %s\n",
			watch.handle, watch.where, why, ctl.watchCommand(watch.handle))
	}
	fmt.Println("running; Ctrl-C (or closing this terminal) stops everything")
	return progress(ctx, bus, pgURL, &changes, loadDone)
}

// awaitRows waits, up to 10 s, until the shape's query has a row.
func awaitRows(ctx context.Context, conn *pgx.Conn, d demoShape) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var found bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+d.table+" WHERE "+d.where+")").Scan(&found); err == nil && found {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// demoShape is one shape make run adds, and how to ask for it.
type demoShape struct{ handle, table, where string }

// stopServices sends SIGTERM to every service (they drain), newest first,
// and kills one that has not exited after 15 s.
func stopServices(procs []*exec.Cmd) {
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
			<-done
		}
	}
	fmt.Println("stopped all services")
}

// fanoutctl prints fanoutctl command lines with every flag they need.
type fanoutctl struct{ bin, natsURL, storage string }

func (c fanoutctl) rowsCommand(handle string) string {
	return strings.Join([]string{shellQuote(c.bin), "--nats.url", shellQuote(c.natsURL), "--storage.dir", shellQuote(c.storage), "shape", "rows", handle}, " ")
}

// watchCommand shows the shape's three highest keys every second: the demo
// load inserts ever higher ids, so new rows appear there.
func (c fanoutctl) watchCommand(handle string) string {
	return "while :; do " + c.rowsCommand(handle) + " | tail -n 3; echo; sleep 1; done"
}

// shellQuote quotes s for sh when it holds anything but safe characters.
func shellQuote(s string) string {
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:@=,+%", r)) {
			safe = false
			break
		}
	}
	if safe && s != "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func startService(work, binDir, name, bin, id string, env []string) (*exec.Cmd, error) {
	path := filepath.Join(binDir, bin)
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
	err = cmd.Start()
	logFile.Close() // the service has its own copy
	if err != nil {
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
