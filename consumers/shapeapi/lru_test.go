package shapeapi

import (
	"fmt"
	"testing"
)

// The caches of column types and served snapshots stay bounded however
// many shapes a replica serves, forgetting the least recently used first.
func TestLRUForgetsTheLeastRecentlyUsed(t *testing.T) {
	c := newLRU[int](3)
	for i := range 3 {
		c.put(fmt.Sprint(i), i)
	}
	if _, ok := c.get("0"); !ok { // 0 is now the most recently used
		t.Fatal("0 was forgotten before the cache was full")
	}
	c.put("3", 3) // forgets 1
	if _, ok := c.get("1"); ok {
		t.Error("1, the least recently used, was kept")
	}
	for _, k := range []string{"0", "2", "3"} {
		if v, ok := c.get(k); !ok || fmt.Sprint(v) != k {
			t.Errorf("get(%s) = %v, %v", k, v, ok)
		}
	}
	c.put("2", 20) // replaces, no growth
	if v, _ := c.get("2"); v != 20 || c.len() != 3 {
		t.Errorf("after replacing 2: value %d, %d entries", v, c.len())
	}
	c.remove("2")
	if _, ok := c.get("2"); ok || c.len() != 2 {
		t.Errorf("after remove: %d entries", c.len())
	}
	for i := range 1000 {
		c.put(fmt.Sprint("x", i), i)
	}
	if c.len() != 3 {
		t.Errorf("%d entries, want at most 3", c.len())
	}
}

// A removed shape's entries go at once (Server.forget), and the server's
// caches are bounded by maxCachedShapes.
func TestServerShapeCachesAreBounded(t *testing.T) {
	s := &Server{indexes: newIndexCache(4), hub: newHub(),
		columns: newLRU[[]ColumnInfo](maxCachedShapes), snaps: newLRU[*snapshotView](maxCachedShapes), chains: newLRU[*chainEntry](maxCachedShapes)}
	for i := range maxCachedShapes + 10 {
		h := fmt.Sprint("s", i)
		s.columns.put(h, []ColumnInfo{{}})
		s.snaps.put(h, &snapshotView{})
	}
	if s.columns.len() != maxCachedShapes || s.snaps.len() != maxCachedShapes {
		t.Fatalf("caches hold %d and %d shapes, bound %d", s.columns.len(), s.snaps.len(), maxCachedShapes)
	}
	last := fmt.Sprint("s", maxCachedShapes+9)
	s.forget(last)
	if s.readyCache(last) != nil {
		t.Error("a removed shape's snapshot view is still cached")
	}
	if _, ok := s.columns.get(last); ok {
		t.Error("a removed shape's column types are still cached")
	}
}
