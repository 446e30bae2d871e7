package ingest

import (
	"slices"
	"sync"

	"github.com/fanout/pipeline/fanout/visibility"
)

// decodedXidsKept is how many routed transactions the hand-off remembers:
// a commit that stays invisible (a synchronous-standby wait) for longer than
// this many later transactions is still caught by the snapshot runner's own
// check (committed in pg_xact, yet in the snapshot's xip list).
const decodedXidsKept = 1 << 16

// decodedXids remembers the xids of the last transactions the router
// committed, in order, so the snapshot hand-off can tell whether an xid
// that a snapshot still sees in progress was routed before a shape existed.
// The router adds; the hand-off goroutine asks.
type decodedXids struct {
	mu   sync.Mutex
	ring []uint32
	seq  map[uint32]uint64 // xid -> its count (1-based) when routed
	n    uint64
}

func newDecodedXids(keep int) *decodedXids {
	return &decodedXids{ring: make([]uint32, keep), seq: map[uint32]uint64{}}
}

func (d *decodedXids) add(xid uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	slot := d.n % uint64(len(d.ring))
	if d.n >= uint64(len(d.ring)) {
		if old := d.ring[slot]; d.seq[old] == d.n-uint64(len(d.ring))+1 {
			delete(d.seq, old)
		}
	}
	d.ring[slot] = xid
	d.n++
	d.seq[xid] = d.n
}

func (d *decodedXids) count() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n
}

// routedWithin reports whether xid was among the first n routed transactions.
func (d *decodedXids) routedWithin(xid uint32, n uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.seq[xid]
	return ok && s <= n
}

// invisible lists, as 64-bit xids in ascending order, the transactions
// among the first n routed that snap does not see: those in its xip list,
// and those at or past its xmax. The latter matter as much: a commit
// waiting for a synchronous standby, with no transaction ended after it,
// is past xmax and in no xip list.
func (d *decodedXids) invisible(snap visibility.Snapshot, n uint64) []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []uint64
	for xid, s := range d.seq {
		if s > n {
			continue
		}
		if x := snap.Widen(xid); !snap.Visible64(x) {
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}
