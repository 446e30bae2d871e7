package shapeapi

import (
	"fmt"
	"time"

	"github.com/fanout/pipeline/configs"
)

// Config is shapeapi's configuration (configs/shapeapi.yaml documents every key).
type Config struct {
	API      configs.API `mapstructure:"api"`
	Postgres struct {
		URL string `mapstructure:"url" required:"true"`
		// Publication is ingest's: only its tables are served.
		Publication string `mapstructure:"publication" required:"true"`
	} `mapstructure:"postgres"`
	Storage struct {
		Dir        string `mapstructure:"dir" required:"true"`
		Compaction struct {
			// Retain is the consumers' storage.compaction.retain: it
			// bounds the cache lifetime of offset=-1 responses.
			Retain time.Duration `mapstructure:"retain"`
		} `mapstructure:"compaction"`
	} `mapstructure:"storage"`
	NATS configs.NATS `mapstructure:"nats"`
	Bus  configs.Bus  `mapstructure:"bus"`
	HTTP configs.HTTP `mapstructure:"http"`
	Log  configs.Log  `mapstructure:"log"`
}

// Validate checks values that have a type but not a meaning.
func (c *Config) Validate() error {
	if err := configs.CheckCommon(c, c.Bus, c.Log); err != nil {
		return err
	}
	if err := c.API.Validate(); err != nil {
		return err
	}
	// A cached catch-up response hands out offsets up to max_age +
	// stale_age old: those must still resume.
	if r := c.Storage.Compaction.Retain; r < time.Second || c.API.MaxAge+c.API.StaleAge > r {
		return fmt.Errorf("config key storage.compaction.retain: %s must be at least 1s and cover api.max_age + api.stale_age (%s): offsets from cached responses must still resume (set it to the consumers' value, and raise both there if needed)",
			r, c.API.MaxAge+c.API.StaleAge)
	}
	return nil
}
