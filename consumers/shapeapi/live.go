package shapeapi

import "sync"

// hub wakes the held live requests of a shape. It is fed by one core NATS
// subscription to every shape's notices and by the shapes watch (a removed
// shape's requests answer 409), so a held request costs one small channel
// and no polling.
type hub struct {
	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
}

func newHub() *hub { return &hub{waiters: map[string]map[chan struct{}]struct{}{}} }

// register returns a channel that receives (at most one pending signal)
// whenever handle's log may have changed; cancel unregisters it. Register
// before reading the log, so a notice between the read and the wait is not lost.
func (h *hub) register(handle string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	ws := h.waiters[handle]
	if ws == nil {
		ws = map[chan struct{}]struct{}{}
		h.waiters[handle] = ws
	}
	ws[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(ws, ch)
		if len(ws) == 0 && h.waiters[handle] != nil && len(h.waiters[handle]) == 0 {
			delete(h.waiters, handle)
		}
		h.mu.Unlock()
	}
}

// wake signals every request waiting on handle.
func (h *hub) wake(handle string) {
	h.mu.Lock()
	for ch := range h.waiters[handle] {
		select {
		case ch <- struct{}{}:
		default: // a signal is already pending
		}
	}
	h.mu.Unlock()
}

// held is the number of waiting requests.
func (h *hub) held() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, ws := range h.waiters {
		n += len(ws)
	}
	return n
}
