package match

import (
	"math/rand"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

// TestKeyTable checks keyTable against a Go map through random puts and
// deletes, with a hash that collides often and wraps around the end of the
// slots, so that deletes move probe runs back.
func TestKeyTable(t *testing.T) {
	for _, hash := range []struct {
		name string
		h    func(int64) uint64
	}{
		{"collisions", func(k int64) uint64 { return uint64(k%5) * 0x5555555555555555 }},
		{"mixed", newIntKeyTable().hash},
	} {
		t.Run(hash.name, func(t *testing.T) {
			rng := rand.New(rand.NewSource(1))
			kt := keyTable[int64]{hash: hash.h}
			want := map[int64]*entry{}
			for i := 0; i < 20_000; i++ {
				k := int64(rng.Intn(300))
				if rng.Intn(3) == 0 {
					kt.delete(k)
					delete(want, k)
				} else {
					e := &entry{}
					kt.put(k, e)
					want[k] = e
				}
				if kt.n != len(want) {
					t.Fatalf("step %d: %d keys, want %d", i, kt.n, len(want))
				}
				if i%97 != 0 {
					continue
				}
				for k := int64(0); k < 300; k++ {
					s := kt.find(k)
					if e, ok := want[k]; (s != nil) != ok || ok && s.e != e {
						t.Fatalf("step %d: key %d: found %v, want %v", i, k, s, e)
					}
				}
				seen := 0
				kt.each(func(*entry) { seen++ })
				if seen != len(want) {
					t.Fatalf("step %d: each visited %d, want %d", i, seen, len(want))
				}
			}
		})
	}
}

// TestKeySlotDecided: a slot carries the shape only when it alone decides
// the shape (one equality, every column kept), and follows the entry put
// in it.
func TestKeySlotDecided(t *testing.T) {
	r := NewRegistry()
	for _, s := range []*fanout.Shape{shape("all", "owner = 7"), shape("proj", "owner = 7", "title"), shape("and", "owner = 7 AND title = 'x'")} {
		if err := r.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	ints := r.tables["public.items"].cols[0].ints
	s := ints.first.find(7)
	if s == nil || s.e != r.shapes["all"] || s.decided != r.shapes["all"].shape {
		t.Fatalf("slot of 7 = %+v, want the shape of all", s)
	}
	r.Remove("all") // the bucket's last shape moves into the slot
	if s := ints.first.find(7); s == nil || s.decided != nil || s.e == r.shapes["all"] {
		t.Fatalf("slot of 7 after removing all = %+v, want an undecided shape", s)
	}
}
