// Package observe gives every service the same operational surface: slog
// logging configured from the log section, and an HTTP server with
// /metrics (Prometheus), /healthz (the process runs), /readyz (it is
// connected and doing its job) and, when http.pprof is set, /debug/pprof
// (Go profiles). The server listens on http.addr, loopback by default: it
// has no authentication.
package observe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewLogger returns a slog logger writing to stderr in format "text" or
// "json" at level "debug", "info", "warn" or "error".
func NewLogger(format, level, service string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	return slog.New(h).With("service", service)
}

// NewRegistry returns a Prometheus registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Readiness is set by a service when it is connected and working.
type Readiness struct {
	ready  atomic.Bool
	reason atomic.Value // string
}

// Set marks the service ready (reason "") or not ready with a reason.
func (r *Readiness) Set(ready bool, reason string) {
	r.ready.Store(ready)
	r.reason.Store(reason)
}

// Option configures Serve.
type Option func(*serveConfig)

type serveConfig struct {
	pprof bool
}

// Pprof serves the Go profiles under /debug/pprof when on (config key
// http.pprof). The command line (/debug/pprof/cmdline) is never served: it
// may hold a secret passed as a flag.
func Pprof(on bool) Option { return func(c *serveConfig) { c.pprof = on } }

// Serve runs the HTTP server on addr until ctx ends. An empty addr serves nothing.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, ready *Readiness, log *slog.Logger, opts ...Option) error {
	var cfg serveConfig
	for _, o := range opts {
		o(&cfg)
	}
	if addr == "" {
		<-ctx.Done()
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready != nil && !ready.ready.Load() {
			reason, _ := ready.reason.Load().(string)
			http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	served := "/metrics, /healthz and /readyz"
	if cfg.pprof {
		// Go profiles (CPU, heap, goroutines) on the same port as /metrics,
		// for `go tool pprof http://ADDR/debug/pprof/profile` and the
		// benchmarks. Not the command line: it may hold a secret.
		mux.HandleFunc("/debug/pprof/", profileIndex)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		served += " and /debug/pprof"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("http.addr %s: %w (set http.addr to a free address, or empty to disable)", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	log.Info("serving "+served, "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdownCtx)
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// profileIndex is pprof.Index without the command line, which the index
// would otherwise serve as /debug/pprof/cmdline.
func profileIndex(w http.ResponseWriter, r *http.Request) {
	if strings.TrimPrefix(r.URL.Path, "/debug/pprof/") == "cmdline" {
		http.NotFound(w, r)
		return
	}
	pprof.Index(w, r)
}
