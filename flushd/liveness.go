package flushd

import (
	"sort"
	"time"

	"github.com/fanout/pipeline/fanout"
)

// Liveness tracks consumer heartbeats by the time flushd received them, so
// consumers' clocks do not matter. It is not safe for concurrent use.
//
// When no heartbeat at all arrives for longer than half the timeout, the
// silence says nothing about the consumers: NATS was failing over (the
// heartbeat bucket had no leader) or flushd was not reading. That time does
// not count against anyone; otherwise the first consumer to get a heartbeat
// through after the outage would be handed every partition, and the rest
// handed back a moment later, each move costing a takeover.
type Liveness struct {
	timeout time.Duration
	seen    map[string]time.Time
	beats   map[string]fanout.Heartbeat
	lastAny time.Time // when the last heartbeat from anyone arrived
}

// NewLiveness declares a consumer dead when no heartbeat arrived for timeout.
func NewLiveness(timeout time.Duration) *Liveness {
	return &Liveness{timeout: timeout, seen: map[string]time.Time{}, beats: map[string]fanout.Heartbeat{}}
}

// Observe records a heartbeat received at now. If it ends a silence of
// every consumer longer than timeout/2, the silence is excused: each known
// consumer's last heartbeat moves forward by it, and Observe returns it.
func (l *Liveness) Observe(h fanout.Heartbeat, now time.Time) (excused time.Duration) {
	if gap := now.Sub(l.lastAny); !l.lastAny.IsZero() && gap > l.timeout/2 {
		excused = gap
		for id, t := range l.seen {
			l.seen[id] = t.Add(gap)
		}
	}
	l.lastAny = now
	l.seen[h.Consumer] = now
	l.beats[h.Consumer] = h
	return excused
}

// Forget removes a consumer (its heartbeat key was deleted: it left).
func (l *Liveness) Forget(id string) {
	delete(l.seen, id)
	delete(l.beats, id)
}

// Live returns, sorted, the consumers that may own partitions at now: a
// recent heartbeat and not draining.
func (l *Liveness) Live(now time.Time) []string {
	var live []string
	for id, t := range l.seen {
		if now.Sub(t) <= l.timeout && !l.beats[id].Draining {
			live = append(live, id)
		}
	}
	sort.Strings(live)
	return live
}

// LastSeen is when the last heartbeat of id arrived.
func (l *Liveness) LastSeen(id string) (time.Time, bool) {
	t, ok := l.seen[id]
	return t, ok
}

// Known returns every consumer heard of, sorted.
func (l *Liveness) Known() []string {
	ids := make([]string, 0, len(l.seen))
	for id := range l.seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
