package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// The partition-count change of deploy/PRODUCTION.md, followed step by step
// as processes, after a consumer was SIGKILLed and replaced (so that the
// partitions' epochs differ): bus.partitions goes from 64 to 16, which moves
// most shapes to another partition with their logs. Afterwards every shape
// log equals its query and follows Postgres' history, FANOUT drains and
// confirmed_flush_lsn moves past new writes.
func TestPartitionCountChangeKeepsShapesExact(t *testing.T) {
	s := newStack(t)
	s.env = append(s.env, "FANOUT_BUS_PARTITIONS=64")
	s.exec(itemsTable)
	s.recordHistory("public.items")
	var defs []shapeDef
	for k := 0; k < 20; k++ {
		defs = append(defs, s.addShape("public.items", fmt.Sprintf("owner = %d", k)))
	}
	moved := 0
	for _, d := range defs {
		if fanout.Partition(d.handle, 64) != fanout.Partition(d.handle, 16) {
			moved++
		}
	}
	t.Logf("%d of %d shapes change partition when bus.partitions goes from 64 to 16", moved, len(defs))

	s.startFlushd()
	c1 := s.startConsumer("c1")
	s.startConsumer("c2")
	s.startIngest()
	s.waitSlot()
	testenv.Eventually(t, 30*time.Second, "both consumers to own partitions", func() bool {
		return s.boundTo("c1") > 0 && s.boundTo("c2") > 0
	})
	s.exec(`INSERT INTO items SELECT g, g % 20, 'a' || g, NULL FROM generate_series(1, 400) g`)
	s.drain()

	// Consumers die and are replaced, three times: the partitions they
	// owned move at newer epochs each time (and the shapes' logs record
	// them), while those the survivor c2 kept stay at their first epoch.
	victim := c1
	for i, next := range []string{"c3", "c4", "c5"} {
		gone := victim.Name
		victim.Kill()
		victim = s.startConsumer(next)
		testenv.Eventually(t, 30*time.Second, "the killed consumer's partitions to move to the others", func() bool {
			return s.boundTo(gone) == 0 && s.boundTo(next) > 0
		})
		s.exec(fmt.Sprintf(`UPDATE items SET title = 'b%d' || id`, i))
		s.drain()
	}
	s.exec(`DELETE FROM items WHERE id % 17 = 0`)
	s.drain()
	s.checkShapes(defs)
	epoch := map[int]uint64{}
	for _, b := range s.bindings() {
		epoch[b.Partition] = b.Epoch
	}
	hazards := 0
	for _, d := range defs {
		if from, to := fanout.Partition(d.handle, 64), fanout.Partition(d.handle, 16); epoch[from] > epoch[to] {
			hazards++
			t.Logf("shape %s moves from partition %d (epoch %d) to partition %d (epoch %d)", d.handle, from, epoch[from], to, epoch[to])
		}
	}
	if hazards == 0 {
		t.Fatal("no shape moves onto a partition of a lower epoch: the set-up does not test what it should")
	}

	// The procedure: stop writes (the test writes nothing now); stop
	// ingest; wait until FANOUT is empty; stop flushd and the consumers;
	// set bus.partitions everywhere; start flushd, the consumers, ingest.
	if err := s.procs["ingest"].Stop(30 * time.Second); err != nil {
		t.Fatalf("stop ingest: %v", err)
	}
	s.waitStreamEmpty("FANOUT to be empty before the count changes")
	for _, name := range []string{"flushd", "c2", "c5"} {
		if err := s.procs[name].Stop(30 * time.Second); err != nil {
			t.Fatalf("stop %s: %v", name, err)
		}
	}
	s.env = append(s.env, "FANOUT_BUS_PARTITIONS=16")
	s.startFlushd()
	s.startConsumer("c2")
	s.startConsumer("c5")
	s.startIngest()
	s.waitSlot()
	testenv.Eventually(t, 30*time.Second, "all 16 partitions bound under the new count, and only those", func() bool {
		bs := s.bindings()
		if len(bs) != 16 {
			return false
		}
		for _, b := range bs {
			if b.Partition >= 16 || b.Partitions != 16 {
				return false
			}
		}
		return true
	})

	// Every shape gets changes after the change, the moved ones too.
	s.exec(`UPDATE items SET title = 'c' || id, owner = (owner + 1) % 20`)
	s.exec(`INSERT INTO items SELECT g, g % 20, 'd' || g, NULL FROM generate_series(1001, 1200) g`)
	at := s.currentWAL()
	s.waitConfirmed(at, 90*time.Second)
	s.waitStreamEmpty("FANOUT to drain after the count change")
	s.checkShapes(defs)
	if st := s.status(); st["dead_lettered"] != float64(0) {
		t.Errorf("fragments were dead-lettered across the count change: status says %v", st["dead_lettered"])
	}
}

// waitStreamEmpty waits until fanoutctl status shows no pending fragment.
func (s *stack) waitStreamEmpty(what string) {
	s.t.Helper()
	testenv.Eventually(s.t, 60*time.Second, what, func() bool {
		return s.status()["pending_fragments"] == float64(0)
	})
}
