package flushd

import (
	"sort"
	"time"

	"github.com/fanout/pipeline/fanout"
)

// Liveness tracks consumer heartbeats by the time flushd received them, so
// consumers' clocks do not matter. It is not safe for concurrent use.
type Liveness struct {
	timeout time.Duration
	seen    map[string]time.Time
	beats   map[string]fanout.Heartbeat
}

// NewLiveness declares a consumer dead when no heartbeat arrived for timeout.
func NewLiveness(timeout time.Duration) *Liveness {
	return &Liveness{timeout: timeout, seen: map[string]time.Time{}, beats: map[string]fanout.Heartbeat{}}
}

// Observe records a heartbeat received at now.
func (l *Liveness) Observe(h fanout.Heartbeat, now time.Time) {
	l.seen[h.Consumer] = now
	l.beats[h.Consumer] = h
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
