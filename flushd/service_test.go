package flushd

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/observe"
	"github.com/fanout/pipeline/fanout/testenv"
)

func testConfig() Config {
	var c Config
	c.Bus.Partitions = 12
	c.Bus.Replicas = 1
	c.Flushd.PollInterval = 50 * time.Millisecond
	c.Flushd.HeartbeatTimeout = time.Second
	c.Flushd.StallGrace = time.Hour
	return c
}

// heartbeater writes a consumer's heartbeat until stopped.
type heartbeater struct {
	stop chan struct{}
	done sync.WaitGroup
}

func beat(t *testing.T, kv jetstream.KeyValue, id string) *heartbeater {
	h := &heartbeater{stop: make(chan struct{})}
	h.done.Add(1)
	go func() {
		defer h.done.Done()
		for {
			hb := fanout.Heartbeat{Consumer: id, Sent: time.Now()}
			kv.Put(context.Background(), id, fanout.EncodeJSON(hb))
			select {
			case <-h.stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(h.Stop)
	return h
}

func (h *heartbeater) Stop() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	h.done.Wait()
}

func readBindings(t *testing.T, kv jetstream.KeyValue, n int) map[int]fanout.Binding {
	out := map[int]fanout.Binding{}
	for p := 0; p < n; p++ {
		e, err := kv.Get(context.Background(), fanout.BindingKey(p))
		if err != nil {
			continue
		}
		b, err := fanout.DecodeBinding(e.Value())
		if err != nil {
			t.Fatal(err)
		}
		out[p] = *b
	}
	return out
}

func startService(t *testing.T, bus *fanout.Bus, cfg Config) {
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	svc := New(cfg, bus, log, prometheus.NewRegistry(), &observe.Readiness{})
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("flushd Run: %v", err)
		}
	})
}

func TestDeadConsumerPartitionsAreReboundWithinTheTimeout(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	cfg := testConfig()
	beats := map[string]*heartbeater{}
	for _, id := range []string{"c1", "c2", "c3"} {
		beats[id] = beat(t, bus.Consumers, id)
	}
	startService(t, bus, cfg)

	testenv.Eventually(t, 10*time.Second, "12 partitions bound 4 each", func() bool {
		l := loads(readBindings(t, bus.Bindings, 12))
		return l["c1"] == 4 && l["c2"] == 4 && l["c3"] == 4
	})
	before := readBindings(t, bus.Bindings, 12)

	killed := time.Now()
	beats["c2"].Stop()
	testenv.Eventually(t, 10*time.Second, "c2's partitions rebound", func() bool {
		return loads(readBindings(t, bus.Bindings, 12))["c2"] == 0
	})
	if took := time.Since(killed); took > cfg.Flushd.HeartbeatTimeout+2*time.Second {
		t.Fatalf("rebinding took %s, want under timeout %s + 2s", took, cfg.Flushd.HeartbeatTimeout)
	}
	after := readBindings(t, bus.Bindings, 12)
	for p, b := range before {
		moved := after[p].Consumer != b.Consumer
		if moved != (b.Consumer == "c2") {
			t.Fatalf("partition %d: %+v -> %+v", p, b, after[p])
		}
		if moved && after[p].Epoch <= 12 {
			t.Fatalf("partition %d rebound at epoch %d, want above the 12 epochs of the first round", p, after[p].Epoch)
		}
	}
}

func TestDrainingConsumerIsReleasedAtOnceAndJoinRebalances(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	cfg := testConfig()
	cfg.Flushd.HeartbeatTimeout = time.Minute // only draining can move partitions here
	c1 := beat(t, bus.Consumers, "c1")
	startService(t, bus, cfg)
	testenv.Eventually(t, 10*time.Second, "all partitions on c1", func() bool {
		return loads(readBindings(t, bus.Bindings, 12))["c1"] == 12
	})
	beat(t, bus.Consumers, "c2")
	testenv.Eventually(t, 10*time.Second, "rebalanced 6/6 after c2 joined", func() bool {
		l := loads(readBindings(t, bus.Bindings, 12))
		return l["c1"] == 6 && l["c2"] == 6
	})
	c1.Stop()
	bus.Consumers.Put(context.Background(), "c1", fanout.EncodeJSON(fanout.Heartbeat{Consumer: "c1", Draining: true}))
	testenv.Eventually(t, 5*time.Second, "draining c1 released", func() bool {
		return loads(readBindings(t, bus.Bindings, 12))["c2"] == 12
	})
}

func TestSafeLSNIsPublishedWithItsBlocker(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	ctx := context.Background()
	bus.State.Put(ctx, fanout.KeyIngestPublished, fanout.EncodeJSON(&fanout.IngestProgress{PublishedLSN: 0x5000}))
	s := &scenario{t: t, ctx: ctx, bus: bus, parts: map[string]int{}}
	s.route("sblock", 0x4000)
	cfg := testConfig()
	cfg.Bus.Partitions = 64 // as scenario.route: flushd dead-letters subjects of other partitions
	startService(t, bus, cfg)
	var got *fanout.SafeLSN
	testenv.Eventually(t, 10*time.Second, "safe LSN written", func() bool {
		e, err := bus.State.Get(ctx, fanout.KeySafeLSN)
		if err != nil {
			return false
		}
		got, err = fanout.DecodeSafeLSN(e.Value())
		return err == nil
	})
	if got.LSN != pglogrepl.LSN(0x4000) || got.Blocking == nil || got.Blocking.Shape != "sblock" {
		t.Fatalf("safe = %+v blocking %+v", got, got.Blocking)
	}
	s.remove("sblock")
	testenv.Eventually(t, 10*time.Second, "safe LSN reaches published after removal", func() bool {
		e, err := bus.State.Get(ctx, fanout.KeySafeLSN)
		if err != nil {
			return false
		}
		got, _ = fanout.DecodeSafeLSN(e.Value())
		return got != nil && got.LSN == 0x5000 && got.Blocking == nil
	})
}
