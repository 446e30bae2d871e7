package shapeapi

import (
	"sync"
	"time"
)

// Admission control: each kind of request that holds something scarce (a
// goroutine waiting on a snapshot, a held connection, a Postgres
// connection) passes a gate that admits at most its limit at once. Over
// it, the request is refused at once with Electric's 503
// concurrent_request_limit_exceeded and retry-after: a client that backs
// off costs nothing, where a queue would hold its connection. The gates
// are entered in one place, Server.admit.

// gate admits at most limit requests of one kind at once.
type gate struct {
	what       string // "live requests": the 503's message
	key        string // the config key of the limit
	limit      int
	retryAfter time.Duration

	mu sync.Mutex
	n  int
}

func newGate(what, key string, limit int, retryAfter time.Duration) *gate {
	return &gate{what: what, key: key, limit: limit, retryAfter: retryAfter}
}

// enter admits one request, which calls release when it is done, or
// refuses it.
func (g *gate) enter() (release func(), refused *overloaded) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n >= g.limit {
		return nil, &overloaded{what: g.what, limit: g.limit, key: g.key, retryAfter: g.retryAfter}
	}
	g.n++
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.n--
			g.mu.Unlock()
		})
	}, nil
}

// inFlight is how many requests the gate holds.
func (g *gate) inFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

// admission holds the gates of the shape API (api.max_*_requests).
type admission struct {
	newShapes *gate // registering a new shape, or waiting for its snapshot
	live      *gate // held long polls and SSE streams
	subsets   *gate // subset snapshot reads
}

func newAdmission(maxNew, maxLive, maxSubsets int, retryAfter time.Duration) *admission {
	return &admission{
		newShapes: newGate("new shape requests", "api.max_new_shape_requests", maxNew, retryAfter),
		live:      newGate("live requests", "api.max_live_requests", maxLive, retryAfter),
		subsets:   newGate("subset requests", "api.max_subset_requests", maxSubsets, retryAfter),
	}
}

// requestKind says which gate a request passes before it is served; new
// shape requests are known only once the definition is looked up, and pass
// theirs then (resolve.go).
func (a *admission) requestKind(req *Request) *gate {
	switch {
	case req.Subset != nil:
		return a.subsets
	case req.Live:
		return a.live
	}
	return nil
}

// admit passes req through its gate: release when done, or the refusal.
func (a *admission) admit(g *gate) (release func(), refused *overloaded) {
	if g == nil {
		return func() {}, nil
	}
	return g.enter()
}
