package shapeapi

import (
	"fmt"
	"testing"
)

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
