package shapeapi

import (
	"fmt"
	"testing"
)

// The chunk cache keeps at most its bytes, evicting the least recently
// used, and drops a removed shape's chunks at once.
func TestChunkCacheBoundsAndDrops(t *testing.T) {
	c := newChunkCache(400)
	body := make([]byte, 100)
	c.put("sa/1/0", body)
	c.put("sa/1/1", body)
	c.put("sb/1/0", body)
	c.put("sb/1/1", body)
	c.get("sa/1/0") // used: sa/1/1 is now the least recent
	c.put("sc/1/0", body)
	if c.get("sa/1/1") != nil || c.get("sa/1/0") == nil || c.get("sc/1/0") == nil {
		t.Fatal("the least recently used chunk was not the one evicted")
	}
	if n, size := c.stats(); n != 4 || size != 400 {
		t.Fatalf("%d entries of %d bytes, want 4 of 400", n, size)
	}
	c.put("sd/1/0", make([]byte, 101)) // over a quarter of the cache: not kept
	if c.get("sd/1/0") != nil {
		t.Fatal("a chunk over a quarter of the cache was kept")
	}
	c.dropShape("sb")
	if c.get("sb/1/0") != nil || c.get("sb/1/1") != nil || c.get("sa/1/0") == nil {
		t.Fatal("dropShape removed the wrong entries")
	}
	if n, size := c.stats(); n != 2 || size != 200 {
		t.Fatalf("after dropShape: %d entries of %d bytes, want 2 of 200", n, size)
	}
	c.dropShape("sx") // unknown: nothing happens
}

// The index cache keeps at most its count of shapes, evicting the least
// recently used, and drops a removed shape's index.
func TestIndexCacheBoundsAndDrops(t *testing.T) {
	c := newIndexCache(3)
	a := c.get("sa")
	c.get("sb")
	c.get("sc")
	if c.get("sa") != a {
		t.Fatal("an index was not kept")
	}
	c.get("sd") // evicts sb, the least recently used
	if c.len() != 3 {
		t.Fatalf("%d indexes, want 3", c.len())
	}
	c.drop("sc")
	if c.len() != 2 || c.get("sa") != a {
		t.Fatal("drop removed the wrong index")
	}
	for i := range 100 {
		c.get(fmt.Sprintf("s%d", i))
	}
	if c.len() != 3 {
		t.Fatalf("%d indexes after 100 shapes, want 3", c.len())
	}
}
