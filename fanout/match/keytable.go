package match

import (
	"hash/maphash"
	"math/rand/v2"

	"github.com/fanout/pipeline/fanout"
)

// keyTable maps each key of a column index to the first shape of its
// bucket. It is an open-addressing hash table (linear probing) rather than
// a Go map, and a slot carries the shape itself for a shape the index
// decides alone, so that routing a row to such a shape reads one slot: one
// cache line of one page. With a Go map of entries it read the map's
// control word, its slot and then the entry: at 300K shapes each is a cache
// miss, and the pages are too many for the TLB, so each was also a page
// walk (BENCHMARKS.md, "Routing at 300K shapes").
type keyTable[K comparable] struct {
	slots []keySlot[K] // len is a power of two; empty slots have e == nil
	n     int
	hash  func(K) uint64
}

type keySlot[K comparable] struct {
	key K
	e   *entry
	// decided is e.shape when the slot alone routes a row to e: e's where
	// clause is this one equality (e.pred == nil) and it keeps every
	// column (e.proj == nil). Else nil, and e must be read.
	decided *fanout.Shape
}

// The hashes are seeded at random, as Go's maps are: the keys come from
// shape definitions, and a chosen set of colliding keys would make every
// lookup probe a long run of slots.
func newIntKeyTable() keyTable[int64] {
	seed := rand.Uint64()
	return keyTable[int64]{hash: func(k int64) uint64 { return mix64(uint64(k) ^ seed) }}
}

func newTextKeyTable() keyTable[string] {
	seed := maphash.MakeSeed()
	return keyTable[string]{hash: func(k string) uint64 { return maphash.String(seed, k) }}
}

// mix64 is the finalizer of MurmurHash3: every input bit reaches every
// output bit, so the low bits that pick a slot vary with the whole key.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// find returns k's slot, nil when k has none.
func (t *keyTable[K]) find(k K) *keySlot[K] {
	if i := t.index(k); i >= 0 {
		return &t.slots[i]
	}
	return nil
}

// index is the position of k's slot, -1 when k has none.
func (t *keyTable[K]) index(k K) int {
	if t.n == 0 {
		return -1
	}
	mask := len(t.slots) - 1
	for i := int(t.hash(k)) & mask; ; i = (i + 1) & mask {
		if t.slots[i].e == nil {
			return -1
		}
		if t.slots[i].key == k {
			return i
		}
	}
}

// put makes e the first shape of k, adding k if it is new.
func (t *keyTable[K]) put(k K, e *entry) {
	if s := t.find(k); s != nil {
		s.set(e)
		return
	}
	// At most three quarters full: probe runs stay short.
	if (t.n+1)*4 > len(t.slots)*3 {
		t.grow()
	}
	t.place(k, e)
	t.n++
}

func (s *keySlot[K]) set(e *entry) {
	s.e, s.decided = e, nil
	if e.pred == nil && e.proj == nil {
		s.decided = e.shape
	}
}

// place puts k in its first free slot; k must not be in t.
func (t *keyTable[K]) place(k K, e *entry) {
	mask := len(t.slots) - 1
	i := int(t.hash(k)) & mask
	for t.slots[i].e != nil {
		i = (i + 1) & mask
	}
	t.slots[i].key = k
	t.slots[i].set(e)
}

func (t *keyTable[K]) grow() {
	old := t.slots
	t.slots = make([]keySlot[K], max(8, 2*len(old)))
	for i := range old {
		if s := &old[i]; s.e != nil {
			t.place(s.key, s.e)
		}
	}
}

// delete removes k. Linear probing without tombstones: the slots after
// k's that would no longer be reached from their home slot move back.
func (t *keyTable[K]) delete(k K) {
	hole := t.index(k)
	if hole < 0 {
		return
	}
	mask := len(t.slots) - 1
	for j := (hole + 1) & mask; t.slots[j].e != nil; j = (j + 1) & mask {
		home := int(t.hash(t.slots[j].key)) & mask
		// j stays where it is if its home lies cyclically in (hole, j].
		if (j-home)&mask < (j-hole)&mask {
			continue
		}
		t.slots[hole] = t.slots[j]
		hole = j
	}
	t.slots[hole] = keySlot[K]{}
	t.n--
}

// each visits every key's first shape.
func (t *keyTable[K]) each(f func(e *entry)) {
	for i := range t.slots {
		if e := t.slots[i].e; e != nil {
			f(e)
		}
	}
}
