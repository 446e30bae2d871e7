package configs

import (
	"fmt"
	"strings"
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

	// Tables narrows the tables served (those of postgres.publication) to
	// these "schema.table" names ("schema.*": a whole schema); empty: all.
	Tables []string `mapstructure:"tables"`

	// Admission: requests over these are answered 503
	// concurrent_request_limit_exceeded with retry-after RetryAfter.
	MaxNewShapeRequests int           `mapstructure:"max_new_shape_requests"`
	MaxLiveRequests     int           `mapstructure:"max_live_requests"`
	MaxSubsetRequests   int           `mapstructure:"max_subset_requests"`
	SubsetConnections   int           `mapstructure:"subset_connections"`
	SubsetTimeout       time.Duration `mapstructure:"subset_timeout"`
	RetryAfter          time.Duration `mapstructure:"retry_after"`

	// Shape lifecycle of the shapes the API creates.
	MaxShapes           int           `mapstructure:"max_shapes"`
	MaxPendingSnapshots int           `mapstructure:"max_pending_snapshots"`
	ShapeIdleTimeout    time.Duration `mapstructure:"shape_idle_timeout"`

	// Cost of a definition (fanout/match.Budget, and its size).
	MaxWhereNodes      int `mapstructure:"max_where_nodes"`
	MaxWhereDepth      int `mapstructure:"max_where_depth"`
	MaxWhereFunctions  int `mapstructure:"max_where_functions"`
	MaxWhereListItems  int `mapstructure:"max_where_list_items"`
	MaxDefinitionBytes int `mapstructure:"max_definition_bytes"`

	// Connections: deadlines and how many may be open.
	ReadTimeout    time.Duration `mapstructure:"read_timeout"`
	WriteTimeout   time.Duration `mapstructure:"write_timeout"`
	IdleTimeout    time.Duration `mapstructure:"idle_timeout"`
	MaxConnections int           `mapstructure:"max_connections"`
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
	for _, t := range a.Tables {
		if strings.Count(t, ".") != 1 || strings.HasPrefix(t, ".") || strings.HasSuffix(t, ".") {
			return fmt.Errorf("config key api.tables: %q is not schema.table or schema.*", t)
		}
	}
	atLeastOne := []struct {
		key string
		val int
	}{
		{"api.max_new_shape_requests", a.MaxNewShapeRequests}, {"api.max_live_requests", a.MaxLiveRequests},
		{"api.max_subset_requests", a.MaxSubsetRequests}, {"api.subset_connections", a.SubsetConnections},
		{"api.max_shapes", a.MaxShapes}, {"api.max_pending_snapshots", a.MaxPendingSnapshots},
		{"api.max_where_nodes", a.MaxWhereNodes}, {"api.max_where_depth", a.MaxWhereDepth},
		{"api.max_where_functions", a.MaxWhereFunctions}, {"api.max_where_list_items", a.MaxWhereListItems},
	}
	for _, c := range atLeastOne {
		if c.val < 1 {
			return fmt.Errorf("config key %s: %d is under 1", c.key, c.val)
		}
	}
	if a.MaxDefinitionBytes < 1024 {
		return fmt.Errorf("config key api.max_definition_bytes: %d is under 1024", a.MaxDefinitionBytes)
	}
	if a.MaxConnections < 0 {
		return fmt.Errorf("config key api.max_connections: %d is negative (0: derived from the descriptor limit)", a.MaxConnections)
	}
	atLeast := []struct {
		key      string
		val, min time.Duration
	}{
		{"api.subset_timeout", a.SubsetTimeout, time.Second}, {"api.retry_after", a.RetryAfter, time.Second},
		{"api.read_timeout", a.ReadTimeout, time.Second}, {"api.write_timeout", a.WriteTimeout, time.Second},
		{"api.idle_timeout", a.IdleTimeout, time.Second},
	}
	for _, d := range atLeast {
		if d.val < d.min {
			return fmt.Errorf("config key %s: %s is under %s", d.key, d.val, d.min)
		}
	}
	if a.ShapeIdleTimeout < 0 {
		return fmt.Errorf("config key api.shape_idle_timeout: %s is negative (0s: API shapes never expire for being idle)", a.ShapeIdleTimeout)
	}
	return nil
}
