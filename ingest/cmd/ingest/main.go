// Command ingest streams Postgres logical replication to the FANOUT
// JetStream stream, one fragment per shape and transaction piece.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/fanout/observe"
	"github.com/fanout/pipeline/ingest"
)

func main() {
	var cfg ingest.Config
	if err := configs.Load("ingest", os.Args[1:], &cfg); err != nil {
		if errors.Is(err, configs.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "ingest: bad configuration:", err)
		os.Exit(2)
	}
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
