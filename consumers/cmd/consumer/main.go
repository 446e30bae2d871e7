// Command consumer persists the shape logs of the partitions flushd binds to
// it. Configuration: configs/consumer.yaml, --config FILE, FANOUT_* env, flags.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/consumers"
	"github.com/fanout/pipeline/fanout/observe"
)

func main() {
	var cfg consumers.Config
	configs.MustLoad("consumer", &cfg)
	log := observe.NewLogger(cfg.Log.Format, cfg.Log.Level, "consumer").With("consumer", cfg.Consumer.ID)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	svc, err := consumers.New(cfg, log)
	if err == nil {
		err = svc.Run(ctx)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "consumer: fatal: %v\n", err)
		os.Exit(1)
	}
	log.Info("stopped cleanly")
}
