package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testConfig struct {
	Postgres Postgres `mapstructure:"postgres"`
	NATS     NATS     `mapstructure:"nats"`
	Bus      Bus      `mapstructure:"bus"`
	Flushd   struct {
		PollInterval     time.Duration `mapstructure:"poll_interval"`
		HeartbeatTimeout time.Duration `mapstructure:"heartbeat_timeout"`
		StallGrace       time.Duration `mapstructure:"stall_grace"`
	} `mapstructure:"flushd"`
	HTTP HTTP `mapstructure:"http"`
	Log  Log  `mapstructure:"log"`
}

func (c *testConfig) Validate() error {
	if err := Require(c); err != nil {
		return err
	}
	return c.Bus.Validate()
}

func writeFile(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsThenFileThenEnvThenFlag(t *testing.T) {
	var c testConfig
	if err := Load("flushd", nil, &c); err != nil {
		t.Fatal(err)
	}
	if c.Bus.Partitions != 64 || c.Flushd.HeartbeatTimeout != 5*time.Second || c.NATS.URL != "nats://127.0.0.1:4222" {
		t.Fatalf("defaults not applied: %+v", c)
	}
	file := writeFile(t, "bus:\n  partitions: 16\nnats:\n  url: nats://file:4222\n")
	t.Setenv("FANOUT_NATS_URL", "nats://env:4222")
	t.Setenv("FANOUT_FLUSHD_HEARTBEAT_TIMEOUT", "3s")
	c = testConfig{}
	if err := Load("flushd", []string{"--config", file, "--flushd.heartbeat_timeout", "2s"}, &c); err != nil {
		t.Fatal(err)
	}
	if c.Bus.Partitions != 16 {
		t.Fatalf("file value not applied: partitions %d", c.Bus.Partitions)
	}
	if c.NATS.URL != "nats://env:4222" {
		t.Fatalf("env did not override the file: %s", c.NATS.URL)
	}
	if c.Flushd.HeartbeatTimeout != 2*time.Second {
		t.Fatalf("flag did not override env: %s", c.Flushd.HeartbeatTimeout)
	}
}

func TestBadConfigGivesOneClearLineNamingTheKey(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  map[string]string
		file string
		want string
	}{
		{name: "wrong type from env", env: map[string]string{"FANOUT_BUS_PARTITIONS": "many"},
			want: `config key bus.partitions (env FANOUT_BUS_PARTITIONS): value "many" is not a whole number`},
		{name: "wrong type from flag", args: []string{"--flushd.heartbeat_timeout", "soon"},
			want: `config key flushd.heartbeat_timeout (env FANOUT_FLUSHD_HEARTBEAT_TIMEOUT): value "soon" is not a duration`},
		{name: "wrong type in file", file: "bus:\n  partitions: lots\n",
			want: `config key bus.partitions (env FANOUT_BUS_PARTITIONS): value "lots" is not a whole number`},
		{name: "unknown key in file", file: "flushd:\n  heartbeat_timout: 5s\n",
			want: `unknown key "flushd.heartbeat_timout"`},
		{name: "unknown flag", args: []string{"--nats.ulr", "x"}, want: "unknown flag: --nats.ulr"},
		{name: "missing required value", file: "nats:\n  url: \"\"\n",
			want: "missing required value: nats.url (env FANOUT_NATS_URL)"},
		{name: "out of range", args: []string{"--bus.partitions", "0"},
			want: "config key bus.partitions: 0 is not between 1 and 4096"},
		{name: "not YAML", file: "bus: [\n", want: "is not valid YAML"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := tc.args
			if tc.file != "" {
				args = append(args, "--config", writeFile(t, tc.file))
			}
			var c testConfig
			err := Load("flushd", args, &c)
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q, want one line containing %q", err, tc.want)
			}
		})
	}
}

func TestEveryServiceDefaultLoads(t *testing.T) {
	for _, svc := range []string{"ingest", "flushd", "consumer", "fanoutctl", "shapeapi"} {
		if _, err := Default(svc); err != nil {
			t.Fatalf("%s: %v", svc, err)
		}
	}
}

// api.max_age and api.stale_age take Electric's plain seconds as well as
// durations, from the environment and from a file; other duration keys
// still refuse a bare number.
func TestCacheAgesTakePlainSeconds(t *testing.T) {
	type apiConfig struct {
		API API `mapstructure:"api"`
	}
	t.Setenv("FANOUT_API_MAX_AGE", "60")
	file := writeFile(t, "api:\n  stale_age: 300\n")
	var c apiConfig
	if err := Load("shapeapi", []string{"--config", file}, &c); err != nil {
		t.Fatal(err)
	}
	if c.API.MaxAge != time.Minute || c.API.StaleAge != 5*time.Minute {
		t.Fatalf("max_age %s, stale_age %s; want 1m0s and 5m0s", c.API.MaxAge, c.API.StaleAge)
	}
	t.Setenv("FANOUT_API_MAX_AGE", "2m")
	if err := Load("shapeapi", nil, &c); err != nil || c.API.MaxAge != 2*time.Minute {
		t.Fatalf("a duration: %s %v", c.API.MaxAge, err)
	}
	t.Setenv("FANOUT_API_MAX_AGE", "soon")
	if err := Load("shapeapi", nil, &c); err == nil || !strings.Contains(err.Error(), "api.max_age") {
		t.Fatalf("a bad value: %v", err)
	}
	t.Setenv("FANOUT_API_MAX_AGE", "")
	t.Setenv("FANOUT_API_LONG_POLL_TIMEOUT", "20")
	if err := Load("shapeapi", nil, &c); err == nil || !strings.Contains(err.Error(), "api.long_poll_timeout") {
		t.Fatalf("a bare number for another duration key was accepted: %v", err)
	}
}

// The metrics endpoint has no authentication: every service's default
// http.addr is loopback, and profiles are off.
func TestMetricsDefaultToLoopbackWithoutProfiles(t *testing.T) {
	for _, svc := range []string{"ingest", "flushd", "consumer", "shapeapi"} {
		var cfg struct {
			HTTP HTTP `mapstructure:"http"`
		}
		if _, err := LoadCommand(svc, nil, &cfg, nil); err != nil {
			t.Fatalf("%s: %v", svc, err)
		}
		if !strings.HasPrefix(cfg.HTTP.Addr, "127.0.0.1:") {
			t.Errorf("%s: http.addr defaults to %q, want a 127.0.0.1 address", svc, cfg.HTTP.Addr)
		}
		if cfg.HTTP.Pprof {
			t.Errorf("%s: http.pprof defaults to true", svc)
		}
	}
}

// The shape API's limits load from the defaults and env, and a bad one
// names its key.
func TestShapeAPILimitsLoadAndNameTheirKey(t *testing.T) {
	var cfg struct {
		API API `mapstructure:"api"`
	}
	t.Setenv("FANOUT_API_TABLES", "public.items,app.*")
	if _, err := LoadCommand("shapeapi", nil, &cfg, nil); err != nil {
		t.Fatal(err)
	}
	if err := cfg.API.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if len(cfg.API.Tables) != 2 || cfg.API.Tables[1] != "app.*" || cfg.API.MaxShapes != 10000 || cfg.API.MaxWhereNodes != 256 {
		t.Fatalf("loaded %+v", cfg.API)
	}
	for _, tc := range []struct {
		edit func(*API)
		want string
	}{
		{func(a *API) { a.Tables = []string{"items"} }, "api.tables"},
		{func(a *API) { a.MaxShapes = 0 }, "api.max_shapes"},
		{func(a *API) { a.MaxWhereDepth = 0 }, "api.max_where_depth"},
		{func(a *API) { a.WriteTimeout = 0 }, "api.write_timeout"},
		{func(a *API) { a.MaxDefinitionBytes = 10 }, "api.max_definition_bytes"},
		{func(a *API) { a.ShapeIdleTimeout = -time.Second }, "api.shape_idle_timeout"},
	} {
		a := cfg.API
		tc.edit(&a)
		if err := a.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.want, err)
		}
	}
}
