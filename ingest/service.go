// Package ingest reads Postgres logical replication (pgoutput, protocol 1),
// routes each change to the shapes it matches and publishes per-shape
// transaction fragments to JetStream. The stages, in order:
//
//	reader.go    replication connection -> WAL messages and keepalives
//	decoder.go   pgoutput messages -> row changes (Handler)
//	router.go    row changes -> bounded per-shape fragments (Sink)
//	publisher.go fragments -> JetStream, async, bounded in flight
//	progress.go  acks -> the published LSN (written for flushd)
//	status.go    flushd's safe LSN -> standby status to Postgres
//
// service.go wires them and restarts a broken session with bounded backoff.
// Before each session streams, and while it does, the continuity check
// (continuity.go: is this stream the continuation of what was published?)
// decides, and resync.go recovers from a break by itself.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/observe"
	"github.com/fanout/pipeline/fanout/shapestate"
)

// errFatal marks failures that retrying cannot fix.
type errFatal struct{ error }

func (e errFatal) Unwrap() error { return e.error }

// Service is a running ingest.
type Service struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	ready   *observe.Readiness
	bus     *fanout.Bus

	tracker   *Tracker
	publisher *Publisher
	batcher   *Batcher
	router    *Router
	decoder   *Decoder
	safe      *SafeHolder
	shapes    chan shapeEvent
	handoff   *handoff
	subq      *subqReader // Postgres reads of shapes with subqueries

	confirmed   atomic.Uint64 // last position sent to Postgres
	statusEvery time.Duration // the session's status interval (keepalive.go)

	// slotCreated: this session's slot was made by it (nothing was sent
	// from it before). resends: the session may send again what was
	// published before it (subqrestart.go). Set by prepare.
	slotCreated, resends bool

	// Replication continuity: the book of what was recorded, the shaped
	// tables, and the checks' lock (held by a session's start check and
	// the running checks; they also read tracker and hint under it).
	book      *continuityBook
	tables    *tableSet
	resyncMu  sync.Mutex
	hint      *fanout.Break // the stream said the publication is gone
	breakSeen chan struct{} // a running check found a break of the stream
	streaming atomic.Bool
}

// Run runs ingest until ctx ends (then drains and returns nil) or a failure
// outlasts its retries (then returns it). reg may be nil.
func Run(ctx context.Context, cfg Config, log *slog.Logger, reg *prometheus.Registry) error {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s := &Service{cfg: cfg, log: log, metrics: NewMetrics(reg), ready: &observe.Readiness{}, safe: NewSafeHolder(), shapes: make(chan shapeEvent, 1024),
		tables: newTableSet(), breakSeen: make(chan struct{}, 1)}
	s.ready.Set(false, "starting")

	nc, err := fanout.Connect(fanout.ConnectOptions{URL: cfg.NATS.URL, CredsFile: cfg.NATS.CredsFile, CAFile: cfg.NATS.CAFile, Name: "fanout-ingest"}, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if max := nc.MaxPayload(); int64(cfg.Ingest.MaxFragmentBytes) > max/2 {
		// Encoding overhead (JSON escaping, headers) is not in the estimate.
		return fmt.Errorf("config key ingest.max_fragment_bytes: %d is over half the NATS server's max_payload (%d); lower it", cfg.Ingest.MaxFragmentBytes, max)
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(cfg.Ingest.MaxInflight+1),
		jetstream.WithPublishAsyncTimeout(cfg.Ingest.AckTimeout))
	if err != nil {
		return fmt.Errorf("JetStream: %w", err)
	}
	bctx, cancel := context.WithTimeout(ctx, time.Minute)
	s.bus, err = fanout.EnsureBus(bctx, js, cfg.Bus.BusConfig())
	cancel()
	if err != nil {
		return err
	}
	if s.book, err = loadBook(ctx, s.bus.State, log, s.metrics); err != nil {
		return err
	}

	// Background workers live as long as the service; wg owns them.
	wctx, stopWorkers := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stopWorkers(); wg.Wait() }()
	workerErr := make(chan error, 4)
	goWorker := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(wctx); err != nil {
				workerErr <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	goWorker("http", func(c context.Context) error {
		return observe.Serve(c, cfg.HTTP.Addr, reg, s.ready, log, observe.Pprof(cfg.HTTP.Pprof))
	})
	watcher := &shapeWatcher{kv: s.bus.Shapes, log: log, out: s.shapes}
	if cfg.Postgres.ReplicaIdentityFull {
		watcher.identity = newIdentitySetter(cfg.Postgres.URL, cfg.Postgres.ReplicaIdentityLockTimeout, cfg.Postgres.ReplicaIdentityAttempts, time.Minute, reg, log)
		goWorker("replica identity", watcher.identity.run)
	}
	goWorker("shape watcher", watcher.run)
	goWorker("safe LSN watcher", func(c context.Context) error { return watchSafe(c, s.bus.State, s.safe, s.metrics, log) })

	s.decoder = NewDecoder(log)
	s.router = NewRouter(match.NewRegistry(), cfg.Bus.Partitions, cfg.Ingest, nil, nil, s.metrics, log)
	s.router.tables = s.tables
	goWorker("continuity check", s.watchContinuity)
	s.subq = newSubqReader(cfg.Subq, cfg.Postgres.URL, log, s.metrics)
	goWorker("subquery reader", s.subq.run)
	rot := newRotator(s.bus, log)
	goWorker("shape rotator", rot.run)
	s.router.sq = newSubqueries(s.router.reg, s.subq, cfg.Ingest, s.metrics, log, rot.submit)
	if s.handoff, err = newHandoff(ctx, js, cfg, s.router.decoded, log); err != nil {
		// Replication must not depend on it: new shapes then wait for
		// their snapshots (and fail after snapshot.routing_timeout).
		log.Error("snapshot hand-off unavailable: new shapes' snapshots cannot start (grant ingest the "+shapestate.Bucket+" KV bucket)", "err", err)
	} else {
		goWorker("snapshot hand-off", s.handoff.run)
	}
	if err := s.loadShapes(ctx, workerErr); err != nil {
		return err
	}
	// Loading many shapes leaves the heap at twice what the matcher keeps
	// (the decoded definitions are garbage now): give that back to the OS
	// once, rather than hold it for the life of the process.
	debug.FreeOSMemory()
	s.handoff.applied(s.router.Applied())
	err = s.replicate(ctx, workerErr, goWorker)
	if s.batcher != nil {
		s.batcher.Close()
	}
	if s.publisher != nil {
		s.publisher.Close()
	}
	return err
}

// loadShapes applies the shapes that exist before replication starts, so
// the first changes are routed with the full set.
func (s *Service) loadShapes(ctx context.Context, workerErr <-chan error) error {
	n := 0
	for {
		select {
		case ev := <-s.shapes:
			if ev.initialDone {
				s.log.Info("shapes loaded", "count", n)
				return nil
			}
			s.router.Apply(ev.update)
			n++
		case err := <-workerErr:
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

// replicate runs sessions until ctx ends or a failure is fatal or outlasts
// cfg.Ingest.MaxRetries consecutive attempts.
func (s *Service) replicate(ctx context.Context, workerErr <-chan error, goWorker func(string, func(context.Context) error)) error {
	backoff := 100 * time.Millisecond
	failures := 0
	for ctx.Err() == nil {
		progressed, err := s.session(ctx, workerErr, goWorker)
		if err == nil {
			break
		}
		var fatal errFatal
		if errors.As(err, &fatal) {
			s.ready.Set(false, err.Error())
			return err
		}
		var recheck errRecheck
		if errors.As(err, &recheck) {
			// Not a failure: the next session checks continuity first.
			s.ready.Set(false, err.Error())
			s.log.Info("replication session ended to check continuity", "reason", err)
			failures, backoff = 0, 100*time.Millisecond
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		if progressed {
			failures, backoff = 0, 100*time.Millisecond
		}
		failures++
		s.ready.Set(false, err.Error())
		if failures > s.cfg.Ingest.MaxRetries {
			return fmt.Errorf("giving up after %d attempts in a row, last: %w", failures, err)
		}
		s.metrics.Reconnects.Inc()
		s.log.Warn("replication session failed; resuming from the slot", "attempt", failures, "of", s.cfg.Ingest.MaxRetries, "retry_in", backoff, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff = min(2*backoff, s.cfg.Ingest.MaxBackoff)
	}
	return s.drain()
}

// session connects, replicates until something breaks or ctx ends, and
// reports whether it received anything (a healthy session resets the
// retry count).
func (s *Service) session(ctx context.Context, workerErr <-chan error, goWorker func(string, func(context.Context) error)) (progressed bool, err error) {
	cfg := s.cfg.Postgres
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conn, err := pgx.Connect(cctx, cfg.URL)
	cancel()
	if err != nil {
		return false, fmt.Errorf("connect to Postgres: %w (check postgres.url and that the server runs)", err)
	}
	defer conn.Close(context.Background())
	s.statusEvery = s.statusInterval(ctx, conn) // keepalive.go
	repl, err := connectReplication(ctx, cfg.URL)
	if err != nil {
		return false, err
	}
	defer repl.Close(context.Background())
	from, err := s.prepare(ctx, conn, repl, goWorker)
	if err != nil {
		return false, err
	}
	if err := s.rebuildResults(ctx, from); err != nil {
		return false, err
	}
	if err := startReplication(ctx, repl, cfg.Slot, cfg.Publication); err != nil {
		if isSlotGone(err) || isPublicationGone(err) {
			return false, s.streamBroke(err)
		}
		return false, err
	}
	s.log.Info("replicating", "slot", cfg.Slot, "publication", cfg.Publication, "from", from)
	s.ready.Set(true, "")
	return s.stream(ctx, conn, repl, workerErr)
}

// prepare checks the stream's continuity (and recovers from a break) and,
// on the first session, starts the publisher and the progress writer. It
// returns the slot's confirmed position, where replication resumes.
func (s *Service) prepare(ctx context.Context, conn *pgx.Conn, repl *pgconn.PgConn, goWorker func(string, func(context.Context) error)) (pglogrepl.LSN, error) {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	s.slotCreated = false
	from, err := s.checkAtStart(ctx, conn, repl)
	if err != nil {
		return 0, err
	}
	// What an earlier process published is unknown here; this process's
	// own is in its tracker.
	s.resends = !s.slotCreated && (s.tracker == nil || s.tracker.Published() > from)
	if s.tracker == nil {
		s.tracker = NewTracker(from)
		s.publisher = NewPublisher(s.bus.JS, PublisherOptions{
			MaxInflight: s.cfg.Ingest.MaxInflight, MaxInflightBytes: s.cfg.Ingest.MaxInflightBytes,
			MaxRetries: s.cfg.Ingest.MaxRetries, MaxBackoff: s.cfg.Ingest.MaxBackoff,
			Stream: s.bus.Stream, Failed: s.bus.Failed,
		}, s.log, s.metrics)
		s.batcher = NewBatcher(s.publisher, s.cfg.Bus.Partitions, s.messageBytes(), s.cfg.Ingest.MaxInflightBytes)
		s.router.tracker, s.router.sink = s.tracker, s.batcher
		goWorker("progress writer", s.writeProgress)
	}
	// A new session may send WAL that was already published: the publisher
	// probes the stream before it chains sequences again.
	s.publisher.Replay()
	if uint64(from) > s.confirmed.Load() {
		s.confirmed.Store(uint64(from))
	}
	return from, nil
}

// streamBroke ends a session whose stream says the slot or the publication
// is gone: the next session's check decides what broke. A publication gone
// is remembered, as the catalog may no longer show it (made again since).
func (s *Service) streamBroke(err error) error {
	if isPublicationGone(err) {
		s.resyncMu.Lock()
		if s.hint == nil {
			s.hint = &fanout.Break{Cause: CausePublicationMissing, At: time.Now().UTC(),
				Detail: "the replication stream failed: " + err.Error() + " (the publication was dropped under the slot, which cannot be read past the drop)"}
		}
		s.resyncMu.Unlock()
	}
	return errRecheck{err}
}

// stream runs one replication session: the receiver, the status sender and
// the idle heartbeat in their goroutines, decoding and routing in this one.
func (s *Service) stream(ctx context.Context, conn *pgx.Conn, repl *pgconn.PgConn, workerErr <-chan error) (progressed bool, err error) {
	cfg := s.cfg.Postgres
	// The session's goroutines: receiver, status sender, idle heartbeat.
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	msgs := make(chan walMsg, 64)
	status := newStatusSender(repl, s.safe, s.tracker, pglogrepl.LSN(s.confirmed.Load()), s.statusEvery, s.metrics)
	status.hold = s.router.sq.Hold
	var lastData atomic.Int64
	lastData.Store(time.Now().UnixNano())
	spawn := func(f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(sctx); err != nil {
				errs <- err
			}
		}()
	}
	spawn(func(c context.Context) error { return receive(c, repl, msgs, status.requestReply) })
	s.streaming.Store(true)
	defer s.streaming.Store(false)
	spawn(status.run)
	if cfg.IdleHeartbeat > 0 {
		spawn(func(c context.Context) error { return heartbeat(c, conn, cfg.IdleHeartbeat, &lastData, s.log) })
	}
	defer func() {
		stop()
		wg.Wait()
		s.confirmed.Store(uint64(status.Confirmed()))
		if ctx.Err() != nil && err == nil {
			// Draining: the last word to Postgres is the final position.
			dctx, cancel := context.WithTimeout(context.Background(), s.cfg.Ingest.DrainTimeout)
			derr := s.batcher.Drain(dctx)
			cancel()
			if derr != nil {
				s.log.Error("in-flight publishes not all acked before drain_timeout; they are sent again on restart", "err", derr)
			}
			s.writeProgressOnce(context.Background())
			if serr := status.send(context.Background()); serr != nil {
				s.log.Warn("final standby status not sent; Postgres keeps the last one it got", "err", serr)
			}
			s.confirmed.Store(uint64(status.Confirmed()))
		}
		s.router.Abort()
		s.tracker.Abandon()
	}()

	for {
		select {
		case <-ctx.Done():
			return progressed, nil
		case err := <-errs:
			if isSlotGone(err) || isPublicationGone(err) {
				return progressed, s.streamBroke(err)
			}
			return progressed, err
		case <-s.breakSeen:
			return progressed, errRecheck{errors.New("a continuity check found a break of the stream")}
		case err := <-workerErr:
			return progressed, errFatal{err}
		case <-s.publisher.Failed():
			return progressed, errFatal{s.publisher.Err()}
		case ev := <-s.shapes:
			if !ev.initialDone {
				s.router.Apply(ev.update) // waits for the end of an open transaction
				s.handoff.applied(s.router.Applied())
			}
		case res := <-s.subq.results:
			s.router.sq.result(res)
			s.handoff.applied(s.router.Applied())
		case m := <-msgs:
			progressed = true
			if m.keepalive != nil {
				if err := s.router.Idle(ctx, m.keepalive.ServerWALEnd); err != nil {
					return progressed, err
				}
				s.handoff.applied(s.router.Applied())
				// Nothing open or in flight: everything before the server's
				// WAL end is handled, so an idle slot can move on.
				if s.router.tx == nil && s.tracker.Open() == 0 && s.tracker.Idle(m.keepalive.ServerWALEnd) {
					s.log.Debug("idle: published LSN moved to the server's WAL end", "lsn", m.keepalive.ServerWALEnd)
				}
				continue
			}
			lastData.Store(time.Now().UnixNano())
			if err := s.decoder.Decode(ctx, m.xlog.WALData, s.router); err != nil {
				if ctx.Err() != nil {
					return progressed, nil
				}
				return progressed, err
			}
			s.handoff.applied(s.router.Applied()) // a commit may have applied waiting updates
		}
	}
}

// messageBytes bounds a bus message: ingest.max_message_bytes, or less when
// the NATS server's max_payload is lower (room kept for headers and the
// envelope), and at most a sixteenth of bus.max_bytes, so that a message
// always fits in a stream that is not empty (ingest waits for room rather
// than be refused).
func (s *Service) messageBytes() int {
	n := s.cfg.Ingest.MaxMessageBytes
	limit, why := n, ""
	if l := int(s.bus.JS.Conn().MaxPayload()) - 16<<10; l > 0 && l < limit {
		limit, why = l, "the NATS server's max_payload"
	}
	if l := int(s.cfg.Bus.MaxBytes / 16); l > 0 && l < limit {
		limit, why = l, "a sixteenth of bus.max_bytes"
	}
	if limit < n {
		s.log.Info("bus messages are bounded below ingest.max_message_bytes", "max_message_bytes", limit, "configured", n, "bound", why)
	}
	return limit
}

// drain is the end of a clean shutdown.
func (s *Service) drain() error {
	s.ready.Set(false, "draining")
	if s.publisher != nil {
		if err := s.publisher.Err(); err != nil {
			return err
		}
	}
	s.log.Info("ingest stopped", "confirmed", pglogrepl.LSN(s.confirmed.Load()))
	return nil
}
