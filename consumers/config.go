package consumers

import (
	"fmt"
	"time"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/consumers/shapelog"
)

// Config is the consumer's configuration (configs/consumer.yaml documents every key).
type Config struct {
	Consumer struct {
		ID                string        `mapstructure:"id" required:"true"`
		Batch             int           `mapstructure:"batch"`
		HeartbeatInterval time.Duration `mapstructure:"heartbeat_interval"`
		MaxDeliver        int           `mapstructure:"max_deliver"`
		BusRetryTimeout   time.Duration `mapstructure:"bus_retry_timeout"`
	} `mapstructure:"consumer"`
	Storage struct {
		Dir         string           `mapstructure:"dir" required:"true"`
		MaxOpenLogs int              `mapstructure:"max_open_logs"`
		Compaction  CompactionConfig `mapstructure:"compaction"`
	} `mapstructure:"storage"`
	// Snapshot is read for its chunk sizes, which compacted bases use too
	// (the snapshot runner validates the section).
	Snapshot configs.Snapshot `mapstructure:"snapshot"`
	NATS     configs.NATS     `mapstructure:"nats"`
	Bus      configs.Bus      `mapstructure:"bus"`
	HTTP     configs.HTTP     `mapstructure:"http"`
	Log      configs.Log      `mapstructure:"log"`
}

// Validate checks values that have a type but not a meaning.
func (c *Config) Validate() error {
	if err := configs.CheckCommon(c, c.Bus, c.Log); err != nil {
		return err
	}
	k := c.Consumer
	if k.Batch < 1 || k.Batch > 10000 {
		return fmt.Errorf("config key consumer.batch: %d is not between 1 and 10000", k.Batch)
	}
	if k.HeartbeatInterval < 10*time.Millisecond || k.HeartbeatInterval > time.Minute {
		return fmt.Errorf("config key consumer.heartbeat_interval: %s is not between 10ms and 1m", k.HeartbeatInterval)
	}
	if k.MaxDeliver < 1 || k.MaxDeliver > 100 {
		return fmt.Errorf("config key consumer.max_deliver: %d is not between 1 and 100", k.MaxDeliver)
	}
	if k.BusRetryTimeout < time.Second {
		return fmt.Errorf("config key consumer.bus_retry_timeout: %s is under 1s", k.BusRetryTimeout)
	}
	if n := c.Storage.MaxOpenLogs; n != 0 && (n < shapelog.MinOpenLogs || n > 1_000_000) {
		return fmt.Errorf("config key storage.max_open_logs: %d is not 0 (sized from the descriptor limit) or between %d and 1000000", n, shapelog.MinOpenLogs)
	}
	return c.Storage.Compaction.Validate()
}
