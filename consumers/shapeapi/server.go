package shapeapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/observe"
	"github.com/fanout/pipeline/fanout/shapes"
	"github.com/fanout/pipeline/fanout/shapestate"
)

// Server is the HTTP shape API over the shape logs of a storage directory.
// It keeps no state that matters: any number of replicas serve the same
// answers (caches of log positions and column types only).
type Server struct {
	cfg    Config
	log    *slog.Logger
	nc     *nats.Conn
	bus    *fanout.Bus
	defs   jetstream.KeyValue
	states jetstream.KeyValue
	pg     *pgLink
	shapes *shapeSet
	hub    *hub
	marks  *watermarks // watermarks of up-to-date messages (watermark.go)
	ready  atomic.Bool
	reg    *prometheus.Registry
	rdy    *observe.Readiness

	mu      sync.Mutex
	indexes *indexCache
	columns *lru[[]ColumnInfo]  // by handle, at most maxCachedShapes
	snaps   *lru[*snapshotView] // by handle, at most maxCachedShapes
	handles *lru[string]        // definition key -> the handle serving it (resolve), at most maxCachedShapes
	chains  *lru[*chainEntry]   // by handle, at most maxCachedShapes (generations.go)

	subsets *subsetConns // subset snapshot reads (subsetread.go)
	limits               // admission, lifecycle, served tables (limits.go)

	requests       *prometheus.CounterVec
	refusals       *prometheus.CounterVec // by the config key of the limit
	heldG          prometheus.GaugeFunc
	expiredOffsets prometheus.Counter

	// continuity is ingest's report of the replication stream (continuity.go).
	continuity continuityView
}

// New connects to NATS and prepares the server; Run serves.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	nc, err := fanout.Connect(fanout.ConnectOptions{URL: cfg.NATS.URL, CredsFile: cfg.NATS.CredsFile, CAFile: cfg.NATS.CAFile, Name: "shapeapi"}, log)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("JetStream: %w", err)
	}
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	bus, err := fanout.EnsureBus(bctx, js, cfg.Bus.BusConfig())
	if err != nil {
		nc.Close()
		return nil, err
	}
	defs, err := js.CreateOrUpdateKeyValue(bctx, definitionsBucket(cfg))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("create KV bucket %s: %w", fanout.APIDefinitionsBucket, err)
	}
	states, err := shapestate.Ensure(bctx, js, cfg.Bus.Replicas, false)
	if err != nil {
		nc.Close()
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, nc: nc, bus: bus, defs: defs, states: states, pg: &pgLink{url: cfg.Postgres.URL},
		subsets: newSubsetConns(cfg.Postgres.URL, cfg.API.SubsetConnections, cfg.API.SubsetTimeout, cfg.API.RetryAfter), hub: newHub(), reg: observe.NewRegistry(), rdy: &observe.Readiness{},
		indexes: newIndexCache(maxIndexes), columns: newLRU[[]ColumnInfo](maxCachedShapes), snaps: newLRU[*snapshotView](maxCachedShapes),
		handles: newLRU[string](maxCachedShapes), chains: newLRU[*chainEntry](maxCachedShapes),
		marks: newWatermarks(bus, cfg.Bus.Partitions)}
	s.shapes = newShapeSet(bus, s.forget)
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fanout_shapeapi_requests_total",
		Help: "Shape API responses by status code."}, []string{"code"})
	s.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fanout_shapeapi_refused_total",
		Help: "Requests answered 503 concurrent_request_limit_exceeded, by the config key of the limit that refused them."}, []string{"limit"})
	s.expiredOffsets = prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_shapeapi_expired_offsets_total",
		Help: "Reads refused with 409 because their offset is in a compacted generation no longer served (older than storage.compaction.retain): the client starts again from -1. Raise storage.compaction.retain (on the consumers and here) if clients come back later than that."})
	s.reg.MustRegister(s.requests, s.refusals, s.expiredOffsets, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fanout_shapeapi_held_requests",
		Help: "Live requests waiting for their shape's log to grow."}, func() float64 { return float64(s.hub.held()) }))
	s.setupLimits(defs, states)
	return s, nil
}

// forget drops what the server caches of a removed shape and wakes its
// held requests (they answer 409).
func (s *Server) forget(handle string) {
	s.mu.Lock()
	s.indexes.drop(handle)
	s.columns.remove(handle)
	s.snaps.remove(handle)
	s.chains.remove(handle)
	s.mu.Unlock()
	s.snapWatch.forget(handle)
	s.life.forget(handle)
	s.hub.wake(handle)
}

// Run serves until ctx ends, then drains: held requests answer at once.
func (s *Server) Run(ctx context.Context) error {
	defer s.nc.Close()
	defer s.pg.close()
	defer s.subsets.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 5)
	var wg sync.WaitGroup
	wg.Go(func() {
		err := shapes.Watch(ctx, s.bus.Shapes, s.shapes.put, s.shapes.remove, s.log, shapes.WithReady(func() { close(s.shapes.primed) }))
		if err != nil {
			errs <- err
		}
	})
	wg.Go(func() {
		if err := s.watchSafeLSN(ctx); err != nil {
			errs <- err
		}
	})
	wg.Go(func() {
		if err := s.watchContinuity(ctx); err != nil {
			errs <- err
		}
	})
	s.runLimits(ctx, &wg)
	sub, err := s.nc.Subscribe(fanout.NoticeSubjectPrefix+".>", func(m *nats.Msg) {
		s.hub.wake(m.Subject[len(fanout.NoticeSubjectPrefix)+1:])
	})
	if err != nil {
		return fmt.Errorf("subscribe to %s.>: %w", fanout.NoticeSubjectPrefix, err)
	}
	defer sub.Unsubscribe()
	wg.Go(func() {
		if err := observe.Serve(ctx, s.cfg.HTTP.Addr, s.reg, s.rdy, s.log, observe.Pprof(s.cfg.HTTP.Pprof)); err != nil {
			errs <- err
		}
	})
	ln, err := net.Listen("tcp", s.cfg.API.Addr)
	if err != nil {
		cancel()
		wg.Wait()
		return fmt.Errorf("listen on api.addr %s: %w (is another process using the port?)", s.cfg.API.Addr, err)
	}
	srv, limited := s.httpServer(ctx, ln)
	wg.Go(func() {
		if err := srv.Serve(limited); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("serve api.addr %s: %w", s.cfg.API.Addr, err)
		}
	})
	select {
	case <-s.shapes.primed:
		s.ready.Store(true)
		s.rdy.Set(true, "")
		s.log.Info("serving the shape API", "addr", ln.Addr().String())
	case err := <-errs:
		cancel()
		srv.Close()
		wg.Wait()
		return err
	case <-ctx.Done():
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	srv.Shutdown(sctx)
	wg.Wait()
	return runErr
}

// watchSafeLSN follows flushd's safe LSN, the watermark of up-to-date messages.
func (s *Server) watchSafeLSN(ctx context.Context) error {
	return s.followStateKey(ctx, fanout.KeySafeLSN, "the safe LSN", func(value []byte) {
		if v, err := fanout.DecodeSafeLSN(value); err == nil && uint64(v.LSN) > s.marks.safe.Load() {
			s.marks.safe.Store(uint64(v.LSN))
		}
	})
}

// followStateKey passes every value put under key of the state bucket to
// apply until ctx ends, watching again when the watch fails.
func (s *Server) followStateKey(ctx context.Context, key, what string, apply func(value []byte)) error {
	for {
		w, err := s.bus.State.Watch(ctx, key)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("cannot watch "+what+"; retrying", "err", err)
			if !sleep(ctx, time.Second) {
				return nil
			}
			continue
		}
		for e := range w.Updates() {
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				apply(e.Value())
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (s *Server) index(handle string) *logIndex { return s.indexes.get(handle) }

// columnInfo returns (and caches) the column types of a shape's table.
func (s *Server) columnInfo(ctx context.Context, sh *fanout.Shape) ([]ColumnInfo, error) {
	s.mu.Lock()
	cols, _ := s.columns.get(sh.Handle)
	s.mu.Unlock()
	if cols != nil {
		return cols, nil
	}
	schema, table := fanout.SplitTable(sh.Table)
	err := s.pg.with(ctx, func(conn *pgx.Conn) error {
		var err error
		cols, err = LoadColumns(ctx, conn, schema, table)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.columns.put(sh.Handle, cols)
	s.mu.Unlock()
	return cols, nil
}

// snapshotView is a shape's served initial snapshot.
type snapshotView struct {
	snap *shapelog.Snapshot // nil: the shape has no snapshot rows
}

func (s *Server) readyCache(handle string) *snapshotView {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, _ := s.snaps.get(handle)
	return v
}

// loadSnapshot returns the complete snapshot of generation gen, or nil
// (and no error) when it is not on disk yet.
func (s *Server) loadSnapshot(handle string, gen uint64) (*snapshotView, error) {
	snap, err := shapelog.CurrentSnapshot(s.cfg.Storage.Dir, handle)
	if err != nil {
		return nil, err
	}
	if snap == nil || snap.Generation != gen {
		return nil, nil
	}
	v := &snapshotView{snap: snap}
	s.mu.Lock()
	s.snaps.put(handle, v)
	s.mu.Unlock()
	return v, nil
}

// pgLink is one Postgres connection for the rare queries of the API
// (validating a new shape, reading column types), reconnected when broken.
type pgLink struct {
	url  string
	mu   sync.Mutex
	conn *pgx.Conn
}

func (p *pgLink) with(ctx context.Context, fn func(*pgx.Conn) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn == nil || p.conn.IsClosed() {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := pgx.Connect(cctx, p.url)
		cancel()
		if err != nil {
			return fmt.Errorf("connect to Postgres: %w (check postgres.url)", err)
		}
		p.conn = conn
	}
	err := fn(p.conn)
	if err != nil && p.conn.IsClosed() {
		p.conn = nil
	}
	return err
}

func (p *pgLink) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		p.conn.Close(context.Background())
		p.conn = nil
	}
}

// authorized checks the request's secret (secret=, or api_secret= from
// older clients) against api.secret.
func (s *Server) authorized(r *http.Request) bool {
	if s.cfg.API.Secret == "" {
		return true
	}
	got := r.URL.Query().Get("secret")
	if got == "" {
		got = r.URL.Query().Get("api_secret")
	}
	return SecretMatches(got, s.cfg.API.Secret)
}

// SecretMatches compares SHA-256 digests in constant time: the time taken
// depends on neither the secret's content nor its length (comparing the
// strings themselves returns at once when the lengths differ).
func SecretMatches(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

func writeJSON(w http.ResponseWriter, code int, body []byte) {
	w.Header().Set("content-type", "application/json")
	w.Header().Set("content-length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	w.Write(body)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func errorBody(msg string) []byte {
	b, _ := json.Marshal(map[string]string{"message": msg})
	return b
}
