package snapshot

import (
	"time"

	"github.com/fanout/pipeline/fanout/shapestate"
)

// retryPause times the failed attempts is how long a shape waits before
// its next generation.
const retryPause = 5 * time.Second

// dueAt is when a runner may claim a shape whose snapshot is not done:
// the zero time for at once. st is its state (nil: creating, never
// claimed); routed says ingest routes it; seen is when this runner first
// saw it.
//
//   - snapshotting: when its lease ends (its runner stopped renewing it);
//   - creating after failed attempts: a pause per attempt, so that a
//     passing outage can pass;
//   - not yet routed: at once when routed, else after routingTimeout from
//     seen, for the snapshot to fail saying ingest does not route it.
func dueAt(st *shapestate.State, routed bool, seen time.Time, routingTimeout time.Duration) time.Time {
	var at time.Time
	if st != nil {
		switch {
		case st.Phase == shapestate.Snapshotting:
			at = st.LeaseUntil
		case st.Phase == shapestate.Creating && st.Attempts > 0:
			at = st.Updated.Add(time.Duration(st.Attempts) * retryPause)
		}
	}
	if !routed {
		if t := seen.Add(routingTimeout); t.After(at) {
			at = t
		}
	}
	return at
}
