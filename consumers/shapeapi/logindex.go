package shapeapi

import (
	"sort"
	"sync"

	"github.com/fanout/pipeline/consumers/shapelog"
)

// markEvery is how many log bytes lie between two marks of an index: a read
// from any offset scans at most this much before its first entry.
const markEvery = 256 << 10

// logIndex maps client offsets of one shape log to places in the file, so
// a read from an offset does not rescan the log from its start. It holds a
// mark every markEvery bytes (a few words each) and learns the log as
// reads pass its end. Every API replica keeps its own; it is a cache.
type logIndex struct {
	mu    sync.Mutex
	marks []mark
	tail  shapelog.Cursor // how far the index has read
	last  shapelog.Cursor // where the last mark was taken
}

// mark is the cursor before a fragment whose first op is at first.
type mark struct {
	cur   shapelog.Cursor
	first Offset
}

// extend reads the log from the index's tail to its current end, adding marks.
func (ix *logIndex) extend(dir, handle string) (shapelog.Cursor, error) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	prev := ix.tail
	end, err := shapelog.ReadLog(dir, handle, ix.tail, func(e shapelog.LogEntry, next shapelog.Cursor) error {
		if len(ix.marks) == 0 || prev.Offset-ix.last.Offset >= markEvery {
			ix.marks = append(ix.marks, mark{cur: prev, first: FirstOp(e.Position)})
			ix.last = prev
		}
		prev = next
		return nil
	})
	if err != nil {
		ix.tail = shapelog.Cursor{}
		ix.marks, ix.last = nil, shapelog.Cursor{}
		return end, err
	}
	ix.tail = end
	return end, nil
}

// seek is a cursor at or before every entry after o.
func (ix *logIndex) seek(o Offset) shapelog.Cursor {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	i := sort.Search(len(ix.marks), func(i int) bool { return ix.marks[i].first.After(o) })
	if i == 0 {
		return shapelog.Cursor{}
	}
	return ix.marks[i-1].cur
}
