package snapshot

import (
	"sync"

	"github.com/fanout/pipeline/fanout/shapestate"
)

// routingView is ingest's latest hand-off (shapestate.Routing) as the
// runner's watch of the state bucket delivers it, for jobs to wait on
// without reading KV: a new shape's snapshot starts the moment ingest
// routes it.
type routingView struct {
	mu      sync.Mutex
	rt      shapestate.Routing
	known   bool
	changed chan struct{} // closed when rt changes, then replaced
}

func newRoutingView() *routingView { return &routingView{changed: make(chan struct{})} }

func (v *routingView) set(rt shapestate.Routing) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rt, v.known = rt, true
	close(v.changed)
	v.changed = make(chan struct{})
}

// get returns the routing, whether any was seen, and a channel closed at
// the next change.
func (v *routingView) get() (shapestate.Routing, bool, <-chan struct{}) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.rt, v.known, v.changed
}

// routes reports whether ingest routes shapes-bucket revision rev.
func (v *routingView) routes(rev uint64) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.known && v.rt.Revision >= rev
}
