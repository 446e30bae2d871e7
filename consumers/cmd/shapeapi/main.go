// Command shapeapi serves the shape logs over Electric's HTTP shape API
// (GET /v1/shape), so the Electric clients sync shapes. Configuration:
// configs/shapeapi.yaml, --config FILE, FANOUT_* env, flags.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/consumers/shapeapi"
	"github.com/fanout/pipeline/fanout/observe"
)

func main() {
	var cfg shapeapi.Config
	configs.MustLoad("shapeapi", &cfg)
	log := observe.NewLogger(cfg.Log.Format, cfg.Log.Level, "shapeapi")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	srv, err := shapeapi.New(ctx, cfg, log)
	if err == nil {
		err = srv.Run(ctx)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "shapeapi: fatal: %v\n", err)
		os.Exit(1)
	}
	log.Info("stopped cleanly")
}
