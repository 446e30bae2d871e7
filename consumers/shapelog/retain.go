package shapelog

// Expiry of superseded generations (LAYOUT.md): a generation replaced by a
// newer one is served for its Retain after that and kept on disk twice as
// long, so a reader that located it just before it stopped being served
// still finishes its read. Then it is removed: its manifest first (from
// then on it no longer exists for anyone), then its files. Generation 0
// loses its log and its snapshot's chunk files; the snapshot's manifest
// stays, naming the generation the shape is served at.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Expired is what ExpireGenerations did.
type Expired struct {
	Removed []uint64 // generations removed
	Bytes   int64    // bytes they held
	// Next is when the next superseded generation is due (zero: none is
	// superseded).
	Next time.Time
}

// ExpireGenerations removes the generations of handle that were superseded
// more than twice their Retain before now, oldest first, and what
// compactions or expiries that did not finish left behind. The partition's
// owner calls it, never while it compacts the same shape.
func ExpireGenerations(dir, handle string, now time.Time) (Expired, error) {
	var out Expired
	chain, err := LoadChain(dir, handle)
	if err != nil {
		return out, err
	}
	last := chain.Last().Number
	if err := removeIncomplete(dir, handle, func(k uint64) bool { return k < last }); err != nil {
		return out, err
	}
	cur := chain.Current()
	for _, g := range chain.gens {
		if g == cur || g.Superseded.IsZero() {
			break // every later one is newer still
		}
		due := g.Superseded.Add(2 * g.Retain)
		if now.Before(due) {
			out.Next = due
			break
		}
		if g.Number == 0 && gen0Removed(dir, handle, chain) {
			continue
		}
		n, err := removeGeneration(dir, handle, chain, g)
		out.Bytes += n
		if err != nil {
			return out, err
		}
		out.Removed = append(out.Removed, g.Number)
	}
	return out, nil
}

// removeGeneration removes g's files and returns the bytes they held.
func removeGeneration(dir, handle string, chain *Chain, g *Generation) (int64, error) {
	if g.Number == 0 {
		n := fileSize(logPath(dir, handle))
		if err := os.Remove(logPath(dir, handle)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("remove the expired log of shape %s: %w", handle, err)
		}
		if chain.Snapshot == nil {
			return n, nil
		}
		ents, err := os.ReadDir(chain.Snapshot.dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return n, fmt.Errorf("list the expired snapshot of shape %s: %w", handle, err)
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), "chunk-") {
				continue
			}
			p := filepath.Join(chain.Snapshot.dir, e.Name())
			size := fileSize(p)
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return n, fmt.Errorf("remove the expired snapshot chunks of shape %s: %w", handle, err)
			}
			n += size
		}
		return n, nil
	}
	gdir := genDir(dir, handle, g.Number)
	var n int64
	ents, _ := os.ReadDir(gdir)
	for _, e := range ents {
		n += fileSize(filepath.Join(gdir, e.Name()))
	}
	if err := os.Remove(filepath.Join(gdir, manifestName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("remove the manifest of expired generation %d of shape %s: %w", g.Number, handle, err)
	}
	if err := os.RemoveAll(gdir); err != nil {
		return n, fmt.Errorf("remove expired generation %d of shape %s: %w", g.Number, handle, err)
	}
	return n, nil
}

// gen0Removed reports whether generation 0 expired already: its log and
// its snapshot's first chunk are gone.
func gen0Removed(dir, handle string, chain *Chain) bool {
	if _, err := os.Stat(logPath(dir, handle)); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	if chain.Snapshot == nil || len(chain.Snapshot.Chunks) == 0 {
		return true
	}
	_, err := os.Stat(filepath.Join(chain.Snapshot.dir, chunkName(0)))
	return errors.Is(err, os.ErrNotExist)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Sizes is what a shape holds on disk, for status and compaction triggers.
type Sizes struct {
	Generation uint64 `json:"generation"` // the current generation
	BaseRows   int64  `json:"base_rows"`  // rows of its base (at its start, not counting its log)
	BaseBytes  int64  `json:"base_bytes"` // bytes of its base
	LogBytes   int64  `json:"log_bytes"`  // bytes of the log the writer appends to
	// DiskBytes is every file of the shape: bases and logs of all the
	// generations still on disk.
	DiskBytes int64 `json:"disk_bytes"`
	// Superseded says a replaced generation is still on disk (it expires
	// 2 x retain after it was replaced).
	Superseded bool `json:"superseded"`
}

// ShapeSizes measures handle under dir. DiskBytes walks the shape's
// folder; the rest reads manifests and one stat.
func ShapeSizes(dir, handle string, disk bool) (Sizes, error) {
	var s Sizes
	chain, err := LoadChain(dir, handle)
	if err != nil {
		return s, err
	}
	cur := chain.Current()
	s.Generation = cur.Number
	if cur.Base != nil {
		s.BaseRows, s.BaseBytes = cur.Base.Rows, cur.Base.Bytes
	}
	s.LogBytes = fileSize(genLogPath(dir, handle, chain.Last().Number))
	for _, g := range chain.gens {
		if g == cur {
			break
		}
		if g.Number > 0 || !gen0Removed(dir, handle, chain) {
			s.Superseded = true
		}
	}
	if disk {
		filepath.WalkDir(filepath.Join(dir, "shapes", handle), func(_ string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if fi, err := d.Info(); err == nil {
					s.DiskBytes += fi.Size()
				}
			}
			return nil
		})
	}
	return s, nil
}
