// Package consumers is the consumer service: it persists the shape logs of
// the partitions flushd binds to it and acks each fragment to JetStream only
// once it is durable.
//
// One Service runs per replica. It heartbeats (heartbeat.go), watches the
// bindings (bindings.go) and runs one worker per owned partition (worker.go),
// which fetches in stream order, persists through shapelog, dead-letters what
// it cannot process (deadletter.go) and acks.
package consumers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/consumers/snapshot"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/observe"
)

// Service is one consumer replica.
type Service struct {
	cfg     Config
	id      string
	log     *slog.Logger
	reg     *prometheus.Registry
	ready   *observe.Readiness
	m       *metrics
	store   shapelog.Store
	started time.Time
	// compactor compacts the logs of the partitions owned here (nil when
	// storage.compaction.enabled is false).
	compactor *compactor

	// Set by Run once connected.
	nc     *nats.Conn
	bus    *fanout.Bus
	shapes *shapeCache

	mu      sync.Mutex
	workers map[int]*worker // partition -> its worker (possibly finished)

	fatal chan error // first fatal error of any goroutine
}

// New prepares a consumer from cfg (already validated by configs.Load).
func New(cfg Config, log *slog.Logger) (*Service, error) {
	store, err := shapelog.NewFileStore(cfg.Storage.Dir, log)
	if err != nil {
		return nil, err
	}
	openLogs := cfg.Storage.MaxOpenLogs
	if openLogs == 0 {
		openLogs = shapelog.OpenLogsPerWriter(cfg.Bus.Partitions)
	}
	store.SetMaxOpenLogs(openLogs)
	log.Info("shape logs kept open per partition writer", "max_open_logs", openLogs, "partitions", cfg.Bus.Partitions)
	reg := observe.NewRegistry()
	s := &Service{
		cfg: cfg, id: cfg.Consumer.ID, log: log, reg: reg, ready: &observe.Readiness{},
		m: newMetrics(reg), store: store, started: time.Now(),
		workers: map[int]*worker{}, fatal: make(chan error, 1),
	}
	if cc := cfg.Storage.Compaction; cc.Enabled {
		chunks := fanoutChunks{rows: cfg.Snapshot.ChunkRows, bytes: cfg.Snapshot.ChunkBytes}
		s.compactor = newCompactor(cc, chunks, store, cfg.Bus.Partitions, reg, log)
	} else {
		log.Info("storage.compaction.enabled is false: shape logs only grow")
	}
	s.ready.Set(false, "connecting to NATS")
	return s, nil
}

// Registry is the service's Prometheus registry.
func (s *Service) Registry() *prometheus.Registry { return s.reg }

// Run serves until ctx ends (SIGTERM: drain and return nil) or a fatal error
// (returned; the process should exit non-zero so flushd moves its partitions).
func (s *Service) Run(ctx context.Context) error {
	nc, err := fanout.Connect(fanout.ConnectOptions{
		URL: s.cfg.NATS.URL, CredsFile: s.cfg.NATS.CredsFile, CAFile: s.cfg.NATS.CAFile, Name: "consumer " + s.id,
	}, s.log)
	if err != nil {
		return err
	}
	defer nc.Close()
	s.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("JetStream context: %w", err)
	}
	busCtx, cancel := context.WithTimeout(ctx, s.cfg.Consumer.BusRetryTimeout)
	s.bus, err = fanout.EnsureBus(busCtx, js, s.cfg.Bus.BusConfig())
	cancel()
	if err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	// bg ends the helpers that outlive the workers (HTTP, shapes, heartbeat).
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := observe.Serve(bg, s.cfg.HTTP.Addr, s.reg, s.ready, s.log, observe.Pprof(s.cfg.HTTP.Pprof)); err != nil {
			s.fail(err)
		}
	}()

	// Initial snapshots: this replica takes its share (consumers/snapshot).
	if err := snapshot.Start(bg, &wg, snapshot.Deps{JS: js, Shapes: s.bus.Shapes, Dir: s.cfg.Storage.Dir,
		ID: s.id, Replicas: s.cfg.Bus.Replicas, Reg: s.reg, Log: s.log}); err != nil {
		return err
	}

	if s.compactor != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.compactor.run(bg)
		}()
	}

	s.shapes = newShapeCache(s.bus.Shapes, s.log, s.cfg.Consumer.BusRetryTimeout, s.removeShape)
	primed := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.shapes.run(bg, primed); err != nil {
			s.fail(err)
		}
	}()
	select {
	case <-primed:
	case err := <-s.fatal:
		return err
	case <-ctx.Done():
		return nil
	}

	hbCtx, stopHB := context.WithCancel(bg)
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		if err := s.heartbeat(hbCtx); err != nil {
			s.fail(err)
		}
	}()

	// work is the workers' stop context: cancelled on a fatal error; a
	// SIGTERM (ctx) only drains them.
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	bindCtx, stopBindings := context.WithCancel(ctx)
	bindDone := make(chan struct{})
	go func() {
		defer close(bindDone)
		if err := s.watchBindings(bindCtx, ctx, work); err != nil {
			s.fail(err)
		}
	}()
	s.ready.Set(true, "")
	s.log.Info("consumer running", "storage", s.cfg.Storage.Dir, "nats", fanout.RedactURL(s.cfg.NATS.URL))

	var fatal error
	select {
	case <-ctx.Done():
		s.log.Info("draining: finishing the batches in flight")
	case fatal = <-s.fatal:
		s.log.Error("stopping after a fatal error", "err", fatal)
		stopWork()
	}
	s.ready.Set(false, "shutting down")
	stopBindings()
	<-bindDone
	s.waitWorkers()
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		s.log.Warn("could not flush the last acks to NATS; those fragments will be redelivered to the next owner", "err", err)
	}
	stopHB()
	<-hbDone
	s.sendDraining()
	if fatal == nil {
		select { // a worker may have failed while draining
		case fatal = <-s.fatal:
		default:
		}
	}
	return fatal
}

// fail records the first fatal error; Run stops on it.
func (s *Service) fail(err error) {
	select {
	case s.fatal <- err:
	default:
	}
}

// waitWorkers waits for every worker to end.
func (s *Service) waitWorkers() {
	s.mu.Lock()
	ws := make([]*worker, 0, len(s.workers))
	for _, w := range s.workers {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	for _, w := range ws {
		<-w.done
	}
}

// owned lists the partitions whose workers still run, at their epochs.
func (s *Service) owned() map[int]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[int]uint64{}
	for p, w := range s.workers {
		if !w.finished() {
			out[p] = w.epoch
		}
	}
	return out
}

// removeShape routes a shape removal to the owner of its partition, which
// deletes the log between two batches.
func (s *Service) removeShape(handle string) {
	p := fanout.Partition(handle, s.cfg.Bus.Partitions)
	s.mu.Lock()
	w := s.workers[p]
	s.mu.Unlock()
	if w == nil || w.finished() {
		s.log.Debug("shape removed; its partition is not owned here", "shape", handle, "partition", p)
		return
	}
	w.queueRemoval(handle)
}

// busAttemptTimeout bounds one attempt of retryBus. A JetStream API call
// answers in milliseconds when the cluster is healthy; one sent to a node
// that just failed gets no answer at all, and should be sent again soon.
const busAttemptTimeout = 4 * time.Second

// retryBus calls fn until it succeeds, stop ends, or it has failed for
// bus_retry_timeout, backing off between attempts.
func (s *Service) retryBus(stop context.Context, what string, fn func(ctx context.Context) error) error {
	deadline := time.Now().Add(s.cfg.Consumer.BusRetryTimeout)
	backoff := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(stop, busAttemptTimeout)
		err := fn(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if stop.Err() != nil {
			return stop.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: still failing after %s (consumer.bus_retry_timeout): %w; check that NATS is reachable", what, s.cfg.Consumer.BusRetryTimeout, err)
		}
		s.log.Warn("NATS operation failed; retrying", "what", what, "err", err, "retry_in", backoff)
		if !sleep(stop, backoff) {
			return stop.Err()
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// isNotFound reports a KV or consumer lookup that found nothing.
func isNotFound(err error) bool {
	return errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound)
}
