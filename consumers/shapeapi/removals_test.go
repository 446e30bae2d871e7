package shapeapi

import (
	"fmt"
	"testing"
	"time"
)

// A removal is remembered for at least a period, and a server that removes
// shapes all day remembers only the last two periods' worth.
func TestRecentRemovalsAreBoundedAndKeptAPeriod(t *testing.T) {
	at := time.Unix(1_700_000_000, 0)
	rr := newRecentRemovals(10*time.Minute, func() time.Time { return at })
	removedAt := map[string]time.Time{}
	peak := 0
	// One removal a second for five hours.
	for i := 0; i < 5*3600; i++ {
		h := fmt.Sprintf("s%d", i)
		rr.add(h)
		removedAt[h] = at
		peak = max(peak, rr.len())
		// Every handle removed less than a period ago is still known.
		for _, back := range []int{0, 1, 60, 599} {
			if j := i - back; j >= 0 {
				old := fmt.Sprintf("s%d", j)
				if !rr.has(old) {
					t.Fatalf("%s removed %s ago is forgotten (period 10m)", old, at.Sub(removedAt[old]))
				}
			}
		}
		at = at.Add(time.Second)
	}
	// Two periods of one removal a second, and the one that starts a period.
	if peak > 2*600+1 {
		t.Errorf("%d removals remembered at the peak, want at most %d (two periods)", peak, 2*600+1)
	}
	if rr.has("s0") {
		t.Error("a removal five hours old is still remembered")
	}

	// After a quiet spell of over two periods, the old removals go at the
	// next one.
	at = at.Add(25 * time.Minute)
	rr.add("late")
	if rr.len() != 1 || !rr.has("late") {
		t.Errorf("after 25 quiet minutes, %d removals remembered, want only the new one", rr.len())
	}
}
