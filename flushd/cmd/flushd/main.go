// Command flushd computes the safe LSN ingest confirms to Postgres and binds
// partitions to live consumers. See configs/flushd.yaml for its settings.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/observe"
	"github.com/fanout/pipeline/flushd"
)

func main() {
	var cfg flushd.Config
	configs.MustLoad("flushd", &cfg)
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "flushd:", err)
		os.Exit(1)
	}
}

func run(cfg flushd.Config) error {
	log := observe.NewLogger(cfg.Log.Format, cfg.Log.Level, "flushd")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	reg := observe.NewRegistry()
	ready := &observe.Readiness{}
	ready.Set(false, "starting")
	httpErr := make(chan error, 1)
	go func() { httpErr <- observe.Serve(ctx, cfg.HTTP.Addr, reg, ready, log, observe.Pprof(cfg.HTTP.Pprof)) }()

	nc, err := fanout.Connect(fanout.ConnectOptions{URL: cfg.NATS.URL, CredsFile: cfg.NATS.CredsFile, CAFile: cfg.NATS.CAFile, Name: "flushd"}, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	bus, err := fanout.EnsureBus(ctx, js, cfg.Bus.BusConfig())
	if err != nil {
		return err
	}
	log.Info("flushd running", "partitions", cfg.Bus.Partitions, "heartbeat_timeout", cfg.Flushd.HeartbeatTimeout)
	svcErr := make(chan error, 1)
	go func() { svcErr <- flushd.New(cfg, bus, log, reg, ready).Run(ctx) }()
	select {
	case err := <-svcErr:
		stop()
		<-httpErr
		return err
	case err := <-httpErr:
		stop()
		<-svcErr
		return err
	}
}
