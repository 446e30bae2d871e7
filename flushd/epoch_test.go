package flushd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/observe"
	"github.com/fanout/pipeline/fanout/testenv"
)

// beatWith writes hb under hb.Consumer every 200ms until the test ends.
func beatWith(t *testing.T, kv jetstream.KeyValue, hb fanout.Heartbeat) {
	stop := make(chan struct{})
	var done sync.WaitGroup
	done.Add(1)
	go func() {
		defer done.Done()
		for {
			hb.Sent = time.Now()
			kv.Put(context.Background(), hb.Consumer, fanout.EncodeJSON(hb))
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { close(stop); done.Wait() })
}

// A partition-count change from 64 to 16 moves shapes onto partitions whose
// bindings are older than the ones they left: the new owners must still be
// above every epoch used, or the moved shapes' logs fence them for ever.
func TestRebindingAfterAPartitionCountChangeIsAboveEveryOldEpoch(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	ctx := context.Background()
	for p := 0; p < 64; p++ {
		b := fanout.Binding{Partition: p, Consumer: "gone", Epoch: uint64(p + 1)}
		if _, err := bus.Bindings.Put(ctx, fanout.BindingKey(p), fanout.EncodeJSON(b)); err != nil {
			t.Fatal(err)
		}
	}
	beatWith(t, bus.Consumers, fanout.Heartbeat{Consumer: "c1"})
	cfg := testConfig()
	cfg.Bus.Partitions = 16
	startService(t, bus, cfg)
	testenv.Eventually(t, 10*time.Second, "16 partitions on c1", func() bool {
		return loads(readBindings(t, bus.Bindings, 16))["c1"] == 16
	})
	seen := map[uint64]int{}
	for p, b := range readBindings(t, bus.Bindings, 16) {
		if b.Epoch <= 64 {
			t.Errorf("partition %d rebound at epoch %d; partition 63 of the old count used epoch 64", p, b.Epoch)
		}
		if q, dup := seen[b.Epoch]; dup {
			t.Errorf("partitions %d and %d share epoch %d", q, p, b.Epoch)
		}
		seen[b.Epoch] = p
	}
}

// With the bindings bucket lost, the epochs the logs recorded are known only
// to the consumers' storage, which they report in their heartbeats.
func TestLostBindingsAreRecreatedAboveTheEpochStorageHolds(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	beatWith(t, bus.Consumers, fanout.Heartbeat{Consumer: "c1", StorageEpoch: 500})
	beatWith(t, bus.Consumers, fanout.Heartbeat{Consumer: "c2", StorageEpoch: 7})
	startService(t, bus, testConfig())
	testenv.Eventually(t, 10*time.Second, "12 partitions bound", func() bool {
		return len(readBindings(t, bus.Bindings, 12)) == 12
	})
	for p, b := range readBindings(t, bus.Bindings, 12) {
		if b.Epoch <= 500 {
			t.Errorf("partition %d bound at epoch %d; c1's storage holds epoch 500", p, b.Epoch)
		}
	}
}

// history returns every binding ever written for partition p, oldest first.
func history(t *testing.T, kv jetstream.KeyValue, p int) []fanout.Binding {
	es, err := kv.History(context.Background(), fanout.BindingKey(p))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []fanout.Binding
	for _, e := range es {
		if e.Operation() != jetstream.KeyValuePut {
			continue
		}
		b, err := fanout.DecodeBinding(e.Value())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, *b)
	}
	return out
}

// checkEpochsOnlyGrow fails when a partition's bindings ever repeat or lower
// an epoch: two consumers (or two writes) holding one partition's epoch.
func checkEpochsOnlyGrow(t *testing.T, kv jetstream.KeyValue, n int) {
	t.Helper()
	for p := 0; p < n; p++ {
		h := history(t, kv, p)
		for i := 1; i < len(h); i++ {
			if h[i].Epoch <= h[i-1].Epoch {
				t.Errorf("partition %d: binding %s@%d written after %s@%d (history %v)",
					p, h[i].Consumer, h[i].Epoch, h[i-1].Consumer, h[i-1].Epoch, h)
			}
		}
	}
}

func quietService(t *testing.T, bus *fanout.Bus, cfg Config) *Service {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return New(cfg, bus, log, prometheus.NewRegistry(), &observe.Readiness{})
}

// load gives s what the bindings bucket holds, as its watch would.
func load(t *testing.T, s *Service, kv jetstream.KeyValue, n int) {
	for p := 0; p < n; p++ {
		e, err := kv.Get(context.Background(), fanout.BindingKey(p))
		if err != nil {
			t.Fatal(err)
		}
		s.onBinding(e)
	}
}

// Two flushd instances (a rolling deploy) that see different consumers
// live both rebind partition 0 from the same state: only one write may win;
// the other instance re-reads and decides again from what won.
func TestTwoFlushdDecidingFromTheSameStateWriteOneBinding(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	ctx := context.Background()
	cfg := testConfig()
	cfg.Bus.Partitions = 1
	if _, err := bus.Bindings.Put(ctx, fanout.BindingKey(0), fanout.EncodeJSON(fanout.Binding{Partition: 0, Consumer: "c1", Epoch: 1})); err != nil {
		t.Fatal(err)
	}
	a, b := quietService(t, bus, cfg), quietService(t, bus, cfg)
	load(t, a, bus.Bindings, 1)
	load(t, b, bus.Bindings, 1)
	now := time.Now()
	a.live.Observe(fanout.Heartbeat{Consumer: "c2"}, now) // a sees only c2 live,
	b.live.Observe(fanout.Heartbeat{Consumer: "c3"}, now) // b only c3
	if err := a.tick(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := b.tick(ctx, true); err != nil {
		t.Fatal(err)
	}
	checkEpochsOnlyGrow(t, bus.Bindings, 1)
	if got := b.binding[0]; got.Consumer != "c2" {
		t.Fatalf("after losing the race b holds %+v, want c2's binding re-read from KV", got)
	}
	// b decides again from what won: c2 is dead to it, so c3 takes over above.
	if err := b.tick(ctx, true); err != nil {
		t.Fatal(err)
	}
	h := history(t, bus.Bindings, 0)
	if last := h[len(h)-1]; last.Consumer != "c3" || len(h) != 3 {
		t.Fatalf("history %v, want c1, c2, then c3", h)
	}
	checkEpochsOnlyGrow(t, bus.Bindings, 1)
}

// Two flushd services running at once through joins and deaths never write
// one partition's epoch twice.
func TestTwoFlushdServicesAtOnceNeverRepeatAnEpoch(t *testing.T) {
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	cfg := testConfig()
	beats := map[string]*heartbeater{}
	for _, id := range []string{"c1", "c2", "c3"} {
		beats[id] = beat(t, bus.Consumers, id)
	}
	startService(t, bus, cfg)
	startService(t, bus, cfg)
	testenv.Eventually(t, 10*time.Second, "12 partitions bound 4 each", func() bool {
		l := loads(readBindings(t, bus.Bindings, 12))
		return l["c1"] == 4 && l["c2"] == 4 && l["c3"] == 4
	})
	for i, id := range []string{"c2", "c3"} {
		beats[id].Stop()
		testenv.Eventually(t, 10*time.Second, id+"'s partitions rebound", func() bool {
			return loads(readBindings(t, bus.Bindings, 12))[id] == 0
		})
		joined := fmt.Sprintf("n%d", i)
		beats[joined] = beat(t, bus.Consumers, joined)
		testenv.Eventually(t, 10*time.Second, joined+" given its share", func() bool {
			return loads(readBindings(t, bus.Bindings, 12))[joined] >= 4
		})
	}
	checkEpochsOnlyGrow(t, bus.Bindings, 12)
}
