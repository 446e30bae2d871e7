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
	b := apply(nil, Assign(nil, []string{"c1", "c2", "c3"}, 64, nil))
	if len(b) != 64 {
		t.Fatalf("%d partitions bound, want 64", len(b))
	}
	l := loads(b)
	for c, n := range l {
		if n < 21 || n > 22 {
			t.Fatalf("consumer %s owns %d partitions, want 21 or 22 (%v)", c, n, l)
		}
	}
	for p, x := range b {
		if x.Epoch != 1 {
			t.Fatalf("partition %d epoch %d, want 1", p, x.Epoch)
		}
	}
	if again := Assign(b, []string{"c1", "c2", "c3"}, 64, nil); len(again) != 0 {
		t.Fatalf("a balanced assignment moved %d partitions", len(again))
	}
}

func TestAssignMovesOnlyTheDeadConsumersPartitionsWithNewEpochs(t *testing.T) {
	b := apply(nil, Assign(nil, []string{"c1", "c2", "c3"}, 64, nil))
	changes := Assign(b, []string{"c1", "c3"}, 64, nil)
	for _, c := range changes {
		if b[c.Partition].Consumer != "c2" {
			t.Fatalf("partition %d of live %s moved", c.Partition, b[c.Partition].Consumer)
		}
		if c.Epoch != b[c.Partition].Epoch+1 {
			t.Fatalf("partition %d epoch %d, want %d", c.Partition, c.Epoch, b[c.Partition].Epoch+1)
		}
	}
	after := apply(b, changes)
	if l := loads(after); l["c2"] != 0 || l["c1"] != 32 || l["c3"] != 32 {
		t.Fatalf("loads after c2 died: %v", l)
	}
}

func TestAssignRebalancesWhenAConsumerJoins(t *testing.T) {
	b := apply(nil, Assign(nil, []string{"c1"}, 64, nil))
	changes := Assign(b, []string{"c1", "c2"}, 64, nil)
	if len(changes) != 32 {
		t.Fatalf("%d partitions moved to the new consumer, want 32", len(changes))
	}
	if l := loads(apply(b, changes)); l["c1"] != 32 || l["c2"] != 32 {
		t.Fatalf("loads after join: %v", l)
	}
}

func TestAssignKeepsBindingsWhenNobodyIsLive(t *testing.T) {
	b := apply(nil, Assign(nil, []string{"c1"}, 8, nil))
	if changes := Assign(b, nil, 8, nil); len(changes) != 0 {
		t.Fatalf("bindings changed with no live consumer: %v", changes)
	}
}

func TestAssignMovesAStalledPartitionEvenWhenBalanced(t *testing.T) {
	b := apply(nil, Assign(nil, []string{"c1", "c2"}, 4, nil))
	stalled := 0
	owner := b[stalled].Consumer
	changes := Assign(b, []string{"c1", "c2"}, 4, map[int]bool{stalled: true})
	after := apply(b, changes)
	if after[stalled].Consumer == owner || after[stalled].Epoch != b[stalled].Epoch+1 {
		t.Fatalf("stalled partition stayed: %+v (was %+v)", after[stalled], b[stalled])
	}
	// The move is a swap, so the next round has nothing to even out; an
	// uneven result would be trimmed straight back onto the stalled owner.
	if again := Assign(after, []string{"c1", "c2"}, 4, nil); len(again) != 0 {
		t.Fatalf("the round after the stall moves %+v", again)
	}
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
