package flushd

import (
	"fmt"
	"time"

	"github.com/fanout/pipeline/configs"
)

// Config is flushd's configuration (configs/flushd.yaml documents every key).
type Config struct {
	Postgres struct {
		URL  string `mapstructure:"url"`
		Slot string `mapstructure:"slot"`
	} `mapstructure:"postgres"`
	NATS   configs.NATS `mapstructure:"nats"`
	Bus    configs.Bus  `mapstructure:"bus"`
	Flushd struct {
		PollInterval     time.Duration `mapstructure:"poll_interval"`
		HeartbeatTimeout time.Duration `mapstructure:"heartbeat_timeout"`
		StallGrace       time.Duration `mapstructure:"stall_grace"`
	} `mapstructure:"flushd"`
	HTTP configs.HTTP `mapstructure:"http"`
	Log  configs.Log  `mapstructure:"log"`
}

// Validate checks values that have a type but not a meaning.
func (c *Config) Validate() error {
	if err := configs.CheckCommon(c, c.Bus, c.Log); err != nil {
		return err
	}
	f := c.Flushd
	if f.PollInterval < time.Millisecond || f.PollInterval > time.Minute {
		return fmt.Errorf("config key flushd.poll_interval: %s is not between 1ms and 1m", f.PollInterval)
	}
	if f.HeartbeatTimeout < 500*time.Millisecond {
		return fmt.Errorf("config key flushd.heartbeat_timeout: %s is under 500ms", f.HeartbeatTimeout)
	}
	if f.StallGrace < f.HeartbeatTimeout {
		return fmt.Errorf("config key flushd.stall_grace: %s is shorter than flushd.heartbeat_timeout %s", f.StallGrace, f.HeartbeatTimeout)
	}
	return nil
}
