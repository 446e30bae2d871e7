package configs

import (
	"fmt"
	"time"

	"github.com/fanout/pipeline/fanout"
)

// Postgres is the database section.
type Postgres struct {
	// URL is a libpq URL; ingest adds replication=database for its stream.
	URL string `mapstructure:"url" required:"true"`
}

// NATS is the bus connection section.
type NATS struct {
	URL string `mapstructure:"url" required:"true"`
	// CredsFile is a NATS user credentials file (empty: no auth).
	CredsFile string `mapstructure:"creds_file"`
	// CAFile enables TLS, trusting this CA.
	CAFile string `mapstructure:"ca_file"`
}

// Bus sizes the stream and buckets (fanout.BusConfig).
type Bus struct {
	Partitions      int           `mapstructure:"partitions"`
	Replicas        int           `mapstructure:"replicas"`
	DuplicateWindow time.Duration `mapstructure:"duplicate_window"`
	MaxBytes        int64         `mapstructure:"max_bytes"`
}

// BusConfig converts to the fanout type.
func (b Bus) BusConfig() fanout.BusConfig {
	return fanout.BusConfig{Replicas: b.Replicas, DuplicateWindow: b.DuplicateWindow, MaxBytes: b.MaxBytes}
}

// Validate checks the bus section.
func (b Bus) Validate() error {
	if b.Partitions < 1 || b.Partitions > 4096 {
		return fmt.Errorf("config key bus.partitions: %d is not between 1 and 4096", b.Partitions)
	}
	if b.Replicas != 1 && b.Replicas != 3 && b.Replicas != 5 {
		return fmt.Errorf("config key bus.replicas: %d is not 1, 3 or 5", b.Replicas)
	}
	if b.DuplicateWindow < time.Second {
		return fmt.Errorf("config key bus.duplicate_window: %s is under 1s", b.DuplicateWindow)
	}
	return nil
}

// HTTP is the metrics and health endpoint section.
type HTTP struct {
	// Addr serves /metrics, /healthz and /readyz; empty disables it. The
	// defaults are loopback: these endpoints have no authentication.
	Addr string `mapstructure:"addr"`
	// Pprof serves Go profiles under /debug/pprof (off by default).
	Pprof bool `mapstructure:"pprof"`
}

// Log is the logging section.
type Log struct {
	Format string `mapstructure:"format"`
	Level  string `mapstructure:"level"`
}

// Validate checks the log section.
func (l Log) Validate() error {
	if l.Format != "text" && l.Format != "json" {
		return fmt.Errorf("config key log.format: %q is not text or json", l.Format)
	}
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config key log.level: %q is not debug, info, warn or error", l.Level)
	}
	return nil
}

// CheckCommon runs the checks every service config shares: required values
// (see Require), the bus section and the log section.
func CheckCommon(cfg any, bus Bus, log Log) error {
	if err := Require(cfg); err != nil {
		return err
	}
	if err := bus.Validate(); err != nil {
		return err
	}
	return log.Validate()
}
