package flushd

import (
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout"
)

func apply(cur map[int]fanout.Binding, changes []fanout.Binding) map[int]fanout.Binding {
	next := map[int]fanout.Binding{}
	for p, b := range cur {
		next[p] = b
	}
	for _, b := range changes {
		next[b.Partition] = b
	}
	return next
}

func loads(b map[int]fanout.Binding) map[string]int {
	l := map[string]int{}
	for _, x := range b {
		l[x.Consumer]++
	}
	return l
}

func TestAssignBindsEveryPartitionEvenly(t *testing.T) {
	b := apply(nil, Assign(nil, []string{"c1", "c2", "c3"}, 64, nil, 0))
	if len(b) != 64 {
		t.Fatalf("%d partitions bound, want 64", len(b))
	}
	l := loads(b)
	for c, n := range l {
		if n < 21 || n > 22 {
			t.Fatalf("consumer %s owns %d partitions, want 21 or 22 (%v)", c, n, l)
		}
	}
	checkFreshEpochs(t, nil, 0, Assign(nil, []string{"c1", "c2", "c3"}, 64, nil, 0))
	if again := Assign(b, []string{"c1", "c2", "c3"}, 64, nil, 0); len(again) != 0 {
		t.Fatalf("a balanced assignment moved %d partitions", len(again))
	}
}

func TestAssignMovesOnlyTheDeadConsumersPartitionsWithNewEpochs(t *testing.T) {
	b := apply(nil, Assign(nil, []string{"c1", "c2", "c3"}, 64, nil, 0))
	changes := Assign(b, []string{"c1", "c3"}, 64, nil, 0)
	for _, c := range changes {
		if b[c.Partition].Consumer != "c2" {
			t.Fatalf("partition %d of live %s moved", c.Partition, b[c.Partition].Consumer)
		}
	}
	checkFreshEpochs(t, b, 0, changes)
	after := apply(b, changes)
	if l := loads(after); l["c2"] != 0 || l["c1"] != 32 || l["c3"] != 32 {
		t.Fatalf("loads after c2 died: %v", l)
	}
}

func TestAssignRebalancesWhenAConsumerJoins(t *testing.T) {
	b := apply(nil, Assign(nil, []string{"c1"}, 64, nil, 0))
	changes := Assign(b, []string{"c1", "c2"}, 64, nil, 0)
	if len(changes) != 32 {
		t.Fatalf("%d partitions moved to the new consumer, want 32", len(changes))
	}
	if l := loads(apply(b, changes)); l["c1"] != 32 || l["c2"] != 32 {
		t.Fatalf("loads after join: %v", l)
	}
}

func TestAssignKeepsBindingsWhenNobodyIsLive(t *testing.T) {
	b := apply(nil, Assign(nil, []string{"c1"}, 8, nil, 0))
	if changes := Assign(b, nil, 8, nil, 0); len(changes) != 0 {
		t.Fatalf("bindings changed with no live consumer: %v", changes)
	}
}

func TestAssignMovesAStalledPartitionEvenWhenBalanced(t *testing.T) {
	b := apply(nil, Assign(nil, []string{"c1", "c2"}, 4, nil, 0))
	stalled := 0
	owner := b[stalled].Consumer
	changes := Assign(b, []string{"c1", "c2"}, 4, map[int]bool{stalled: true}, 0)
	after := apply(b, changes)
	checkFreshEpochs(t, b, 0, changes)
	if after[stalled].Consumer == owner {
		t.Fatalf("stalled partition stayed: %+v (was %+v)", after[stalled], b[stalled])
	}
	// The move is a swap, so the next round has nothing to even out; an
	// uneven result would be trimmed straight back onto the stalled owner.
	if again := Assign(after, []string{"c1", "c2"}, 4, nil, 0); len(again) != 0 {
		t.Fatalf("the round after the stall moves %+v", again)
	}
}

// checkFreshEpochs fails unless every change has its own epoch, above floor
// and above every epoch of cur.
func checkFreshEpochs(t *testing.T, cur map[int]fanout.Binding, floor uint64, changes []fanout.Binding) {
	t.Helper()
	top := floor
	for _, b := range cur {
		top = max(top, b.Epoch)
	}
	seen := map[uint64]int{}
	for _, c := range changes {
		if c.Epoch <= top {
			t.Fatalf("partition %d bound at epoch %d, not above %d (the highest epoch used)", c.Partition, c.Epoch, top)
		}
		if q, dup := seen[c.Epoch]; dup {
			t.Fatalf("partitions %d and %d both bound at epoch %d", q, c.Partition, c.Epoch)
		}
		seen[c.Epoch] = c.Partition
	}
}

// After bus.partitions goes from 64 to 16, the bindings of partitions 16..63
// are still there; shapes of those partitions now hash below 16, and their
// logs recorded the old epochs. Every new binding is above all of them.
func TestAssignAfterAPartitionCountChangeIsAboveTheOldPartitionsEpochs(t *testing.T) {
	old := apply(nil, Assign(nil, []string{"c1", "c2", "c3"}, 64, nil, 0))
	old = apply(old, Assign(old, []string{"c1", "c3"}, 64, nil, 0)) // c2 died: more epochs
	changes := Assign(old, []string{"c4", "c5"}, 16, nil, 0)        // all replaced at the new count
	if len(changes) != 16 {
		t.Fatalf("%d partitions rebound, want 16", len(changes))
	}
	checkFreshEpochs(t, old, 0, changes)
	for _, c := range changes {
		if c.Partition >= 16 {
			t.Fatalf("partition %d bound beyond the count 16", c.Partition)
		}
	}
}

// After a count change the consumers come back under their old ids, so the
// owners of partitions 0..15 are live and would keep their old, lower
// epochs, below those of the partitions the moved shapes came from: every
// partition is bound again, above them all, and says under which count.
func TestAssignRebindsEveryPartitionBoundUnderAnotherCount(t *testing.T) {
	old := apply(nil, Assign(nil, []string{"c1", "c2"}, 64, nil, 0))
	old = apply(old, Assign(old, []string{"c2"}, 64, nil, 0)) // c1 killed: c2 takes its partitions at newer epochs
	old = apply(old, Assign(old, []string{"c2", "c3"}, 64, nil, 0))
	changes := Assign(old, []string{"c2", "c3"}, 16, nil, 0)
	if len(changes) != 16 {
		t.Fatalf("%d partitions rebound after the count went from 64 to 16, want all 16", len(changes))
	}
	checkFreshEpochs(t, old, 0, changes)
	after := apply(old, changes)
	for p := 0; p < 16; p++ {
		if after[p].Partitions != 16 {
			t.Fatalf("partition %d bound under count %d, want 16", p, after[p].Partitions)
		}
	}
	if again := Assign(after, []string{"c2", "c3"}, 16, nil, 0); len(again) != 0 {
		t.Fatalf("the round after the count change moves %+v", again)
	}
}

// With the bindings bucket lost, the floor (what storage reported) is all
// that says which epochs the logs hold.
func TestAssignWithoutBindingsStartsAboveTheFloor(t *testing.T) {
	changes := Assign(nil, []string{"c1", "c2"}, 8, nil, 900)
	if len(changes) != 8 {
		t.Fatalf("%d partitions bound, want 8", len(changes))
	}
	checkFreshEpochs(t, nil, 900, changes)
}

// A stall move that swaps gives both partitions fresh epochs.
func TestAssignStallSwapGivesFreshEpochs(t *testing.T) {
	b := apply(nil, Assign(nil, []string{"c1", "c2"}, 2, nil, 40))
	changes := Assign(b, []string{"c1", "c2"}, 2, map[int]bool{0: true}, 40)
	if len(changes) != 2 {
		t.Fatalf("stall swap changed %v, want both partitions", changes)
	}
	checkFreshEpochs(t, b, 40, changes)
}

func TestLivenessTimesOutAndDrains(t *testing.T) {
	l := NewLiveness(5 * time.Second)
	t0 := time.Now()
	l.Observe(fanout.Heartbeat{Consumer: "a"}, t0)
	for s := 0; s <= 6; s++ { // b beats every second, a never again
		l.Observe(fanout.Heartbeat{Consumer: "b"}, t0.Add(time.Duration(s)*time.Second))
		if s == 4 {
			if got := l.Live(t0.Add(4 * time.Second)); len(got) != 2 {
				t.Fatalf("live = %v", got)
			}
		}
	}
	if got := l.Live(t0.Add(6 * time.Second)); len(got) != 1 || got[0] != "b" {
		t.Fatalf("live after a's timeout = %v, want [b]", got)
	}
	l.Observe(fanout.Heartbeat{Consumer: "b", Draining: true}, t0.Add(6*time.Second))
	if got := l.Live(t0.Add(6 * time.Second)); len(got) != 0 {
		t.Fatalf("a draining consumer is live: %v", got)
	}
}

// A NATS outage silences every consumer at once; the first heartbeat
// through afterwards must not make the others look dead.
func TestLivenessExcusesSilenceOfEveryone(t *testing.T) {
	l := NewLiveness(5 * time.Second)
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	for s := 0; s <= 10; s++ {
		for _, c := range []string{"a", "b", "c"} {
			if excused := l.Observe(fanout.Heartbeat{Consumer: c}, at(float64(s))); excused != 0 {
				t.Fatalf("regular heartbeats excused %s", excused)
			}
		}
	}
	if got := l.Live(at(16)); len(got) != 0 {
		t.Fatalf("live 6s into the silence = %v; nobody has been heard for longer than the timeout", got)
	}
	if excused := l.Observe(fanout.Heartbeat{Consumer: "b"}, at(18)); excused != 8*time.Second {
		t.Fatalf("excused %s, want the 8s silence", excused)
	}
	if got := l.Live(at(18)); len(got) != 3 {
		t.Fatalf("live after the silence = %v, want all three", got)
	}
	// a comes back, c does not: c is dead 5s after its last heartbeat,
	// counting none of the silence.
	for s := 19; s <= 24; s++ {
		l.Observe(fanout.Heartbeat{Consumer: "a"}, at(float64(s)))
		l.Observe(fanout.Heartbeat{Consumer: "b"}, at(float64(s)))
	}
	if got := l.Live(at(22.5)); len(got) != 3 {
		t.Fatalf("live at 22.5s = %v, want c too (4.5s of heard time since its heartbeat)", got)
	}
	if got := l.Live(at(23.5)); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("live at 23.5s = %v, want [a b]", got)
	}
}
