package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout/testenv"
)

// BenchmarkPGliteSync measures what a pglite-sync application waits for:
// from a commit in Postgres to the row being visible in PGlite, with
// syncShapesToTables over two shapes (transactions are applied once every
// shape's up-to-date watermark passed them, so a watermark that lags what
// was served elsewhere shows here as a stall of a long poll). 200
// transactions a second for 15 s, each inserting into one of the two
// tables, every fifth into both.
func BenchmarkPGliteSync(b *testing.B) {
	const perSec, secs = 200, 15
	p := newPipe(b, 0)
	p.pg.Exec(b, p.conn, `CREATE TABLE acct (id int PRIMARY KEY, v text); CREATE TABLE entry (id int PRIMARY KEY, v text)`)
	p.start("flushd", "flushd")
	p.start("c1", "consumer", "FANOUT_CONSUMER_ID=c1")
	p.start("ingest", "ingest")
	for _, name := range []string{"flushd", "c1", "ingest"} {
		testenv.Eventually(b, 2*time.Minute, name+" /readyz", func() bool { return p.ready(name) })
	}
	api, _ := p.startShapeAPI()

	var mu sync.Mutex
	visible := map[string]time.Time{} // "<table>/<id>" -> when PGlite showed it
	ready := make(chan struct{})
	shape := func(table string) map[string]any {
		return map[string]any{"params": map[string]any{"table": table}, "table": table, "primaryKey": []string{"id"}}
	}
	args, _ := json.Marshal(map[string]any{"url": api, "track": "id",
		"ddl":    `CREATE TABLE acct (id int PRIMARY KEY, v text); CREATE TABLE entry (id int PRIMARY KEY, v text);`,
		"shapes": map[string]any{"acct": shape("acct"), "entry": shape("entry")}})
	cmd := exec.Command("node", "pglite.mjs", string(args))
	cmd.Dir = electricDir(b)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			var ev struct {
				Event   string `json:"event"`
				At      int64  `json:"at"`
				Table   string `json:"table"`
				IDs     []int  `json:"ids"`
				Message string `json:"message"`
			}
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue
			}
			switch ev.Event {
			case "initial":
				close(ready)
			case "visible":
				mu.Lock()
				for _, id := range ev.IDs {
					visible[fmt.Sprint(ev.Table, "/", id)] = time.UnixMilli(ev.At)
				}
				mu.Unlock()
			case "error":
				fmt.Fprintln(os.Stderr, "pglite.mjs:", sc.Text())
			}
		}
		cmd.Wait()
	}()
	b.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); <-done })
	select {
	case <-ready:
	case <-time.After(2 * time.Minute):
		b.Fatal("pglite-sync's initial sync did not complete")
	}

	ctx := context.Background()
	committed := map[string]time.Time{}
	tick := time.NewTicker(time.Second / perSec)
	for i := range perSec * secs {
		<-tick.C
		var sql string
		var keys []string
		switch {
		case i%5 == 4:
			sql = fmt.Sprintf(`BEGIN; INSERT INTO acct VALUES (%[1]d, 'x'); INSERT INTO entry VALUES (%[1]d, 'x'); COMMIT`, i)
			keys = []string{fmt.Sprint("acct/", i), fmt.Sprint("entry/", i)}
		case i%2 == 0:
			sql = fmt.Sprintf(`INSERT INTO acct VALUES (%d, 'x')`, i)
			keys = []string{fmt.Sprint("acct/", i)}
		default:
			sql = fmt.Sprintf(`INSERT INTO entry VALUES (%d, 'x')`, i)
			keys = []string{fmt.Sprint("entry/", i)}
		}
		if _, err := p.conn.Exec(ctx, sql); err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		for _, k := range keys {
			committed[k] = now
		}
	}
	tick.Stop()
	testenv.Eventually(b, 2*time.Minute, "every committed row to be visible in PGlite", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for k := range committed {
			if _, ok := visible[k]; !ok {
				return false
			}
		}
		return true
	})
	var lat []time.Duration
	stalls := 0
	mu.Lock()
	for k, at := range committed {
		d := visible[k].Sub(at)
		lat = append(lat, d)
		if d > time.Second {
			stalls++
		}
	}
	mu.Unlock()
	slices.Sort(lat)
	addRow("pglite-sync commit-to-visible p50 / p99 (two shapes)", pct(lat, 50)+" / "+pct(lat, 99), "",
		fmt.Sprintf("%d transactions/s for %d s, one table each (every fifth both), syncShapesToTables; %d rows over 1 s; target p99 < 250 ms", perSec, secs, stalls))
}

// electricDir is deploy/e2e/electric, where `make e2e-deps` installed the
// Electric clients from the lockfile.
func electricDir(b testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "e2e", "electric")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@electric-sql", "pglite-sync")); err != nil {
		b.Fatalf("the Electric clients are not installed in %s: run `make e2e-deps` (npm ci there)", dir)
	}
	return dir
}
