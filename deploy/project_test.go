package deploy

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/spf13/viper"

	"github.com/fanout/pipeline/configs"
)

// appServices maps each compose service that runs our code to its binary,
// which is also the name of its configs/<name>.yaml.
var appServices = map[string]string{
	"ingest":    "ingest",
	"flushd":    "flushd",
	"consumer":  "consumer",
	"fanoutctl": "fanoutctl",
	"shapeapi":  "shapeapi",
}

// cmdPackages is where `make build` finds each binary's main package.
var cmdPackages = map[string]string{
	"ingest":    "./ingest/cmd/ingest",
	"flushd":    "./flushd/cmd/flushd",
	"consumer":  "./consumers/cmd/consumer",
	"fanoutctl": "./fanout/cmd/fanoutctl",
	"shapeapi":  "./consumers/cmd/shapeapi",
}

// loadProject parses docker-compose.yml the way `docker compose` does, with
// an empty environment (so the file's own defaults are what is checked) and
// the tools profile active, without a Docker engine.
func loadProject(t *testing.T) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions(
		[]string{"docker-compose.yml"},
		cli.WithWorkingDirectory("."),
		cli.WithEnv([]string{}),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithResolvedPaths(true),
		cli.WithProfiles([]string{"tools"}),
	)
	if err != nil {
		t.Fatalf("compose options: %v", err)
	}
	p, err := cli.ProjectFromOptions(context.Background(), opts)
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml has no service %q (it has %v)", name, p.ServiceNames())
	}
	return s
}

// env returns a service's environment with unset values as "".
func env(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			out[k] = *v
		} else {
			out[k] = ""
		}
	}
	return out
}

// configEnvNames lists the FANOUT_* variable of every key of a service's
// embedded default config (postgres.url -> FANOUT_POSTGRES_URL).
func configEnvNames(t *testing.T, service string) map[string]string {
	t.Helper()
	def, err := configs.Default(service)
	if err != nil {
		t.Fatalf("configs.Default(%q): %v", service, err)
	}
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(def)); err != nil {
		t.Fatalf("configs/%s.yaml: %v", service, err)
	}
	names := map[string]string{}
	for _, k := range v.AllKeys() {
		names["FANOUT_"+strings.ToUpper(strings.ReplaceAll(k, ".", "_"))] = k
	}
	if len(names) == 0 {
		t.Fatalf("configs/%s.yaml has no keys", service)
	}
	return names
}

// repoRoot is the module root, the compose build context.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root %s has no go.mod: %v", root, err)
	}
	return root
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func hasVolumeAt(volumes []types.ServiceVolumeConfig, target string) bool {
	for _, v := range volumes {
		if v.Target == target {
			return true
		}
	}
	return false
}
