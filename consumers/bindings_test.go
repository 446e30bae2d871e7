package consumers

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// hangingStore is the real FileStore with one fault: the first Append of
// one partition blocks until released, ignoring its context, as a hung
// fsync does.
type hangingStore struct {
	shapelog.Store
	partition int
	entered   chan struct{}
	release   chan struct{}
	once      sync.Once
}

func (h *hangingStore) Take(ctx context.Context, p int, epoch uint64) (shapelog.Writer, error) {
	w, err := h.Store.Take(ctx, p, epoch)
	if err != nil || p != h.partition {
		return w, err
	}
	return &hangingWriter{Writer: w, h: h}, nil
}

type hangingWriter struct {
	shapelog.Writer
	h *hangingStore
}

func (w *hangingWriter) Append(ctx context.Context, frags []*fanout.Fragment) (shapelog.Stats, error) {
	first := false
	w.h.once.Do(func() { first = true; close(w.h.entered) })
	if first {
		<-w.h.release
	}
	return w.Writer.Append(ctx, frags)
}

// startWrapped runs a consumer whose store is wrap(the real one).
func (e *env) startWrapped(id string, wrap func(shapelog.Store) shapelog.Store) *running {
	e.t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("consumer", id)
	svc, err := New(e.config(id), log)
	if err != nil {
		e.t.Fatal(err)
	}
	svc.store = wrap(svc.store)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{svc: svc, cancel: cancel, errc: make(chan error, 1)}
	go func() { r.errc <- svc.Run(ctx) }()
	e.t.Cleanup(func() { r.stop(e.t) })
	return r
}

// shapesOnDistinctPartitions returns two shape handles of different partitions.
func shapesOnDistinctPartitions() (string, string) {
	a := "sa"
	for i := 0; ; i++ {
		b := fmt.Sprintf("sb%d", i)
		if part(b) != part(a) {
			return a, b
		}
	}
}

// A worker stuck in storage must hold up only its own partition: moving
// another partition away goes on, and the stuck partition's next worker
// starts only once the stuck one has finished.
func TestAHungWorkerDoesNotHoldUpOtherPartitionsBindings(t *testing.T) {
	e := newEnv(t)
	sa, sb := shapesOnDistinctPartitions()
	pa, pb := part(sa), part(sb)
	e.addShape(sa)
	e.addShape(sb)
	hang := &hangingStore{partition: pa, entered: make(chan struct{}), release: make(chan struct{})}
	e.startWrapped("c1", func(s shapelog.Store) shapelog.Store { hang.Store = s; return hang })
	e.bind(pa, "c1", 1)
	e.bind(pb, "c1", 2)
	testenv.Eventually(t, 10*time.Second, "c1 to own both partitions", func() bool {
		h := e.heartbeat("c1")
		return h != nil && h.Owned[pa] == 1 && h.Owned[pb] == 2
	})
	e.publish(frag(sa, 100, 0, true, ins("1", "a")), "")
	select {
	case <-hang.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("partition's worker never reached storage")
	}
	released := false
	defer func() {
		if !released {
			close(hang.release)
		}
	}()

	e.bind(pa, "c2", 3) // pa moves away while its worker is stuck in Append
	e.bind(pb, "c2", 4) // pb must move away regardless
	testenv.Eventually(t, 5*time.Second, "c1 to release the partition that is not stuck", func() bool {
		h := e.heartbeat("c1")
		_, held := h.Owned[pb]
		return h != nil && !held
	})
	e.bind(pa, "c1", 5)                // back to c1: must wait for the stuck worker of epoch 1
	time.Sleep(500 * time.Millisecond) // a wrong start would show within a few heartbeats
	if h := e.heartbeat("c1"); h.Owned[pa] == 5 {
		t.Fatalf("the new worker of partition %d started while the old one was still in Append (owned %v)", pa, h.Owned)
	}
	close(hang.release)
	released = true
	testenv.Eventually(t, 10*time.Second, "the new worker to start once the old one finished", func() bool {
		h := e.heartbeat("c1")
		return h != nil && h.Owned[pa] == 5
	})
	e.awaitRows(sa, "1=a")
	e.awaitStreamEmpty()
}

// Heartbeats carry the highest epoch storage holds, including partitions
// beyond the current count, so flushd binds above it.
func TestHeartbeatCarriesTheHighestEpochInStorage(t *testing.T) {
	e := newEnv(t)
	store, err := shapelog.NewFileStore(e.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := store.Take(context.Background(), 40, 91) // a partition of an earlier, larger count
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	e.start("c1")
	testenv.Eventually(t, 10*time.Second, "c1's heartbeat", func() bool { return e.heartbeat("c1") != nil })
	if got := e.heartbeat("c1").StorageEpoch; got != 91 {
		t.Fatalf("heartbeat storage_epoch = %d, want 91", got)
	}
	e.bind(1, "c1", 120)
	testenv.Eventually(t, 10*time.Second, "storage_epoch raised by the owned epoch", func() bool {
		return e.heartbeat("c1").StorageEpoch == 120
	})
}

// A binding made under another bus.partitions names a partition whose
// shapes hash elsewhere now: the consumer runs no worker for it.
func TestBindingsOfAnotherPartitionCountAreIgnored(t *testing.T) {
	e := newEnv(t)
	e.start("c1")
	put := func(b fanout.Binding) {
		if _, err := e.bus.Bindings.Put(context.Background(), fanout.BindingKey(b.Partition), fanout.EncodeJSON(b)); err != nil {
			t.Fatal(err)
		}
	}
	put(fanout.Binding{Partition: 1, Consumer: "c1", Epoch: 5, Partitions: 64})             // another count
	put(fanout.Binding{Partition: testPartitions + 3, Consumer: "c1", Epoch: 6})            // beyond this count
	put(fanout.Binding{Partition: 2, Consumer: "c1", Epoch: 7, Partitions: testPartitions}) // current
	testenv.Eventually(t, 10*time.Second, "c1 to own partition 2", func() bool {
		h := e.heartbeat("c1")
		return h != nil && h.Owned[2] == 7
	})
	if h := e.heartbeat("c1"); len(h.Owned) != 1 {
		t.Fatalf("c1 owns %v, want only partition 2", h.Owned)
	}
}
