package shapeapi

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// limits are the parts of the server that hold its bounds under hostile or
// careless clients (guarantee 8): admission gates, the shared watch of
// snapshot states, the lifecycle of API shapes and the served tables.
type limits struct {
	admit     *admission
	snapWatch *stateWatch
	life      *lifecycle
	served    *servedTables
	listener  *limitListener // set by serve
}

// setupLimits builds the limits of s from its configuration and registers
// their metrics.
func (s *Server) setupLimits(defs, states jetstream.KeyValue) {
	a := s.cfg.API
	s.admit = newAdmission(a.MaxNewShapeRequests, a.MaxLiveRequests, a.MaxSubsetRequests, a.RetryAfter)
	s.snapWatch = newStateWatch(states, s.log)
	s.life = newLifecycle(defs, s.bus, a.MaxShapes, a.ShapeIdleTimeout, s.shapes.remove, s.log)
	s.served = &servedTables{seen: map[string]servedEntry{}}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	s.reg.MustRegister(
		gauge("fanout_shapeapi_api_shapes", "Shapes created through the API (bounded by api.max_shapes).", func() float64 { return float64(s.life.count()) }),
		gauge("fanout_shapeapi_pending_snapshots", "Shapes whose initial snapshot is not done (new API shapes are refused at api.max_pending_snapshots).",
			func() float64 { return float64(s.snapWatch.pendingSnapshots()) }),
		gauge("fanout_shapeapi_new_shape_requests", "Requests registering a shape or waiting for its snapshot (bounded by api.max_new_shape_requests).",
			func() float64 { return float64(s.admit.newShapes.inFlight()) }),
		gauge("fanout_shapeapi_live_requests", "Live requests in progress (bounded by api.max_live_requests).", func() float64 { return float64(s.admit.live.inFlight()) }),
		gauge("fanout_shapeapi_subset_requests", "Subset requests in progress (bounded by api.max_subset_requests).", func() float64 { return float64(s.admit.subsets.inFlight()) }),
		gauge("fanout_shapeapi_connections", "Open client connections (bounded by api.max_connections).", func() float64 {
			if s.listener == nil {
				return 0
			}
			return float64(s.listener.open())
		}),
	)
}

// runLimits starts the limits' goroutines on wg until ctx ends.
func (s *Server) runLimits(ctx context.Context, wg *sync.WaitGroup) {
	wg.Go(func() { s.snapWatch.run(ctx) })
	wg.Go(func() { s.life.run(ctx) })
}

// httpServer is the API's server on ln: connections bounded in number and
// in time (conns.go).
func (s *Server) httpServer(ctx context.Context, ln net.Listener) (*http.Server, net.Listener) {
	a := s.cfg.API
	n := maxConnections(a.MaxConnections)
	s.listener = newLimitListener(ln, n)
	s.log.Info("client connections bounded", "max_connections", n, "read_timeout", a.ReadTimeout, "write_timeout", a.WriteTimeout, "idle_timeout", a.IdleTimeout)
	return &http.Server{
		Handler:           withDeadlines(s.Handler(ctx), a.WriteTimeout),
		ReadHeaderTimeout: min(10*time.Second, a.ReadTimeout),
		ReadTimeout:       a.ReadTimeout,
		IdleTimeout:       a.IdleTimeout,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}, s.listener
}

// admitRequest passes a request through the gate of its kind (live,
// subset); false: it was refused and answered.
func (s *Server) admitRequest(w http.ResponseWriter, req *Request) (release func(), ok bool) {
	release, refused := s.admit.admit(s.admit.requestKind(req))
	if refused != nil {
		s.refuse(w, refused)
		return nil, false
	}
	return release, true
}
