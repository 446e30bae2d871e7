package configs

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Snapshot is the consumer's snapshot section (configs/consumer.yaml
// documents every key): how this replica takes its share of the shapes'
// initial snapshots.
type Snapshot struct {
	Enabled           bool          `mapstructure:"enabled"`
	Concurrency       int           `mapstructure:"concurrency"`
	PoolSize          int           `mapstructure:"pool_size"`
	ChunkRows         int           `mapstructure:"chunk_rows"`
	ChunkBytes        int           `mapstructure:"chunk_bytes"`
	Lease             time.Duration `mapstructure:"lease"`
	RoutingTimeout    time.Duration `mapstructure:"routing_timeout"`
	VisibilityTimeout time.Duration `mapstructure:"visibility_timeout"`
	StatementTimeout  time.Duration `mapstructure:"statement_timeout"`
	MaxAttempts       int           `mapstructure:"max_attempts"`
	GroupShapes       int           `mapstructure:"group_shapes"`
	ReconnectTimeout  time.Duration `mapstructure:"reconnect_timeout"`
}

// SnapshotConfig is what the snapshot runner reads of the consumer's
// configuration: its Postgres URL and the snapshot section. With no URL,
// or snapshot.enabled false, this replica takes no snapshots.
type SnapshotConfig struct {
	Postgres struct {
		URL string `mapstructure:"url"`
	} `mapstructure:"postgres"`
	Snapshot Snapshot `mapstructure:"snapshot"`
}

// Validate checks the snapshot section.
func (c *SnapshotConfig) Validate() error {
	s := c.Snapshot
	switch {
	case s.Concurrency < 1 || s.Concurrency > 64:
		return fmt.Errorf("config key snapshot.concurrency: %d is not between 1 and 64", s.Concurrency)
	case s.PoolSize < s.Concurrency:
		return fmt.Errorf("config key snapshot.pool_size: %d is under snapshot.concurrency (%d)", s.PoolSize, s.Concurrency)
	case s.ChunkRows < 1:
		return fmt.Errorf("config key snapshot.chunk_rows: %d is under 1", s.ChunkRows)
	case s.ChunkBytes < 4096:
		return fmt.Errorf("config key snapshot.chunk_bytes: %d is under 4096", s.ChunkBytes)
	case s.Lease < time.Second:
		return fmt.Errorf("config key snapshot.lease: %s is under 1s", s.Lease)
	case s.RoutingTimeout < time.Second || s.VisibilityTimeout < time.Second:
		return fmt.Errorf("config keys snapshot.routing_timeout and snapshot.visibility_timeout must be at least 1s")
	case s.MaxAttempts < 1 || s.MaxAttempts > 100:
		return fmt.Errorf("config key snapshot.max_attempts: %d is not between 1 and 100", s.MaxAttempts)
	case s.GroupShapes < 1 || s.GroupShapes > 1000:
		return fmt.Errorf("config key snapshot.group_shapes: %d is not between 1 and 1000", s.GroupShapes)
	case s.ReconnectTimeout < 0:
		return fmt.Errorf("config key snapshot.reconnect_timeout: %s is negative", s.ReconnectTimeout)
	}
	return nil
}

// LoadSnapshotConfig reads the consumer's snapshot settings the way the
// consumer reads the rest (embedded defaults, --config, FANOUT_* env,
// flags) from the process's arguments; when the process is not the
// consumer binary (an in-process test), from defaults and env only.
func LoadSnapshotConfig() (SnapshotConfig, error) {
	var c SnapshotConfig
	var args []string
	if filepath.Base(os.Args[0]) == "consumer" {
		args = os.Args[1:]
	}
	if _, err := LoadCommand("consumer", args, &c, nil); err != nil {
		return c, err
	}
	return c, nil
}
