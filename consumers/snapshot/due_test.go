package snapshot

import (
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout/shapestate"
)

func TestDueAt(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	const routing = 2 * time.Minute
	for _, c := range []struct {
		name   string
		st     *shapestate.State
		routed bool
		seen   time.Time
		want   time.Time
	}{
		{"new and routed: at once", nil, true, now, time.Time{}},
		{"new, not routed: when the routing timeout ends", nil, false, now, now.Add(routing)},
		{"creating, never failed: at once", &shapestate.State{Phase: shapestate.Creating, Updated: now}, true, now, time.Time{}},
		{"failed twice: two pauses after the last failure", &shapestate.State{Phase: shapestate.Creating, Attempts: 2, Updated: now}, true, now.Add(-time.Hour),
			now.Add(2 * retryPause)},
		{"snapshotting: when the lease ends", &shapestate.State{Phase: shapestate.Snapshotting, LeaseUntil: now.Add(7 * time.Second)}, true, now, now.Add(7 * time.Second)},
		{"snapshotting, not routed: the later of the two", &shapestate.State{Phase: shapestate.Snapshotting, LeaseUntil: now.Add(7 * time.Second)}, false, now,
			now.Add(routing)},
		{"a lease that ended long ago: in the past, so at once", &shapestate.State{Phase: shapestate.Snapshotting, LeaseUntil: now.Add(-time.Hour)}, true, now,
			now.Add(-time.Hour)},
	} {
		if got := dueAt(c.st, c.routed, c.seen, routing); !got.Equal(c.want) {
			t.Errorf("%s: dueAt = %s, want %s", c.name, got, c.want)
		}
	}
}
