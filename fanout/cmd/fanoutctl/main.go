// Command fanoutctl manages shapes and shows the pipeline's status:
//
//	fanoutctl shape add --table public.items --where "owner = 7" [--columns a,b]
//	fanoutctl shape rm HANDLE
//	fanoutctl shape ls
//	fanoutctl shape rows HANDLE
//	fanoutctl status
//
// Every command takes --json, --config FILE and the keys of
// configs/fanoutctl.yaml as flags or FANOUT_* environment variables.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/pflag"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/fanout"
)

// Config is fanoutctl's configuration (configs/fanoutctl.yaml).
type Config struct {
	Postgres struct {
		URL  string `mapstructure:"url"`
		Slot string `mapstructure:"slot"`
	} `mapstructure:"postgres"`
	NATS    configs.NATS `mapstructure:"nats"`
	Bus     configs.Bus  `mapstructure:"bus"`
	Storage struct {
		Dir string `mapstructure:"dir"`
	} `mapstructure:"storage"`
	Log configs.Log `mapstructure:"log"`
}

const usage = `usage:
  fanoutctl shape add --table SCHEMA.TABLE [--where SQL] [--param VALUE]... [--columns a,b]
  fanoutctl shape rm HANDLE
  fanoutctl shape ls
  fanoutctl shape rows HANDLE
  fanoutctl status
flags: --json, --config FILE, and every key of configs/fanoutctl.yaml (--nats.url ...)`

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, configs.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "fanoutctl:", err)
		os.Exit(1)
	}
}

// command is what the words before the flags ask for.
type command struct {
	name    string
	table   string
	where   string
	columns []string
	params  []string      // shape add: values of $1, $2, ...
	wait    time.Duration // shape rows: how long to wait for the shape to be ready
	json    bool
	args    []string
}

func run(argv []string) error {
	var cmd command
	extra := pflag.NewFlagSet("fanoutctl", pflag.ContinueOnError)
	extra.StringVar(&cmd.table, "table", "", "shape add: schema-qualified table")
	extra.StringVar(&cmd.where, "where", "", "shape add: SQL where clause")
	extra.StringSliceVar(&cmd.columns, "columns", nil, "shape add: columns to keep (must include the primary key)")
	extra.StringArrayVar(&cmd.params, "param", nil, "shape add: value of the where clause's next $n placeholder ($1 first; repeat the flag)")
	extra.DurationVar(&cmd.wait, "wait", 0, "shape rows: wait up to this long for the shape to be ready")
	extra.BoolVar(&cmd.json, "json", false, "machine-readable output")
	var cfg Config
	words, err := configs.LoadCommand("fanoutctl", argv, &cfg, extra)
	if err != nil {
		return err
	}
	if len(words) == 0 {
		return errors.New(usage)
	}
	cmd.name = words[0]
	if cmd.name == "shape" {
		if len(words) < 2 {
			return errors.New(usage)
		}
		cmd.name = "shape " + words[1]
		cmd.args = words[2:]
	} else {
		cmd.args = words[1:]
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute+cmd.wait)
	defer cancel()
	if cmd.name == "shape rows" {
		// Rows are read from the consumers' storage; NATS gives the shape's key.
		return withBus(ctx, cfg, func(bus *fanout.Bus) error { return shapeRowsWait(ctx, cfg, bus, cmd, cmd.wait) })
	}
	switch cmd.name {
	case "shape add":
		return withBus(ctx, cfg, func(bus *fanout.Bus) error { return shapeAdd(ctx, cfg, bus, cmd) })
	case "shape rm":
		return withBus(ctx, cfg, func(bus *fanout.Bus) error { return shapeRm(ctx, bus, cmd) })
	case "shape ls":
		return withBus(ctx, cfg, func(bus *fanout.Bus) error { return shapeLs(ctx, bus, cmd, cfg.Bus.Partitions, cfg.Storage.Dir) })
	case "status":
		return withBus(ctx, cfg, func(bus *fanout.Bus) error { return status(ctx, cfg, bus, cmd) })
	}
	return fmt.Errorf("unknown command %q\n%s", cmd.name, usage)
}

func withBus(ctx context.Context, cfg Config, f func(*fanout.Bus) error) error {
	opts := []nats.Option{nats.Name("fanoutctl"), nats.Timeout(5 * time.Second)}
	if cfg.NATS.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATS.CredsFile))
	}
	if cfg.NATS.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.NATS.CAFile))
	}
	nc, err := nats.Connect(cfg.NATS.URL, opts...)
	if err != nil {
		hint := fanout.ConnectErrorHint(err)
		if hint == "" {
			hint = "set --nats.url or FANOUT_NATS_URL"
		}
		return fmt.Errorf("connect to NATS at %s: %w (%s)", fanout.RedactURL(cfg.NATS.URL), err, hint)
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
	return f(bus)
}
