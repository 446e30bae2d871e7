package consumers

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout/testenv"
	"github.com/fanout/pipeline/fanout/visibility"
)

// writeSnapshot gives handle a complete initial snapshot of rows ids (v =
// "snap"), which saw no transaction of the test.
func (e *env) writeSnapshot(handle string, ids ...string) {
	e.t.Helper()
	sw, err := shapelog.NewSnapshotWriter(e.dir, handle, 1, "public.items", []string{"id", "v"}, []string{"id"}, 100, 1<<20)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, id := range ids {
		if err := sw.Add(map[string]*string{"id": str(id), "v": str("snap")}); err != nil {
			e.t.Fatal(err)
		}
	}
	if _, err := sw.Complete(visibility.Snapshot{Xmin: 1, Xmax: 1}); err != nil {
		e.t.Fatal(err)
	}
}

func metricValue(t *testing.T, s *Service, name, label string) float64 {
	t.Helper()
	mfs, err := s.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A shape whose log grows is compacted in the background while the
// consumer persists it, its rows stay exact, the heartbeat and metrics
// say what compaction did, and the replaced generations go after 2 x
// retain.
func TestCompactorCompactsGrowingLogsInTheBackground(t *testing.T) {
	e := newEnv(t)
	e.addShape("sa")
	e.writeSnapshot("sa", "1", "2")
	cfg := e.config("c1")
	cfg.Storage.Compaction.MinLogBytes = 4096
	cfg.Storage.Compaction.MinInterval = 0
	cfg.Storage.Compaction.Retain = time.Second
	r := e.startWith("c1", cfg)
	e.bindAll("c1", 1)

	want := map[int]string{1: "snap", 2: "snap"}
	lsn := uint64(100)
	for round := 0; round < 3; round++ {
		for i := 0; i < 200; i++ {
			id := i%10 + 1
			v := fmt.Sprintf("r%d-%d", round, i)
			e.publish(frag("sa", lsn, 0, true, upd("", fmt.Sprint(id), v)), "")
			want[id] = v
			lsn += 10
		}
		e.awaitRows("sa", expected(want)...)
		testenv.Eventually(t, 20*time.Second, "a compaction in this round", func() bool {
			return metricValue(t, r.svc, "fanout_consumer_compactions_total", "done") > float64(round)
		})
	}
	chain, err := shapelog.LoadChain(e.dir, "sa")
	if err != nil {
		t.Fatal(err)
	}
	if chain.Current().Number < 3 {
		t.Fatalf("current generation %d after three rounds that each compacted", chain.Current().Number)
	}
	e.awaitRows("sa", expected(want)...)
	// The log of generation 0 goes 2 x retain after it was replaced.
	testenv.Eventually(t, 20*time.Second, "generation 0's log removed", func() bool {
		_, err := os.Stat(e.dir + "/shapes/sa/log")
		return errors.Is(err, os.ErrNotExist)
	})
	testenv.Eventually(t, 10*time.Second, "the heartbeat to report the compactions", func() bool {
		hb := e.heartbeat("c1")
		return hb != nil && hb.Compaction != nil && hb.Compaction.Done >= 3 && hb.Compaction.SavedBytes > 0 && hb.Compaction.FreedBytes > 0
	})
	if f := metricValue(t, r.svc, "fanout_consumer_compactions_total", "failed"); f != 0 {
		t.Fatalf("%v compactions failed", f)
	}
	e.publish(frag("sa", lsn, 0, true, del("1")), "")
	delete(want, 1)
	e.awaitRows("sa", expected(want)...)
}

// A shape whose log grows before its snapshot is complete is skipped, not
// forgotten: it is compacted once the snapshot is there and the log grew.
func TestCompactorWaitsForTheSnapshot(t *testing.T) {
	e := newEnv(t)
	e.addShape("sa")
	cfg := e.config("c1")
	cfg.Storage.Compaction.MinLogBytes = 4096
	cfg.Storage.Compaction.MinInterval = 0
	r := e.startWith("c1", cfg)
	e.bindAll("c1", 1)
	want := map[int]string{}
	lsn := uint64(100)
	publish := func(n int) {
		for i := 0; i < n; i++ {
			id := i%10 + 1
			v := fmt.Sprintf("v%d", lsn)
			e.publish(frag("sa", lsn, 0, true, ins(fmt.Sprint(id), v)), "")
			want[id] = v
			lsn += 10
		}
	}
	publish(200)
	e.awaitRows("sa", expected(want)...)
	testenv.Eventually(t, 20*time.Second, "a compaction skipped for want of a snapshot", func() bool {
		return metricValue(t, r.svc, "fanout_consumer_compactions_total", "skipped") > 0
	})
	e.writeSnapshot("sa") // an empty snapshot that saw none of the log
	publish(200)
	testenv.Eventually(t, 20*time.Second, "a compaction once the snapshot is there", func() bool {
		return metricValue(t, r.svc, "fanout_consumer_compactions_total", "done") > 0
	})
	e.awaitRows("sa", expected(want)...)
}
