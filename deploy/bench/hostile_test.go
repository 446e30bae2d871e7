package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout/testenv"
)

// BenchmarkShapeAPIUnderShapeFlood is guarantee 8 under load: 8 clients
// ask for 10,000 distinct new shapes in one minute (none retries) while
// 200 live clients read an existing shape that receives 20 commits a
// second, and a well-behaved client asks for a new shape every 5 s,
// waiting what each 503's retry-after says. Measured: the existing
// shape's commit-to-client latency (target p99 < 250 ms), whether a live
// reader was ever refused for longer than its retry-after, how long the
// well-behaved client waited, how the flood was answered, and the slot's
// retained WAL once it is over (target under one segment).
// FANOUT_BENCH_SCALE=N divides the flood (and its minute) by N.
func BenchmarkShapeAPIUnderShapeFlood(b *testing.B) {
	requests := 10_000 / scale()
	flood := time.Duration(int64(time.Minute) * int64(requests) / 10_000)
	const readers, perSec = 200, 20
	p := newPipe(b, 0)
	p.startAll()
	p.start("c3", "consumer", "FANOUT_CONSUMER_ID=c3") // the one that takes snapshots
	testenv.Eventually(b, 2*time.Minute, "c3 /readyz", func() bool { return p.ready("c3") })
	base, _ := p.startShapeAPI()
	ctx := context.Background()
	p.pg.Exec(b, p.conn, `INSERT INTO items SELECT g, g % 100, 'title ' || g FROM generate_series(1, 1000) g`)

	// The existing shape and its live readers.
	existing := url.Values{"table": {"items"}, "where": {"owner = -1"}}
	reader := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: readers + 10}}
	handle, offset, _, err := syncShape(ctx, reader, base, existing)
	if err != nil {
		b.Fatal(err)
	}
	var (
		seenMu       sync.Mutex
		seen         = map[int64]time.Time{}
		liveRefused  atomic.Int64
		worstRefusal atomic.Int64 // longest time a reader stayed refused, less its retry-after, ns
		liveErrors   atomic.Int64
	)
	rctx, stopReaders := context.WithCancel(ctx)
	var readersWG sync.WaitGroup
	for range readers {
		readersWG.Go(func() {
			off, cursor := offset, ""
			var refusedSince time.Time
			var told time.Duration
			for rctx.Err() == nil {
				q := url.Values{"table": {"items"}, "where": {"owner = -1"}, "offset": {off}, "handle": {handle}, "live": {"true"}, "cursor": {cursor}}
				r, err := getShape(rctx, reader, base, q)
				switch {
				case rctx.Err() != nil:
					return
				case err != nil:
					liveErrors.Add(1)
					time.Sleep(100 * time.Millisecond)
					continue
				case r.status == http.StatusServiceUnavailable:
					liveRefused.Add(1)
					if refusedSince.IsZero() {
						refusedSince = time.Now()
					}
					wait, _ := strconv.Atoi(r.header.Get("retry-after"))
					told = time.Duration(max(wait, 1)) * time.Second
					time.Sleep(told)
					continue
				case r.status != http.StatusOK:
					liveErrors.Add(1)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				if !refusedSince.IsZero() {
					if over := time.Since(refusedSince) - told; over > time.Duration(worstRefusal.Load()) {
						worstRefusal.Store(int64(over))
					}
					refusedSince = time.Time{}
				}
				noteInserts(r.body, time.Now(), &seenMu, seen)
				off, cursor = r.offset, r.cursor
			}
		})
	}
	testenv.Eventually(b, 2*time.Minute, fmt.Sprintf("%d live requests to be held", readers), func() bool {
		return p.metric("shapeapi", "fanout_shapeapi_held_requests") >= readers
	})

	// The flood: 8 clients, open loop, no retries.
	var served, refused, otherCodes, failed atomic.Int64
	floodCtx, stopFlood := context.WithTimeout(ctx, flood+2*time.Minute)
	defer stopFlood()
	clients := make([]*http.Client, 8)
	for i := range clients {
		clients[i] = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 90 * time.Second}
	}
	var floodWG sync.WaitGroup
	inFlight := make(chan struct{}, 1024)
	floodStart := time.Now()
	floodWG.Go(func() {
		tick := time.NewTicker(flood / time.Duration(requests))
		defer tick.Stop()
		for i := range requests {
			<-tick.C
			inFlight <- struct{}{}
			floodWG.Go(func() {
				defer func() { <-inFlight }()
				q := url.Values{"table": {"items"}, "where": {fmt.Sprintf("owner = %d", 1000+i)}, "offset": {"-1"}}
				r, err := getShape(floodCtx, clients[i%8], base, q)
				switch {
				case err != nil:
					failed.Add(1)
				case r.status == http.StatusOK:
					served.Add(1)
				case r.status == http.StatusServiceUnavailable:
					refused.Add(1)
				default:
					otherCodes.Add(1)
				}
			})
		}
	})

	// A well-behaved client's new shapes, every 5 s, waiting as told.
	type legit struct {
		took     time.Duration
		refusals int
		worst    time.Duration // longest refusal streak less the retry-after last given
	}
	var legitMu sync.Mutex
	var legits []legit
	legitCtx, stopLegit := context.WithCancel(ctx)
	var legitWG sync.WaitGroup
	legitWG.Go(func() {
		client := &http.Client{Timeout: 90 * time.Second}
		for k := 0; legitCtx.Err() == nil; k++ {
			q := url.Values{"table": {"items"}, "where": {fmt.Sprintf("owner = %d", -1000-k)}, "offset": {"-1"}}
			start, l := time.Now(), legit{}
			for legitCtx.Err() == nil {
				r, err := getShape(legitCtx, client, base, q)
				if err == nil && r.status == http.StatusOK {
					l.took = time.Since(start)
					break
				}
				l.refusals++
				wait := 1
				if err == nil {
					wait, _ = strconv.Atoi(r.header.Get("retry-after"))
				}
				told := time.Duration(max(wait, 1)) * time.Second
				time.Sleep(told)
				l.worst = max(l.worst, time.Since(start)-told)
			}
			legitMu.Lock()
			legits = append(legits, l)
			legitMu.Unlock()
			select {
			case <-legitCtx.Done():
			case <-time.After(5 * time.Second):
			}
		}
	})

	// Commits to the existing shape meanwhile.
	committed := map[int64]time.Time{}
	tick := time.NewTicker(time.Second / perSec)
	next := int64(1_000_000)
	for time.Since(floodStart) < flood {
		<-tick.C
		if _, err := p.conn.Exec(ctx, `INSERT INTO items VALUES ($1, -1, 'live')`, next); err != nil {
			b.Fatal(err)
		}
		committed[next] = time.Now()
		next++
	}
	tick.Stop()
	stopLegit()
	legitWG.Wait()
	floodWG.Wait()
	floodTook := time.Since(floodStart)
	lat := commitToClient(b, committed, &seenMu, seen)
	stopReaders()
	readersWG.Wait()
	addRow("shape flood: existing shape's commit-to-client p50 / p99", pct(lat, 50)+" / "+pct(lat, 99), "",
		fmt.Sprintf("%d readers held, %d commits/s, while %d new-shape requests came in %s; target p99 < 250 ms", readers, perSec, requests, flood))
	addRow("shape flood: live readers refused / longest past retry-after", fmt.Sprintf("%d / %s", liveRefused.Load(), time.Duration(worstRefusal.Load()).Round(time.Millisecond)),
		"", fmt.Sprintf("%d transport errors; target: never refused for longer than retry-after", liveErrors.Load()))
	addRow("shape flood: new-shape requests served / refused (503) / other / failed",
		fmt.Sprintf("%d / %d / %d / %d", served.Load(), refused.Load(), otherCodes.Load(), failed.Load()), "",
		fmt.Sprintf("%d distinct definitions from 8 clients in %s (answered by %s), no retries; api defaults", requests, flood, floodTook.Round(time.Second)))
	var took []time.Duration
	worst, refusals := time.Duration(0), 0
	for _, l := range legits {
		if l.took > 0 {
			took = append(took, l.took)
		}
		worst, refusals = max(worst, l.worst), refusals+l.refusals
	}
	if len(took) > 0 {
		addRow("shape flood: a well-behaved client's new shape, p50 / max wait", pct(took, 50)+" / "+pct(took, 100), "",
			fmt.Sprintf("%d shapes, %d refusals, longest refused past retry-after %s (no per-client fairness: it competes with the flood)",
				len(took), refusals, worst.Round(time.Millisecond)))
	}
	addRow("shape flood: API shapes and shapeapi RSS after", fmt.Sprintf("%.0f shapes, %.0f MiB", p.metric("shapeapi", "fanout_shapeapi_api_shapes"),
		p.rss("shapeapi")/(1<<20)), "", "api.max_shapes 10000, api.max_pending_snapshots 64")

	// WAL: once the flood is over, the slot keeps less than a segment.
	end := p.currentWAL()
	p.waitConfirmed(end, 5*time.Minute)
	var retained int64
	testenv.Eventually(b, 5*time.Minute, "retained WAL under one segment", func() bool {
		retained = int64(p.currentWAL()) - int64(p.lsn(`SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'fanout'`))
		return retained < 16<<20
	})
	addRow("shape flood: retained WAL after", fmt.Sprintf("%.1f MB", float64(retained)/1e6), "", "current - confirmed_flush_lsn of slot fanout; target < 16 MB")
}
