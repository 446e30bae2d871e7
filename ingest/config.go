package ingest

import (
	"fmt"
	"time"

	"github.com/fanout/pipeline/configs"
)

// Config is ingest's configuration; configs/ingest.yaml documents every key.
type Config struct {
	Postgres PostgresConfig `mapstructure:"postgres"`
	NATS     configs.NATS   `mapstructure:"nats"`
	Bus      configs.Bus    `mapstructure:"bus"`
	Ingest   Limits         `mapstructure:"ingest"`
	HTTP     configs.HTTP   `mapstructure:"http"`
	Log      configs.Log    `mapstructure:"log"`
}

// PostgresConfig is the postgres section: where to read and how to confirm.
type PostgresConfig struct {
	URL                 string `mapstructure:"url" required:"true"`
	Slot                string `mapstructure:"slot" required:"true"`
	Publication         string `mapstructure:"publication" required:"true"`
	ReplicaIdentityFull bool   `mapstructure:"replica_identity_full"`
	// The ALTER TABLE waits at most this for its lock, and is tried at
	// most this many times (identity.go).
	ReplicaIdentityLockTimeout time.Duration `mapstructure:"replica_identity_lock_timeout"`
	ReplicaIdentityAttempts    int           `mapstructure:"replica_identity_attempts"`
	StatusInterval             time.Duration `mapstructure:"status_interval"`
	IdleHeartbeat              time.Duration `mapstructure:"idle_heartbeat"`
}

// Limits is the ingest section: fragment sizes, memory and retry bounds.
type Limits struct {
	MaxFragmentChanges int           `mapstructure:"max_fragment_changes"`
	MaxFragmentBytes   int           `mapstructure:"max_fragment_bytes"`
	MaxBufferedBytes   int           `mapstructure:"max_buffered_bytes"`
	MaxMessageBytes    int           `mapstructure:"max_message_bytes"`
	MaxInflight        int           `mapstructure:"max_inflight"`
	MaxInflightBytes   int           `mapstructure:"max_inflight_bytes"`
	AckTimeout         time.Duration `mapstructure:"ack_timeout"`
	ProgressInterval   time.Duration `mapstructure:"progress_interval"`
	MaxRetries         int           `mapstructure:"max_retries"`
	MaxBackoff         time.Duration `mapstructure:"max_backoff"`
	DrainTimeout       time.Duration `mapstructure:"drain_timeout"`

	// Replication continuity (continuity.go, resync.go).
	OnContinuityBreak       string        `mapstructure:"on_continuity_break"`
	ContinuityCheckInterval time.Duration `mapstructure:"continuity_check_interval"`
	SafeWALWarnBytes        int64         `mapstructure:"safe_wal_warn_bytes"`
}

// Values of ingest.on_continuity_break.
const (
	OnBreakResync = "resync"
	OnBreakStop   = "stop"
)

// Validate checks values that have a type but not a meaning.
func (c *Config) Validate() error {
	if err := configs.CheckCommon(c, c.Bus, c.Log); err != nil {
		return err
	}
	if !identPattern.MatchString(c.Postgres.Slot) {
		return fmt.Errorf("config key postgres.slot: %q is not a lower-case identifier (a-z, 0-9, _)", c.Postgres.Slot)
	}
	if !identPattern.MatchString(c.Postgres.Publication) {
		return fmt.Errorf("config key postgres.publication: %q is not a lower-case identifier (a-z, 0-9, _)", c.Postgres.Publication)
	}
	if c.Postgres.StatusInterval < 100*time.Millisecond || c.Postgres.StatusInterval > 5*time.Minute {
		return fmt.Errorf("config key postgres.status_interval: %s is not between 100ms and 5m (keep it under wal_sender_timeout/3)", c.Postgres.StatusInterval)
	}
	if c.Postgres.ReplicaIdentityLockTimeout < time.Millisecond || c.Postgres.ReplicaIdentityLockTimeout > 10*time.Second {
		return fmt.Errorf("config key postgres.replica_identity_lock_timeout: %s is not between 1ms and 10s (queries on the table wait behind it)", c.Postgres.ReplicaIdentityLockTimeout)
	}
	if c.Postgres.ReplicaIdentityAttempts < 1 {
		return fmt.Errorf("config key postgres.replica_identity_attempts: %d is under 1", c.Postgres.ReplicaIdentityAttempts)
	}
	if c.Postgres.IdleHeartbeat != 0 && c.Postgres.IdleHeartbeat < 100*time.Millisecond {
		return fmt.Errorf("config key postgres.idle_heartbeat: %s is under 100ms (0s disables it)", c.Postgres.IdleHeartbeat)
	}
	l := c.Ingest
	if l.OnContinuityBreak != OnBreakResync && l.OnContinuityBreak != OnBreakStop {
		return fmt.Errorf("config key ingest.on_continuity_break: %q is not %s or %s", l.OnContinuityBreak, OnBreakResync, OnBreakStop)
	}
	if l.ContinuityCheckInterval < 100*time.Millisecond || l.ContinuityCheckInterval > 10*time.Minute {
		return fmt.Errorf("config key ingest.continuity_check_interval: %s is not between 100ms and 10m", l.ContinuityCheckInterval)
	}
	if l.SafeWALWarnBytes < 0 {
		return fmt.Errorf("config key ingest.safe_wal_warn_bytes: %d is negative (0 disables the margin)", l.SafeWALWarnBytes)
	}
	checks := []struct {
		key      string
		val, min int
	}{
		{"ingest.max_fragment_changes", l.MaxFragmentChanges, 1},
		{"ingest.max_fragment_bytes", l.MaxFragmentBytes, 1024},
		{"ingest.max_buffered_bytes", l.MaxBufferedBytes, l.MaxFragmentBytes},
		{"ingest.max_message_bytes", l.MaxMessageBytes, 1024},
		{"ingest.max_inflight", l.MaxInflight, 1},
		{"ingest.max_inflight_bytes", l.MaxInflightBytes, l.MaxFragmentBytes},
		{"ingest.max_retries", l.MaxRetries, 1},
	}
	for _, ch := range checks {
		if ch.val < ch.min {
			return fmt.Errorf("config key %s: %d is under %d", ch.key, ch.val, ch.min)
		}
	}
	durations := []struct {
		key string
		val time.Duration
	}{
		{"ingest.ack_timeout", l.AckTimeout},
		{"ingest.progress_interval", l.ProgressInterval},
		{"ingest.max_backoff", l.MaxBackoff},
		{"ingest.drain_timeout", l.DrainTimeout},
	}
	for _, d := range durations {
		if d.val < time.Millisecond {
			return fmt.Errorf("config key %s: %s is under 1ms", d.key, d.val)
		}
	}
	return nil
}
