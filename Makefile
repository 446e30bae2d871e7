# The commands of the README. Everything runs on one machine with Go and the
# PostgreSQL 15 server binaries (initdb, pg_ctl, postgres) on PATH.
GO      ?= go
BINS    := ingest flushd consumer fanoutctl shapeapi
# Packages with concurrent code run under the race detector.
RACE_PKGS := ./fanout/... ./configs/... ./ingest/... ./consumers/... ./flushd/...

.PHONY: build test test-unit e2e-deps test-e2e vet bench run chaos clean

build:
	@mkdir -p bin
	$(GO) build -o bin/ingest ./ingest/cmd/ingest
	$(GO) build -o bin/flushd ./flushd/cmd/flushd
	$(GO) build -o bin/consumer ./consumers/cmd/consumer
	$(GO) build -o bin/fanoutctl ./fanout/cmd/fanoutctl
	$(GO) build -o bin/shapeapi ./consumers/cmd/shapeapi

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# Every test: unit, integration and end to end, against real Postgres and NATS.
test: vet build test-unit e2e-deps test-e2e

# The Electric clients the shape API's end-to-end tests run, pinned by the lockfile.
e2e-deps:
	cd deploy/e2e/electric && npm ci --no-audit --no-fund

test-unit:
	$(GO) test -race -timeout 15m $(RACE_PKGS)

# End-to-end tests run the built binaries as processes (SIGKILL and all);
# the race detector adds nothing there.
test-e2e:
	$(GO) test -timeout 15m ./deploy/...

bench: e2e-deps
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./deploy/bench/

# The long chaos run: kills, zombies, Postgres restarts and restarts of the
# nodes of a 3-node NATS cluster (R3 stream and buckets) for 5 minutes.
chaos: build
	FANOUT_CHAOS_CLUSTER=1 $(GO) test -run TestNATSClusterNodeRestart -count 1 ./fanout/testenv/
	FANOUT_CHAOS_DURATION=5m FANOUT_CHAOS_SERVERS=1 FANOUT_CHAOS_CLUSTER=1 $(GO) test -run TestChaos -v -count 1 -timeout 60m ./deploy/e2e/

# make's child is bin/devstack itself, not go run (a SIGTERM that make passes
# on would stop go run and orphan devstack): Ctrl-C, SIGTERM or a closed
# terminal stop every service and the private Postgres; after Ctrl-C make exits 0.
run: build
	$(GO) build -o bin/devstack ./deploy/devstack
	bin/devstack

clean:
	rm -rf bin
