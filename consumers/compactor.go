package consumers

// The compactor compacts the shape logs of the partitions this consumer
// owns, in the background (shapelog.FileStore.Compact does one shape): the
// logs live here, and the switch to a new generation's log goes through
// the partition's writer. A shape is looked at when its log grew (the
// workers tell it what they persisted: no timer scans the logs), compacted
// when the policy says so (compaction_policy.go), at most
// storage.compaction.max_concurrent at a time, with its disk I/O bounded by
// max_bytes_per_second; replaced generations are removed after 2 x retain.
// Appends wait for a compaction only while it switches the writer to the
// new log: a copy of what was appended meanwhile and one fsync.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
)

// measurePerRound bounds the shapes measured (their generation read, their
// log stat'ed) per round: a takeover of a partition of thousands of shapes
// measures them over a few seconds.
const measurePerRound = 512

// compactRound is how often the compactor looks at the shapes due when
// nothing wakes it (shapes waiting for min_interval, expiries).
const compactRound = time.Second

type compactor struct {
	cfg        CompactionConfig
	policy     compactionPolicy
	opts       shapelog.CompactOptions
	store      *shapelog.FileStore
	partitions int
	log        *slog.Logger
	m          *compactionMetrics
	limiter    *rate.Limiter // nil: I/O unbounded

	mu      sync.Mutex
	writers map[int]shapelog.Writer // partition -> its writer, while a worker owns it
	shapes  map[string]*shapeTrack
	due     map[string]bool // shapes to look at in the next round
	sweep   map[int]bool    // partitions taken since the last round: their shapes are measured once
	status  fanout.CompactionStatus
	started map[string]time.Time // compactions running, since when
	jobs    sync.WaitGroup
	wake    chan struct{}
}

// shapeTrack is what the compactor knows of one shape of a partition it owns.
type shapeTrack struct {
	partition int
	measured  bool
	size      shapeSize
	logAt     int64 // look again once the log reaches this
	running   bool
	expireAt  time.Time // when a replaced generation is due for removal (zero: none)
}

func newCompactor(cfg CompactionConfig, snapshot fanoutChunks, store *shapelog.FileStore, partitions int, reg prometheus.Registerer, log *slog.Logger) *compactor {
	c := &compactor{
		cfg: cfg, policy: newCompactionPolicy(cfg), store: store, partitions: partitions,
		log: log.With("component", "compaction"), m: newCompactionMetrics(reg),
		writers: map[int]shapelog.Writer{}, shapes: map[string]*shapeTrack{}, due: map[string]bool{},
		sweep: map[int]bool{}, started: map[string]time.Time{}, wake: make(chan struct{}, 1),
	}
	if cfg.MaxBytesPerSecond > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(cfg.MaxBytesPerSecond), ioBurst)
	}
	c.opts = shapelog.CompactOptions{ChunkRows: snapshot.rows, ChunkBytes: snapshot.bytes, Retain: cfg.Retain,
		IO: c.io, Fault: killSeam(os.Getenv(killSeamEnv), c.log)}
	return c
}

// fanoutChunks are the chunk bounds of bases (snapshot.chunk_rows and
// snapshot.chunk_bytes).
type fanoutChunks struct{ rows, bytes int }

// ioBurst is the most I/O the limiter lets through at once.
const ioBurst = 1 << 20

// io accounts n bytes of compaction I/O, waiting as max_bytes_per_second
// says; it also ends a compaction whose context ended.
func (c *compactor) io(ctx context.Context, n int) error {
	c.m.ioBytes.Add(float64(n))
	if c.limiter == nil {
		return ctx.Err()
	}
	for n > 0 {
		k := min(n, ioBurst)
		if err := c.limiter.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// attach makes w the writer compactions of partition's shapes switch
// through, and has the partition's shapes measured once.
func (c *compactor) attach(partition int, w shapelog.Writer) {
	c.mu.Lock()
	c.writers[partition] = w
	c.sweep[partition] = true
	c.mu.Unlock()
	c.signal()
}

// detach forgets partition's writer before it closes: a compaction in
// flight fails its switch and leaves the log as it was.
func (c *compactor) detach(partition int, w shapelog.Writer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.writers[partition] == w {
		delete(c.writers, partition)
	}
	delete(c.sweep, partition)
	for h, t := range c.shapes {
		if t.partition == partition && !t.running {
			delete(c.shapes, h)
			delete(c.due, h)
		}
	}
}

// forget drops a removed shape.
func (c *compactor) forget(handle string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.shapes[handle]; t != nil && !t.running {
		delete(c.shapes, handle)
	}
	delete(c.due, handle)
}

// observe is told what a worker persisted: the logs it grew. Cheap (map
// updates): it runs on the worker's path between persist and ack.
func (c *compactor) observe(frags []*fanout.Fragment) {
	woken := false
	c.mu.Lock()
	for _, f := range frags {
		t := c.shapes[f.Shape]
		if t == nil {
			t = &shapeTrack{partition: fanout.Partition(f.Shape, c.partitions)}
			c.shapes[f.Shape] = t
		}
		wire, _ := f.Wire()
		t.size.logBytes += int64(len(wire)) + shapelog.RecordOverhead
		if (!t.measured || t.size.logBytes >= t.logAt) && !c.due[f.Shape] {
			c.due[f.Shape] = true
			woken = true
		}
	}
	c.mu.Unlock()
	if woken {
		c.signal()
	}
}

func (c *compactor) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// run compacts until ctx ends, then waits for the compactions running.
func (c *compactor) run(ctx context.Context) {
	c.log.Info("shape log compaction on", "retain", c.cfg.Retain, "ratio", c.cfg.Ratio, "min_log_bytes", c.cfg.MinLogBytes,
		"min_interval", c.cfg.MinInterval, "max_concurrent", c.cfg.MaxConcurrent, "max_bytes_per_second", c.cfg.MaxBytesPerSecond)
	t := time.NewTicker(compactRound)
	defer t.Stop()
	defer c.jobs.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-t.C:
		}
		c.round(ctx)
	}
}

// round measures the shapes not measured yet, starts the compactions and
// expiries that are due while there is room, and leaves the rest due.
func (c *compactor) round(ctx context.Context) {
	c.sweepPartitions()
	now := time.Now()
	var measure, compact, expire []string
	c.mu.Lock()
	for h := range c.due {
		t := c.shapes[h]
		if t == nil || c.writers[t.partition] == nil {
			delete(c.due, h)
			continue
		}
		if t.running {
			continue
		}
		if !t.measured {
			if len(measure) < measurePerRound {
				measure = append(measure, h)
			}
			continue
		}
		v := c.policy.decide(t.size, now)
		switch {
		case v.compact:
			compact = append(compact, h)
		case v.notBefore.IsZero():
			t.logAt = v.logAt
			delete(c.due, h) // observe brings it back when the log grows to logAt
		}
	}
	for h, t := range c.shapes {
		if !t.expireAt.IsZero() && !now.Before(t.expireAt) && !t.running && c.writers[t.partition] != nil {
			expire = append(expire, h)
		}
	}
	c.mu.Unlock()

	for _, h := range measure {
		c.measure(h)
	}
	for _, h := range expire {
		c.expire(h, now)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range compact {
		if len(c.started) >= c.cfg.MaxConcurrent {
			break
		}
		t := c.shapes[h]
		if t == nil || t.running || c.writers[t.partition] == nil {
			continue
		}
		w := c.writers[t.partition]
		t.running = true
		delete(c.due, h)
		c.started[h] = time.Now()
		c.m.running.Set(float64(len(c.started)))
		c.jobs.Add(1)
		go func() {
			defer c.jobs.Done()
			c.compact(ctx, h, w)
		}()
	}
	c.status.Queued = 0
	for h := range c.due {
		if t := c.shapes[h]; t != nil && t.measured && !t.running {
			c.status.Queued++
		}
	}
	c.m.queued.Set(float64(c.status.Queued))
}

// sweepPartitions marks the shapes of the partitions taken since the last
// round due, so that a shape whose log grew large before this consumer
// owned it is compacted without waiting for its next append, and
// generations left to expire are expired.
func (c *compactor) sweepPartitions() {
	c.mu.Lock()
	parts := c.sweep
	c.sweep = map[int]bool{}
	c.mu.Unlock()
	if len(parts) == 0 {
		return
	}
	hs, err := c.store.Handles(context.Background())
	if err != nil {
		c.log.Warn("cannot list the shape logs to find the ones to compact; they are compacted when they grow", "err", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range hs {
		p := fanout.Partition(h, c.partitions)
		if !parts[p] {
			continue
		}
		if c.shapes[h] == nil {
			c.shapes[h] = &shapeTrack{partition: p}
		}
		c.due[h] = true
	}
}

// measure reads a shape's current base and log sizes.
func (c *compactor) measure(h string) {
	sz, err := shapelog.ShapeSizes(c.store.Dir(), h, false)
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.shapes[h]
	if t == nil {
		return
	}
	t.measured = true
	if err != nil {
		// Looked at again after a backoff (the policy's, as for a failure).
		t.size.failures++
		t.size.last = time.Now()
		c.log.Warn("cannot read a shape's generations to decide on its compaction; trying again later", "shape", h, "err", err)
		return
	}
	t.size.logBytes, t.size.baseBytes = sz.LogBytes, sz.BaseBytes
	if sz.Superseded && t.expireAt.IsZero() {
		t.expireAt = time.Now() // see whether a replaced generation is due
	}
}

// compact runs one compaction and records what it did.
func (c *compactor) compact(ctx context.Context, h string, w shapelog.Writer) {
	res, err := c.store.Compact(ctx, w, h, c.opts)
	now := time.Now()
	c.mu.Lock()
	start := c.started[h]
	delete(c.started, h)
	c.m.running.Set(float64(len(c.started)))
	t := c.shapes[h]
	if t == nil {
		t = &shapeTrack{partition: fanout.Partition(h, c.partitions)} // forgotten meanwhile: not kept
	}
	t.running = false
	detached := c.writers[t.partition] != w
	switch {
	case err == nil:
		t.size = shapeSize{logBytes: res.TailBytes, baseBytes: res.BaseBytes, last: now}
		t.measured = true
		t.expireAt = now.Add(2*c.cfg.Retain + time.Second)
		c.status.Done++
		c.status.SavedBytes += max(res.SourceBytes-res.BaseBytes, 0)
	case errors.Is(err, shapelog.ErrNotCompactable), errors.Is(err, shapelog.ErrNothingToCompact):
		// Its snapshot is not complete yet, or its log holds no whole
		// transaction: looked at again once the log grew some more.
		t.size.last, t.logAt = now, t.size.logBytes+c.cfg.MinLogBytes
	case ctx.Err() != nil || detached:
		// Stopped, or the partition moved: the log is as it was.
	default:
		t.size.failures++
		t.size.last = now
		c.status.Failed++
		c.status.LastError, c.status.LastAt = fmt.Sprintf("shape %s: %v", h, err), now.UTC()
	}
	if err == nil {
		t.size.failures = 0
	}
	c.mu.Unlock()

	switch {
	case err == nil:
		c.m.compactions.WithLabelValues("done").Inc()
		c.m.saved.Add(float64(max(res.SourceBytes-res.BaseBytes, 0)))
		c.m.held.Observe(res.Held.Seconds())
		c.m.duration.Observe(res.Duration.Seconds())
		c.log.Info("compacted a shape's log", "shape", h, "generation", res.Generation, "rows", res.Rows,
			"base_bytes", res.BaseBytes, "replaced_bytes", res.SourceBytes, "tail_bytes", res.TailBytes,
			"took", res.Duration.Round(time.Millisecond), "appends_held", res.Held.Round(time.Microsecond))
		c.expire(h, now)
	case errors.Is(err, shapelog.ErrNotCompactable), errors.Is(err, shapelog.ErrNothingToCompact):
		c.m.compactions.WithLabelValues("skipped").Inc()
		c.log.Debug("shape not compacted", "shape", h, "why", err)
	case ctx.Err() != nil || detached:
		c.m.compactions.WithLabelValues("abandoned").Inc()
		c.log.Info("compaction abandoned: the consumer is stopping or the partition moved; the log is as it was", "shape", h, "err", err)
	default:
		c.m.compactions.WithLabelValues("failed").Inc()
		c.log.Warn("compaction failed; the shape's log is as it was and is still served (it is tried again later)",
			"shape", h, "err", err, "after", time.Since(start).Round(time.Millisecond),
			"next_try_in", failureBackoff(t.size.failures, c.cfg.MinInterval))
	}
}

// expire removes the generations of h that are past 2 x retain.
func (c *compactor) expire(h string, now time.Time) {
	c.mu.Lock()
	t := c.shapes[h]
	if t == nil || t.running {
		c.mu.Unlock()
		return
	}
	t.running = true // no compaction of the shape meanwhile
	c.mu.Unlock()
	ex, err := shapelog.ExpireGenerations(c.store.Dir(), h, now)
	c.mu.Lock()
	t.running = false
	t.expireAt = ex.Next
	if err != nil {
		t.expireAt = now.Add(c.cfg.Retain) // try again later
		c.status.LastError, c.status.LastAt = fmt.Sprintf("expire generations of shape %s: %v", h, err), now.UTC()
	}
	c.status.FreedBytes += ex.Bytes
	c.mu.Unlock()
	if err != nil {
		c.log.Warn("could not remove a shape's replaced generations; tried again later", "shape", h, "err", err)
	}
	if len(ex.Removed) > 0 {
		c.m.expired.Add(float64(len(ex.Removed)))
		c.m.freed.Add(float64(ex.Bytes))
		c.log.Debug("removed replaced generations of a shape", "shape", h, "generations", ex.Removed, "bytes", ex.Bytes)
	}
}

// Status is what the heartbeat reports.
func (c *compactor) Status() *fanout.CompactionStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.status
	st.Running = len(c.started)
	var oldest time.Time
	for h, at := range c.started {
		if oldest.IsZero() || at.Before(oldest) {
			oldest, st.Current = at, fmt.Sprintf("%s for %s", h, time.Since(at).Round(100*time.Millisecond))
		}
	}
	return &st
}

// killSeamEnv names the fault-injection seam of the tests: set to a
// compaction step (shapelog.CompactSteps), optionally ":n", the consumer
// SIGKILLs itself the n-th time (default 1) one of its compactions reaches
// that step. Never set it in production.
const killSeamEnv = "FANOUT_TEST_COMPACTION_KILL_AT"

func killSeam(spec string, log *slog.Logger) func(shapelog.CompactStep) error {
	if spec == "" {
		return nil
	}
	step, count, _ := strings.Cut(spec, ":")
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 {
		n = 1
	}
	var mu sync.Mutex
	return func(s shapelog.CompactStep) error {
		if string(s) != step {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if n--; n > 0 {
			return nil
		}
		log.Warn("killing this consumer at a compaction step ("+killSeamEnv+" is set: a test)", "step", s)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}

// compactionMetrics are the compactor's on /metrics.
type compactionMetrics struct {
	compactions *prometheus.CounterVec
	running     prometheus.Gauge
	queued      prometheus.Gauge
	ioBytes     prometheus.Counter
	saved       prometheus.Counter
	freed       prometheus.Counter
	expired     prometheus.Counter
	held        prometheus.Histogram
	duration    prometheus.Histogram
}

func newCompactionMetrics(reg prometheus.Registerer) *compactionMetrics {
	m := &compactionMetrics{
		compactions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fanout_consumer_compactions_total",
			Help: "Shape log compactions by result: done, failed (the log is as it was; see the consumer's log), skipped (nothing to compact, or no snapshot), abandoned (stopping, or the partition moved)."}, []string{"result"}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_consumer_compactions_running",
			Help: "Shape log compactions running now (at most storage.compaction.max_concurrent)."}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_consumer_compactions_queued",
			Help: "Shapes due for compaction waiting for a free slot (storage.compaction.max_concurrent); growing means compaction cannot keep up: raise it or max_bytes_per_second."}),
		ioBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_compaction_io_bytes_total",
			Help: "Bytes compactions read and wrote (their progress; bounded by storage.compaction.max_bytes_per_second)."}),
		saved: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_compaction_saved_bytes_total",
			Help: "Bytes of bases and logs that compactions replaced, minus the bases they wrote: freed once the replaced generations expire (2 x storage.compaction.retain)."}),
		freed: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_compaction_freed_bytes_total",
			Help: "Bytes removed with replaced generations after 2 x storage.compaction.retain."}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_compaction_expired_generations_total",
			Help: "Replaced generations of shape logs removed."}),
		held: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fanout_consumer_compaction_switch_seconds",
			Help:    "How long a compaction held the partition writer's lock to switch a shape to its new log: the longest an append waited for it.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14)}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fanout_consumer_compaction_seconds",
			Help:    "Time one shape's compaction took.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 18)}),
	}
	reg.MustRegister(m.compactions, m.running, m.queued, m.ioBytes, m.saved, m.freed, m.expired, m.held, m.duration)
	return m
}
