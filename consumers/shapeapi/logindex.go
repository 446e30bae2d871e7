package shapeapi

import (
	"container/list"
	"errors"
	"os"
	"sort"
	"sync"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
)

// markEvery is how many log bytes lie between two marks of an index: a read
// from any offset scans at most this much before its first entry.
const markEvery = 256 << 10

// recentBytes bounds the encoded messages an index keeps of the newest
// fragments: the live requests of a shape, all waiting at about its end,
// are answered from them, so a notice costs one read and one encoding of
// the new data per shape, not one per held request.
const recentBytes = 64 << 10

// logIndex maps client offsets of one shape log to places in the file, so
// a read from an offset does not rescan the log from its start, and keeps
// the newest fragments encoded. It holds a mark every markEvery bytes (a
// few words each) and learns the log as it grows. Every API replica keeps
// its own; it is a cache. It starts at the log of the generation current
// when it is made (generations.go) and follows the logs of the newer ones;
// a read in an older generation starts at that generation's log start.
type logIndex struct {
	mu      sync.Mutex
	started bool // tail is set: the index reads on from there
	marks   []mark
	tail    shapelog.Cursor // how far the index has read
	last    shapelog.Cursor // where the last mark was taken

	// recent holds every entry after recentFrom, oldest first (valid once
	// the log was read to its end once). A truncate is an entry without JSON.
	recent      []Entry
	recentFrom  Offset
	recentSize  int
	recentValid bool

	// unseen is the cursor before the first fragment the snapshot did not
	// see (every one before it was: a read from the snapshot's end starts
	// there); unseenFound once that fragment was met.
	unseen      shapelog.Cursor
	unseenFound bool

	// file is the current log as it was just before the last read: while
	// it has not changed, there is nothing more to read (the many requests
	// one notice wakes read the log once). reads counts the reads.
	file  os.FileInfo
	reads int
	// held is the first record held back after the readable end at the
	// last read (zero: none).
	held fanout.Position
}

// mark is the cursor before a fragment whose first op is at first.
type mark struct {
	cur   shapelog.Cursor
	first Offset
}

// extend reads the log from the index's tail to its current end, adding
// marks and, after the first read, encoding the new fragments (skipping
// those seen says the snapshot holds).
func (ix *logIndex) extend(chain *shapelog.Chain, rel Relation, seen func(*fanout.Fragment) bool) (shapelog.Cursor, error) {
	end, _, err := ix.extendHeld(chain, rel, seen)
	return end, err
}

// extendHeld is extend that also returns the first record held back after
// the readable end (shapelog.ReadLogHeld). A log file unchanged since the
// last read is not read again.
func (ix *logIndex) extendHeld(chain *shapelog.Chain, rel Relation, seen func(*fanout.Fragment) bool) (shapelog.Cursor, fanout.Position, error) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	fi, err := chain.StatLog()
	if err == nil && fi != nil && ix.started && ix.recentValid && unchanged(ix.file, fi) {
		return ix.tail, ix.held, nil
	}
	ix.file = fi
	ix.reads++
	end, held, err := ix.extendLocked(chain, rel, seen)
	if errors.Is(err, shapelog.ErrExpired) {
		// The generation the index read last was removed: start again
		// at the current one.
		end, held, err = ix.extendLocked(chain, rel, seen)
	}
	if err != nil {
		ix.file = nil
	}
	ix.held = held
	return end, held, err
}

// unchanged reports whether a log file is the one seen before (same file,
// size and modification time): a log only grows, and a new generation's
// is another file.
func unchanged(before, now os.FileInfo) bool {
	return before != nil && os.SameFile(before, now) && before.Size() == now.Size() && before.ModTime().Equal(now.ModTime())
}

func (ix *logIndex) extendLocked(chain *shapelog.Chain, rel Relation, seen func(*fanout.Fragment) bool) (shapelog.Cursor, fanout.Position, error) {
	if !ix.started {
		ix.tail, ix.last, ix.unseen, ix.started = chain.Current().LogStart(), chain.Current().LogStart(), chain.Current().LogStart(), true
	}
	prev := ix.tail
	end, held, err := chain.ReadHeld(ix.tail, func(e shapelog.LogEntry, next shapelog.Cursor) error {
		if len(ix.marks) == 0 || prev.Generation() != ix.last.Generation() || prev.Offset-ix.last.Offset >= markEvery {
			ix.marks = append(ix.marks, mark{cur: prev, first: FirstOp(e.Position)})
			ix.last = prev
		}
		before := prev
		prev = next
		// The snapshot's transactions are skipped by xid, undecoded.
		if seen != nil {
			if xid, ok := e.Xid(); ok && seen(&fanout.Fragment{Xid: xid}) {
				if !ix.unseenFound {
					ix.unseen = next
				}
				return nil
			}
		}
		if !ix.unseenFound {
			ix.unseen, ix.unseenFound = before, true
		}
		if !ix.recentValid {
			return nil
		}
		f, err := e.Fragment()
		if err != nil {
			return err
		}
		if seen != nil && seen(f) {
			return nil
		}
		entries, truncated := EncodeFragment(rel, f)
		if truncated {
			entries = append(entries, Entry{Offset: LastOp(e.Position)})
		}
		for _, en := range entries {
			ix.recent = append(ix.recent, en)
			ix.recentSize += len(en.JSON) + 64
		}
		return nil
	})
	if err != nil {
		ix.started = false
		ix.marks, ix.recent, ix.recentSize, ix.recentValid = nil, nil, 0, false
		ix.unseenFound = false
		return end, held, err
	}
	ix.tail = end
	if !ix.recentValid {
		ix.recentValid = true
		if last, ok := end.Last(); ok {
			ix.recentFrom = LastOp(last)
		}
	}
	for ix.recentSize > recentBytes && len(ix.recent) > 0 {
		ix.recentFrom = ix.recent[0].Offset
		ix.recentSize -= len(ix.recent[0].JSON) + 64
		ix.recent = ix.recent[1:]
	}
	return end, held, nil
}

// fromRecent adds the entries after from to c, if the index holds all of
// them; ok false means the file must be read.
func (ix *logIndex) fromRecent(from Offset, c *Chunk) (ok, atEnd, truncated bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if !ix.recentValid || from.Compare(ix.recentFrom) < 0 {
		return false, false, false
	}
	i := sort.Search(len(ix.recent), func(i int) bool { return ix.recent[i].Offset.After(from) })
	for ; i < len(ix.recent); i++ {
		e := ix.recent[i]
		if e.JSON == nil {
			return true, false, true
		}
		if !c.Add(e) {
			return true, false, false
		}
	}
	return true, true, false
}

// seekIn is a cursor in generation g's log at or before every entry
// after o that the snapshot did not see (those before it are all skipped
// anyway): the index's last mark in that log before o, else its start.
func (ix *logIndex) seekIn(g *shapelog.Generation, o Offset) shapelog.Cursor {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	cur := g.LogStart()
	if i := sort.Search(len(ix.marks), func(i int) bool { return ix.marks[i].first.After(o) }); i > 0 && ix.marks[i-1].cur.Generation() == g.Number {
		cur = ix.marks[i-1].cur
	}
	if ix.unseen.Generation() == g.Number && ix.unseen.Offset > cur.Offset {
		cur = ix.unseen
	}
	return cur
}

// maxIndexes bounds the shapes whose log index a replica keeps: an index
// is a few words per markEvery bytes of log plus up to recentBytes of
// encoded messages, so 10,000 of them stay under about a gigabyte even when
// every one holds its recent messages. An evicted index is rebuilt by the
// next read of its shape (one scan of the log).
const maxIndexes = 10_000

// indexCache holds the log indexes of the shapes read lately, at most max,
// evicting the least recently used; drop removes a removed shape's. It is
// keyed by handle, and a handle serves one definition (replica mode
// included, Definition.Key), so an index's encoded messages are always in
// the mode of the requests that read them.
type indexCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // of *indexEntry; front: most recently used
	items map[string]*list.Element
}

type indexEntry struct {
	handle string
	ix     *logIndex
}

func newIndexCache(max int) *indexCache {
	return &indexCache{max: max, order: list.New(), items: map[string]*list.Element{}}
}

// get returns handle's index, made empty if the cache has none.
func (c *indexCache) get(handle string) *logIndex {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.items[handle]; e != nil {
		c.order.MoveToFront(e)
		return e.Value.(*indexEntry).ix
	}
	ix := &logIndex{}
	c.items[handle] = c.order.PushFront(&indexEntry{handle, ix})
	for c.order.Len() > max(c.max, 1) {
		old := c.order.Remove(c.order.Back()).(*indexEntry)
		delete(c.items, old.handle)
	}
	return ix
}

// drop forgets handle's index.
func (c *indexCache) drop(handle string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.items[handle]; e != nil {
		c.order.Remove(e)
		delete(c.items, handle)
	}
}

func (c *indexCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
