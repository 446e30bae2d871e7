package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout/testenv"
)

// BenchmarkCompaction measures shape log compaction (issue 29), in one run:
//
//   - a 1,000-row shape whose rows are each updated 100 times: its storage
//     against its current rows as JSON (target at most 3x), and the bytes a
//     new client downloads from offset -1 until up-to-date (target at most
//     3x the rows' JSON); the time to the first up-to-date of a new client,
//     against a 1,000-row shape with no history;
//   - the pipeline's throughput on an update workload with compaction
//     running against without (target at least 0.9).
func BenchmarkCompaction(b *testing.B) {
	// Rows of the bench table as they are (about 45 bytes of JSON), and
	// with a 200-byte title: Electric's message around a row (key,
	// operation, relation) is about 115 bytes whatever the row.
	b.Run("history_short_rows", func(b *testing.B) { benchCompactedHistory(b, 0) })
	b.Run("history_200_byte_rows", func(b *testing.B) { benchCompactedHistory(b, 200) })
	b.Run("throughput", benchCompactionThroughput)
}

// compactionBenchEnv: compaction as configured by default, but for
// min_interval (0: the shape is compacted as soon as its log reaches the
// ratio, as a shape whose updates are spread over more than a minute is)
// and retain (10s: the replaced generations' removal is measured too).
var compactionBenchEnv = []string{"FANOUT_STORAGE_COMPACTION_MIN_INTERVAL=0s", "FANOUT_STORAGE_COMPACTION_RETAIN=10s"}

func benchCompactedHistory(b *testing.B, pad int) {
	ctx := context.Background()
	label := "short rows"
	if pad > 0 {
		label = fmt.Sprintf("%d-byte titles", pad)
	}
	padding := fmt.Sprintf("repeat('x', %d)", pad)
	const rows, updates = 1000, 100
	p := newPipe(b, 0, append([]string{"FANOUT_FLUSHD_POLL_INTERVAL=50ms", "FANOUT_API_STALE_AGE=5s", "FANOUT_API_MAX_AGE=1s"}, compactionBenchEnv...)...)
	p.start("flushd", "flushd")
	p.start("c1", "consumer", "FANOUT_CONSUMER_ID=c1")
	p.start("ingest", "ingest")
	for _, name := range []string{"flushd", "c1", "ingest"} {
		testenv.Eventually(b, 2*time.Minute, name+" /readyz", func() bool { return p.ready(name) })
	}
	base, _ := p.startShapeAPI()
	client := &http.Client{}
	// Both shapes are made through the API (their handles are its own)
	// while the table is empty.
	hist, fresh := url.Values{"table": {"items"}, "where": {"owner = 0"}}, url.Values{"table": {"items"}, "where": {"owner = 1"}}
	histHandle, _, _, err := syncShape(ctx, client, base, hist)
	if err != nil {
		b.Fatal(err)
	}
	// A 1,000-row shape, then 100 updates of each row (100 transactions
	// of 1,000 updates), with the other shape's 1,000 rows inserted once.
	p.pg.Exec(b, p.conn, fmt.Sprintf(`INSERT INTO items SELECT g, 0, 'title ' || g || %s FROM generate_series(1, %d) g`, padding, rows))
	start := time.Now()
	for k := 1; k <= updates; k++ {
		p.pg.Exec(b, p.conn, fmt.Sprintf(`UPDATE items SET title = 'title %d of ' || id || %s WHERE owner = 0`, k, padding))
	}
	p.pg.Exec(b, p.conn, fmt.Sprintf(`INSERT INTO items SELECT g, 1, 'title 100 of ' || g || %s FROM generate_series(%d, %d) g`, padding, rows+1, 2*rows))
	p.waitConfirmed(p.currentWAL(), 10*time.Minute)
	loadTime := time.Since(start)
	p.awaitCompactionIdle()
	dir := filepath.Join(p.dir, "shapes")
	var jsonBytes int64
	if err := p.conn.QueryRow(ctx, `SELECT sum(octet_length(row_to_json(i)::text)) FROM items i WHERE owner = 0`).Scan(&jsonBytes); err != nil {
		b.Fatal(err)
	}
	settled, err := shapelog.ShapeSizes(dir, histHandle, true)
	if err != nil {
		b.Fatal(err)
	}
	// The replaced generations go after 2 x retain.
	var expired shapelog.Sizes
	testenv.Eventually(b, time.Minute, "the replaced generations to expire", func() bool {
		prev := expired
		expired, err = shapelog.ShapeSizes(dir, histHandle, true)
		// Removed: not in the chain, and their files gone (a manifest
		// goes first, then the folder).
		return err == nil && !expired.Superseded && expired.DiskBytes == prev.DiskBytes
	})
	fromAppends := p.metric("c1", "fanout_consumer_changes_persisted_total")
	p.b.Logf("load of %d updates took %s; %s", rows*updates, loadTime.Round(time.Millisecond), p.compactionSummary("c1"))

	// New clients: the shape with a history and the one without.
	newClient := func(def url.Values) (bytes int64, messages int, took time.Duration) {
		times := make([]time.Duration, 0, 5)
		for range 5 {
			start := time.Now()
			_, _, m, n, err := syncShapeSized(ctx, client, base, def)
			if err != nil {
				b.Fatal(err)
			}
			times = append(times, time.Since(start))
			bytes, messages = n, m
		}
		slices.Sort(times)
		return bytes, messages, times[len(times)/2]
	}
	if _, _, _, err := syncShape(ctx, client, base, fresh); err != nil { // made, and its snapshot taken
		b.Fatal(err)
	}
	histBytes, histMsgs, histTime := newClient(hist)
	freshBytes, freshMsgs, freshTime := newClient(fresh)

	ratio := func(n int64) string { return fmt.Sprintf("%.2fx", float64(n)/float64(jsonBytes)) }
	addRow("compaction, "+label+": storage of a 1,000-row shape after 100 updates of each row (current generation)", fmt.Sprintf("%d KiB", (settled.BaseBytes+settled.LogBytes)>>10), ratio(settled.BaseBytes+settled.LogBytes),
		fmt.Sprintf("base %d KiB + log %d KiB, generation %d; the rows as JSON %d KiB; target at most 3x; %.0f changes persisted", settled.BaseBytes>>10, settled.LogBytes>>10, settled.Generation, jsonBytes>>10, fromAppends))
	addRow("compaction, "+label+": the same shape on disk, replaced generations kept (2 x retain)", fmt.Sprintf("%d KiB", settled.DiskBytes>>10), ratio(settled.DiskBytes),
		"right after the load: what a shape holds while the generations its recent offsets name are kept")
	addRow("compaction, "+label+": the same shape on disk once they expired", fmt.Sprintf("%d KiB", expired.DiskBytes>>10), ratio(expired.DiskBytes),
		"bases and logs left: the current generation, plus the initial snapshot's manifest")
	addRow("compaction, "+label+": a new client's download until up-to-date", fmt.Sprintf("%d KiB", histBytes>>10), ratio(histBytes),
		fmt.Sprintf("%d messages (the base's rows, then the log after it); without compaction it is every one of the %d changes; target at most 3x; a shape of the same rows with no history: %d KiB (%s)",
			histMsgs, rows*(updates+1), freshBytes>>10, ratio(freshBytes)))
	addRow("compaction, "+label+": a new client's time to its first up-to-date, shape with 100 updates per row", fmt.Sprintf("%.1f ms", float64(histTime.Microseconds())/1000),
		fmt.Sprintf("%.2f", histTime.Seconds()/freshTime.Seconds()), fmt.Sprintf("median of 5; ratio to the same size of shape with no history: %.1f ms, %d KiB, %d messages",
			float64(freshTime.Microseconds())/1000, freshBytes>>10, freshMsgs))
}

// awaitCompactionIdle waits until c1 compacts nothing and has nothing due.
func (p *pipe) awaitCompactionIdle() {
	p.b.Helper()
	quiet := 0
	testenv.Eventually(p.b, 5*time.Minute, "compaction to settle", func() bool {
		if p.metric("c1", "fanout_consumer_compactions_running") == 0 && p.metric("c1", "fanout_consumer_compactions_queued") == 0 {
			quiet++
		} else {
			quiet = 0
		}
		return quiet >= 10 // about a second of rounds with nothing to do
	})
}

func (p *pipe) compactionSummary(name string) string {
	total := p.metric(name, "fanout_consumer_compaction_switch_seconds_count")
	over := total - p.metric(name, `fanout_consumer_compaction_switch_seconds_bucket{le="0.0128"}`)
	return fmt.Sprintf("%s: compactions done %.0f (skipped %.0f, failed %.0f), %.1f MB of compaction I/O; the time a switch added to a batch: at most %s, over 12.8 ms for %.0f of %.0f (the batches' own persist time: at most %s)",
		name, p.labelled(name, "fanout_consumer_compactions_total", `result="done"`), p.labelled(name, "fanout_consumer_compactions_total", `result="skipped"`),
		p.labelled(name, "fanout_consumer_compactions_total", `result="failed"`), p.metric(name, "fanout_consumer_compaction_io_bytes_total")/1e6,
		p.histogramMax(name, "fanout_consumer_compaction_switch_seconds", 0.0001), over, total,
		p.histogramMax(name, "fanout_consumer_batch_persist_seconds", 0.0005))
}

// labelled reads one labelled sample of a metric (0 if absent).
func (p *pipe) labelled(name, metric, labels string) float64 {
	return p.metric(name, metric+"{"+labels+"}")
}

// histogramMax is the upper bound of the bucket of histogram metric
// (exponential buckets from first, doubling) holding its largest sample.
func (p *pipe) histogramMax(name, metric string, first float64) string {
	total := p.metric(name, metric+"_count")
	if total == 0 {
		return "(none)"
	}
	for le := first; le < 100; le *= 2 {
		if p.metric(name, metric+`_bucket{le="`+strconv.FormatFloat(le, 'g', -1, 64)+`"}`) >= total {
			return time.Duration(le * float64(time.Second)).String()
		}
	}
	return "over 100s"
}

// benchCompactionThroughput runs the same update workload through the
// pipeline with compaction off, on with the default settings, and on with
// min_interval 0 (every shape compacted each time its log reaches the
// ratio: the most compaction work the policy allows), twice each,
// interleaved, and compares the best run of each (this machine is shared:
// a run is slowed by what else runs, never sped up). As in
// BenchmarkThroughput, the workload is committed while ingest is stopped
// and the pipeline's time is from SIGCONT to confirmed_flush_lsn at its end.
func benchCompactionThroughput(b *testing.B) {
	const shapes = 100
	rows := 20_000 / scale()
	rounds := 20
	configs := []struct {
		name string
		env  []string
	}{
		{"compaction off", []string{"FANOUT_STORAGE_COMPACTION_ENABLED=false"}},
		{"compaction on (defaults)", nil},
		{"compaction on, min_interval 0", []string{"FANOUT_STORAGE_COMPACTION_MIN_INTERVAL=0s"}},
	}
	best := make([]float64, len(configs))
	cpu := make([]float64, len(configs)) // the consumers' CPU per change, least of the runs
	runs := make([][]string, len(configs))
	notes := make([]string, len(configs))
	for range 2 {
		for i, cfg := range configs {
			r, consumerCPU, note := runCompactionWorkload(b, shapes, rows, rounds, cfg.env, i > 0)
			runs[i] = append(runs[i], fmt.Sprintf("%.0f", r))
			if r > best[i] {
				best[i], notes[i] = r, note
			}
			if cpu[i] == 0 || consumerCPU < cpu[i] {
				cpu[i] = consumerCPU
			}
		}
	}
	for i, cfg := range configs {
		ratio, cpuRatio := "", ""
		note := fmt.Sprintf("best of 2 runs (%s changes/s): %d updates over %d shapes in 1,000-row transactions%s",
			strings.Join(runs[i], ", "), rows*rounds, shapes, notes[i])
		if i > 0 {
			ratio, cpuRatio = fmt.Sprintf("%.2f", best[i]/best[0]), fmt.Sprintf("%.2f", cpu[i]/cpu[0])
			note += "; ratio to compaction off, target at least 0.9"
		}
		addRow("compaction: pipeline throughput, "+cfg.name, fmt.Sprintf("%.0f changes/s", best[i]), ratio, note)
		addRow("compaction: consumers' CPU per change, "+cfg.name, fmt.Sprintf("%.1f µs", cpu[i]*1e6), cpuRatio,
			"the least of the 2 runs, compactions included; ratio to compaction off")
	}
}

// runCompactionWorkload runs the update workload once on a new pipeline
// with env, and returns its rate, the consumers' CPU seconds per change
// while catching up, and what compaction did.
func runCompactionWorkload(b *testing.B, shapes, rows, rounds int, env []string, compacting bool) (float64, float64, string) {
	p := newPipe(b, shapes, append([]string{"FANOUT_FLUSHD_POLL_INTERVAL=50ms"}, env...)...)
	p.start("flushd", "flushd")
	p.start("c1", "consumer", "FANOUT_CONSUMER_ID=c1")
	p.start("c2", "consumer", "FANOUT_CONSUMER_ID=c2")
	p.start("ingest", "ingest")
	for _, name := range []string{"flushd", "c1", "c2", "ingest"} {
		testenv.Eventually(b, 2*time.Minute, name+" /readyz", func() bool { return p.ready(name) })
	}
	dir := filepath.Join(p.dir, "shapes")
	testenv.Eventually(b, 5*time.Minute, "every shape's snapshot", func() bool {
		for i := range shapes {
			if s, err := shapelog.CurrentSnapshot(dir, fmt.Sprintf("bench%06d", i)); err != nil || s == nil {
				return false
			}
		}
		return true
	})
	p.insert(0, rows, 1000)
	p.waitConfirmed(p.currentWAL(), 10*time.Minute)

	ingest := p.procs["ingest"]
	ingest.Signal(syscall.SIGSTOP)
	for k := range rounds {
		for id := 0; id < rows; id += 1000 {
			p.pg.Exec(b, p.conn, fmt.Sprintf(`UPDATE items SET title = 'round %d of ' || id WHERE id >= %d AND id < %d`, k, id, id+1000))
		}
	}
	end := p.currentWAL()
	before := p.cpuNow()
	ingest.Signal(syscall.SIGCONT)
	start := time.Now()
	p.waitConfirmed(end, 30*time.Minute)
	elapsed := time.Since(start)
	after := p.cpuNow()
	p.checkRowCounts()
	note := fmt.Sprintf(", %.1fs", elapsed.Seconds())
	if compacting {
		note += "; " + p.compactionSummary("c1") + "; " + p.compactionSummary("c2")
	}
	return rate(rows*rounds, elapsed), (after["consumers"] - before["consumers"]) / float64(rows*rounds), note
}
