package configs

import (
	"fmt"
	"time"
)

// API is the HTTP shape API section (configs/shapeapi.yaml).
type API struct {
	// Addr serves GET /v1/shape and /v1/health.
	Addr string `mapstructure:"addr" required:"true"`
	// Secret, when set, must be sent as ?secret= (or api_secret=).
	Secret          string        `mapstructure:"secret"`
	ChunkBytes      int           `mapstructure:"chunk_bytes"`
	LongPollTimeout time.Duration `mapstructure:"long_poll_timeout"`
	MaxAge          time.Duration `mapstructure:"max_age"`
	StaleAge        time.Duration `mapstructure:"stale_age"`
	AllowDelete     bool          `mapstructure:"allow_delete"`
	// ReadyTimeout bounds how long a request for a new shape waits for
	// its initial snapshot before a 503 (the client retries).
	ReadyTimeout time.Duration `mapstructure:"ready_timeout"`
}

// Validate checks the api section.
func (a API) Validate() error {
	if a.ChunkBytes < 1024 || a.ChunkBytes > 256<<20 {
		return fmt.Errorf("config key api.chunk_bytes: %d is not between 1024 and 268435456", a.ChunkBytes)
	}
	if a.LongPollTimeout < 100*time.Millisecond || a.LongPollTimeout > 40*time.Second {
		return fmt.Errorf("config key api.long_poll_timeout: %s is not between 100ms and 40s (the client gives up at 45s)", a.LongPollTimeout)
	}
	if a.MaxAge < 0 || a.StaleAge < 0 {
		return fmt.Errorf("config keys api.max_age and api.stale_age must not be negative")
	}
	if a.ReadyTimeout < time.Second {
		return fmt.Errorf("config key api.ready_timeout: %s is under 1s", a.ReadyTimeout)
	}
	return nil
}
