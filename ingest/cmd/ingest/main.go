// Command ingest streams Postgres logical replication to the FANOUT
// JetStream stream, one fragment per shape and transaction piece.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/fanout/observe"
	"github.com/fanout/pipeline/ingest"
)

func main() {
	var cfg ingest.Config
	configs.MustLoad("ingest", &cfg)
	log := observe.NewLogger(cfg.Log.Format, cfg.Log.Level, "ingest")
	// SIGTERM and SIGINT drain: stop reading, wait for acks, confirm, exit 0.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := ingest.Run(ctx, cfg, log, observe.NewRegistry()); err != nil {
		log.Error("ingest stopped on an error", "err", err)
		stop()
		os.Exit(1)
	}
}
