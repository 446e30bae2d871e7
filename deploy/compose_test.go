package deploy

import (
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestComposeHasEveryService(t *testing.T) {
	p := loadProject(t)
	for _, name := range []string{"postgres", "nats", "ingest", "flushd", "consumer", "fanoutctl"} {
		service(t, p, name)
	}
	if s := service(t, p, "fanoutctl"); !slices.Contains(s.Profiles, "tools") {
		t.Errorf("fanoutctl has profiles %v; want it under the tools profile so `up` does not start it", s.Profiles)
	}
}

// A FANOUT_* variable that names no config key is silently ignored by the
// service, so every one must match a key of that service's embedded YAML.
func TestComposeEnvMatchesConfigKeys(t *testing.T) {
	p := loadProject(t)
	for _, name := range sortedKeys(appServices) {
		known := configEnvNames(t, appServices[name])
		for _, k := range sortedKeys(env(service(t, p, name))) {
			if !strings.HasPrefix(k, "FANOUT_") {
				continue
			}
			if _, ok := known[k]; !ok {
				t.Errorf("service %s sets %s, which is no key of configs/%s.yaml (known: %v)",
					name, k, appServices[name], sortedKeys(known))
			}
		}
	}
}

func TestComposeAppServicesReachTheirDependencies(t *testing.T) {
	p := loadProject(t)
	pgUser := "postgres"
	pgPassword := env(service(t, p, "postgres"))["POSTGRES_PASSWORD"]
	for _, name := range sortedKeys(appServices) {
		e := env(service(t, p, name))
		known := configEnvNames(t, appServices[name])

		natsURL, err := url.Parse(e["FANOUT_NATS_URL"])
		if err != nil || natsURL.Scheme != "nats" || natsURL.Hostname() != "nats" {
			t.Errorf("service %s: FANOUT_NATS_URL %q should be nats://<user>:<password>@nats:4222", name, e["FANOUT_NATS_URL"])
		}
		if _, uses := known["FANOUT_POSTGRES_URL"]; uses {
			pg, err := url.Parse(e["FANOUT_POSTGRES_URL"])
			if err != nil || pg.Hostname() != "postgres" {
				t.Errorf("service %s: FANOUT_POSTGRES_URL %q should point at host postgres", name, e["FANOUT_POSTGRES_URL"])
				continue
			}
			if pass, _ := pg.User.Password(); pg.User.Username() != pgUser || pass != pgPassword {
				t.Errorf("service %s: FANOUT_POSTGRES_URL has user %q and a password unlike the postgres service's POSTGRES_PASSWORD", name, pg.User.Username())
			}
		}
	}
}

// Every service must hash shapes onto the same partitions and size the bus alike.
func TestComposeBusSettingsAgree(t *testing.T) {
	p := loadProject(t)
	var first string
	want := map[string]string{}
	for _, name := range sortedKeys(appServices) {
		e := env(service(t, p, name))
		for _, k := range []string{"FANOUT_BUS_PARTITIONS", "FANOUT_BUS_REPLICAS", "FANOUT_BUS_DUPLICATE_WINDOW", "FANOUT_BUS_MAX_BYTES"} {
			if e[k] == "" {
				t.Errorf("service %s does not set %s; every service must set the same bus values", name, k)
				continue
			}
			if first == "" {
				want[k] = e[k]
				continue
			}
			if e[k] != want[k] {
				t.Errorf("service %s has %s=%s, but %s has %s", name, k, e[k], first, want[k])
			}
		}
		if first == "" {
			first = name
		}
	}
}

// flushd and fanoutctl report the lag of the slot ingest replicates from.
func TestComposeSlotNamesAgree(t *testing.T) {
	p := loadProject(t)
	slots := map[string]string{}
	for _, name := range sortedKeys(appServices) {
		if _, uses := configEnvNames(t, appServices[name])["FANOUT_POSTGRES_SLOT"]; uses {
			slots[name] = env(service(t, p, name))["FANOUT_POSTGRES_SLOT"]
		}
	}
	for name, slot := range slots {
		if slot != slots["ingest"] {
			t.Errorf("service %s uses slot %q, ingest %q", name, slot, slots["ingest"])
		}
	}
	if len(slots) < 2 || slots["ingest"] == "" {
		t.Errorf("FANOUT_POSTGRES_SLOT should be set in ingest and the services that read its lag; got %v", slots)
	}
}

func TestComposePostgresIsReadyForLogicalReplication(t *testing.T) {
	p := loadProject(t)
	pg := service(t, p, "postgres")
	if !strings.HasPrefix(pg.Image, "postgres:") {
		t.Errorf("postgres image is %q; want the official postgres image", pg.Image)
	}
	cmd := strings.Join(pg.Command, " ")
	for _, setting := range []string{"wal_level=logical", "max_wal_senders=", "max_replication_slots=", "max_slot_wal_keep_size=", "wal_sender_timeout="} {
		if !strings.Contains(cmd, setting) {
			t.Errorf("postgres command %q lacks %s", cmd, setting)
		}
	}
	if pg.HealthCheck == nil || !slices.Contains(pg.HealthCheck.Test, "pg_isready") {
		t.Errorf("postgres healthcheck should run pg_isready; it is %v", pg.HealthCheck)
	}
	if !hasVolumeAt(pg.Volumes, "/var/lib/postgresql/data") {
		t.Errorf("postgres has no volume at /var/lib/postgresql/data; its data would not survive a recreate")
	}
}

func TestComposeNATSRunsJetStreamWithTheConfig(t *testing.T) {
	p := loadProject(t)
	n := service(t, p, "nats")
	if !slices.Contains(n.Command, "-js") {
		t.Errorf("nats command %v lacks -js (JetStream)", n.Command)
	}
	if i := slices.Index(n.Command, "-sd"); i < 0 || i+1 >= len(n.Command) || !hasVolumeAt(n.Volumes, n.Command[i+1]) {
		t.Errorf("nats command %v should store JetStream (-sd DIR) on a volume", n.Command)
	}
	i := slices.Index(n.Command, "-c")
	if i < 0 || i+1 >= len(n.Command) {
		t.Fatalf("nats command %v does not load a config file (-c)", n.Command)
	}
	var mounted bool
	for _, v := range n.Volumes {
		if v.Target == n.Command[i+1] {
			mounted = true
			if v.Source != filepath.Join(mustAbs(t, "."), "nats", "nats.conf") {
				t.Errorf("nats mounts %s at %s; want deploy/nats/nats.conf", v.Source, v.Target)
			}
		}
	}
	if !mounted {
		t.Errorf("nats reads %s, but nothing is mounted there", n.Command[i+1])
	}
	if n.HealthCheck == nil || !strings.Contains(strings.Join(n.HealthCheck.Test, " "), "/healthz?js-enabled-only=true") {
		t.Errorf("nats healthcheck should ask /healthz?js-enabled-only=true; it is %v", n.HealthCheck)
	}
}

// `docker compose up --scale consumer=N` fails or misbehaves with a fixed
// container name, hostname (every replica would have the same consumer id)
// or host port.
func TestComposeConsumerCanScale(t *testing.T) {
	p := loadProject(t)
	c := service(t, p, "consumer")
	if c.ContainerName != "" {
		t.Errorf("consumer has container_name %q; replicas need their own names", c.ContainerName)
	}
	if c.Hostname != "" {
		t.Errorf("consumer has hostname %q; the entrypoint derives each replica's id from its own hostname", c.Hostname)
	}
	for _, port := range c.Ports {
		if port.Published != "" {
			t.Errorf("consumer publishes host port %s; a second replica could not bind it", port.Published)
		}
	}
	if id, set := env(c)["FANOUT_CONSUMER_ID"]; set {
		t.Errorf("consumer sets FANOUT_CONSUMER_ID=%q for every replica alike; leave it to the entrypoint", id)
	}
}

// Every consumer replica and fanoutctl must see the same shape log directory.
func TestComposeSharesTheShapeStorage(t *testing.T) {
	p := loadProject(t)
	var volume string
	for _, name := range []string{"consumer", "fanoutctl"} {
		s := service(t, p, name)
		dir := env(s)["FANOUT_STORAGE_DIR"]
		if dir == "" {
			t.Errorf("service %s does not set FANOUT_STORAGE_DIR", name)
			continue
		}
		var found bool
		for _, v := range s.Volumes {
			if v.Target != dir {
				continue
			}
			found = true
			if v.Type != "volume" {
				t.Errorf("service %s: %s is a %s mount; want a named volume shared by all replicas", name, dir, v.Type)
			}
			if volume != "" && v.Source != volume {
				t.Errorf("service %s mounts volume %s at %s, others mount %s", name, v.Source, dir, volume)
			}
			volume = v.Source
		}
		if !found {
			t.Errorf("service %s stores shape logs in %s, but no volume is mounted there", name, dir)
		}
	}
	if _, ok := p.Volumes[volume]; volume != "" && !ok {
		t.Errorf("volume %s is not declared under volumes:", volume)
	}
}

func TestComposeHealthchecksAndRestarts(t *testing.T) {
	p := loadProject(t)
	for _, name := range []string{"postgres", "nats", "ingest", "flushd", "consumer"} {
		s := service(t, p, name)
		if s.Restart != "unless-stopped" && s.Restart != "always" && s.Restart != "on-failure" {
			t.Errorf("service %s has restart %q; want unless-stopped", name, s.Restart)
		}
		if s.HealthCheck == nil || s.HealthCheck.Disable || len(s.HealthCheck.Test) == 0 {
			t.Errorf("service %s has no healthcheck", name)
		}
	}
	// The app services' healthchecks must hit /healthz on their http.addr port.
	for _, name := range []string{"ingest", "flushd", "consumer"} {
		s := service(t, p, name)
		addr := env(s)["FANOUT_HTTP_ADDR"]
		if addr == "" {
			t.Errorf("service %s does not set FANOUT_HTTP_ADDR; its healthcheck needs a known port", name)
			continue
		}
		_, port, _ := strings.Cut(addr, ":")
		want := "http://127.0.0.1:" + port + "/healthz"
		if s.HealthCheck == nil || !slices.Contains(s.HealthCheck.Test, want) {
			t.Errorf("service %s healthcheck should fetch %s; it is %v", name, want, s.HealthCheck)
		}
		// The final image is Alpine, whose busybox provides wget.
		if s.HealthCheck != nil && !slices.Contains(s.HealthCheck.Test, "wget") {
			t.Errorf("service %s healthcheck %v should use wget, the one HTTP client in the image", name, s.HealthCheck.Test)
		}
		for dep, cond := range s.DependsOn {
			if cond.Condition != "service_healthy" {
				t.Errorf("service %s depends on %s with condition %q; want service_healthy", name, dep, cond.Condition)
			}
		}
		if _, ok := s.DependsOn["nats"]; !ok {
			t.Errorf("service %s does not wait for nats to be healthy", name)
		}
	}
}

// Each app service is built from deploy/Dockerfile with BINARY set to one
// of the binaries `make build` produces, and the Dockerfile builds exactly
// their main packages, which must exist.
func TestComposeBuildsTheRealBinaries(t *testing.T) {
	p := loadProject(t)
	root := repoRoot(t)
	for _, name := range sortedKeys(appServices) {
		s := service(t, p, name)
		if s.Build == nil {
			t.Errorf("service %s has no build section", name)
			continue
		}
		if s.Build.Context != root {
			t.Errorf("service %s builds from context %s; want the repository root %s", name, s.Build.Context, root)
		}
		if s.Build.Dockerfile != "deploy/Dockerfile" {
			t.Errorf("service %s uses Dockerfile %q; want deploy/Dockerfile", name, s.Build.Dockerfile)
		}
		bin := s.Build.Args["BINARY"]
		if bin == nil || *bin != appServices[name] {
			t.Errorf("service %s: build arg BINARY should be %q", name, appServices[name])
		}
	}

	dockerfile, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	built := regexp.MustCompile(`\./[a-z]+/cmd/[a-z]+`).FindAllString(string(dockerfile), -1)
	slices.Sort(built)
	var want []string
	for _, pkg := range cmdPackages {
		want = append(want, pkg)
	}
	slices.Sort(want)
	if !slices.Equal(built, want) {
		t.Errorf("Dockerfile builds %v; want exactly %v", built, want)
	}
	for _, bin := range sortedKeys(cmdPackages) {
		pkg := cmdPackages[bin]
		if filepath.Base(pkg) != bin {
			t.Errorf("package %s does not build a binary named %s", pkg, bin)
		}
		if !isMainPackage(filepath.Join(root, pkg)) {
			t.Errorf("the Dockerfile and `make build` build %s, but that folder holds no package main", pkg)
		}
	}
	makefile, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatalf("no Makefile at the repository root: %v", err)
	}
	for _, bin := range sortedKeys(cmdPackages) {
		if !strings.Contains(string(makefile), "bin/"+bin+" "+cmdPackages[bin]) {
			t.Errorf("Makefile does not build bin/%s from %s as the Dockerfile assumes", bin, cmdPackages[bin])
		}
	}
	if !regexp.MustCompile(`(?m)^FROM alpine`).Match(dockerfile) {
		t.Errorf("the final Dockerfile stage should be alpine: the healthchecks run its wget and the entrypoint its sh")
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// isMainPackage says whether dir holds Go files of package main.
func isMainPackage(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err == nil && regexp.MustCompile(`(?m)^package main\b`).Match(src) {
			return true
		}
	}
	return false
}

// /metrics and /debug/pprof have no authentication: their default address
// is loopback, so each service in a container sets FANOUT_HTTP_ADDR for
// its healthcheck and its scrapers inside the network, and a host port that
// publishes it binds the host's loopback only.
func TestComposeMetricsStayOffPublicInterfaces(t *testing.T) {
	p := loadProject(t)
	for _, name := range []string{"ingest", "flushd", "consumer", "shapeapi"} {
		s := service(t, p, name)
		addr := env(s)["FANOUT_HTTP_ADDR"]
		if addr == "" {
			t.Errorf("service %s does not set FANOUT_HTTP_ADDR: the default (loopback) is unreachable from the compose network", name)
			continue
		}
		_, port, _ := strings.Cut(addr, ":")
		for _, pc := range s.Ports {
			if strconv.FormatUint(uint64(pc.Target), 10) == port && pc.Published != "" && pc.HostIP != "127.0.0.1" {
				t.Errorf("service %s publishes its metrics port %s on host address %q; bind it to 127.0.0.1", name, port, pc.HostIP)
			}
		}
		if v := env(s)["FANOUT_HTTP_PPROF"]; v != "" && v != "false" {
			t.Errorf("service %s sets FANOUT_HTTP_PPROF=%s; profiles stay off in the stack", name, v)
		}
	}
}
