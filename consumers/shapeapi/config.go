package shapeapi

import (
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
		Dir string `mapstructure:"dir" required:"true"`
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
	return c.API.Validate()
}
