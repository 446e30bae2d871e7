package consumers

import (
	"fmt"
	"time"
)

// CompactionConfig is storage.compaction (configs/consumer.yaml documents
// every key).
type CompactionConfig struct {
	Enabled           bool          `mapstructure:"enabled"`
	Retain            time.Duration `mapstructure:"retain"`
	Ratio             float64       `mapstructure:"ratio"`
	MinLogBytes       int64         `mapstructure:"min_log_bytes"`
	MinInterval       time.Duration `mapstructure:"min_interval"`
	MaxConcurrent     int           `mapstructure:"max_concurrent"`
	MaxBytesPerSecond int64         `mapstructure:"max_bytes_per_second"`
}

// Validate checks storage.compaction.
func (c CompactionConfig) Validate() error {
	switch {
	case c.Retain < time.Second:
		return fmt.Errorf("config key storage.compaction.retain: %s is under 1s", c.Retain)
	case c.Ratio < 0.1 || c.Ratio > 1000:
		return fmt.Errorf("config key storage.compaction.ratio: %g is not between 0.1 and 1000", c.Ratio)
	case c.MinLogBytes < 1024:
		return fmt.Errorf("config key storage.compaction.min_log_bytes: %d is under 1024", c.MinLogBytes)
	case c.MinInterval < 0:
		return fmt.Errorf("config key storage.compaction.min_interval: %s is negative", c.MinInterval)
	case c.MaxConcurrent < 1 || c.MaxConcurrent > 64:
		return fmt.Errorf("config key storage.compaction.max_concurrent: %d is not between 1 and 64", c.MaxConcurrent)
	case c.MaxBytesPerSecond != 0 && c.MaxBytesPerSecond < 1<<20:
		return fmt.Errorf("config key storage.compaction.max_bytes_per_second: %d is not 0 (unbounded) or at least 1048576", c.MaxBytesPerSecond)
	}
	return nil
}

// compactionPolicy decides when a shape is compacted: pure, so every case
// is a line of a table test (compaction_policy_test.go).
type compactionPolicy struct {
	ratio       float64
	minLogBytes int64
	minInterval time.Duration
}

func newCompactionPolicy(c CompactionConfig) compactionPolicy {
	return compactionPolicy{ratio: c.Ratio, minLogBytes: c.MinLogBytes, minInterval: c.MinInterval}
}

// shapeSize is what the policy knows of one shape.
type shapeSize struct {
	logBytes  int64     // the log the writer appends to (measured, plus appended since)
	baseBytes int64     // the current generation's base (the rows at its start)
	last      time.Time // when its last compaction ended (zero: none here)
	failures  int       // compactions that failed in a row
}

// verdict is what the policy says of a shape: compact it now, or look
// again once its log reaches logAt bytes, or not before notBefore.
type verdict struct {
	compact   bool
	logAt     int64
	notBefore time.Time
}

// decide is the policy: a log of at least minLogBytes and ratio x the
// base is compacted, no sooner than minInterval after the last compaction
// of the shape, and after failures later still (backoff).
func (p compactionPolicy) decide(s shapeSize, now time.Time) verdict {
	threshold := max(p.minLogBytes, int64(p.ratio*float64(s.baseBytes)))
	if s.logBytes < threshold {
		return verdict{logAt: threshold}
	}
	wait := p.minInterval
	if s.failures > 0 {
		wait = failureBackoff(s.failures, p.minInterval)
	}
	if !s.last.IsZero() && now.Before(s.last.Add(wait)) {
		return verdict{notBefore: s.last.Add(wait)}
	}
	return verdict{compact: true}
}

// failureBackoff is the wait after n failed compactions of a shape in a
// row: doubling from max(minInterval, 10s), at most an hour.
func failureBackoff(n int, minInterval time.Duration) time.Duration {
	d := max(minInterval, 10*time.Second)
	for i := 1; i < n && d < time.Hour; i++ {
		d *= 2
	}
	return min(d, time.Hour)
}
