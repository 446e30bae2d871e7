package shapelog

// Compacting one shape (LAYOUT.md, "Compaction (generations)"): the
// current generation's base and log up to X_K become generation K's base,
// the records after X_K are copied into its log, and the partition writer
// switches to that log under its batch lock. Each step leaves either the
// old form or the new one: nothing is visible until the manifest is
// renamed into place, and a generation without one is removed by the next
// compaction.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/fanout/pipeline/fanout"
)

// CompactStep names a point of a compaction. CompactOptions.Fault is
// called at each, so a test can stop (or kill the process) there.
type CompactStep string

const (
	StepStart         CompactStep = "start"          // nothing done yet
	StepReplayed      CompactStep = "replayed"       // the rows at X_K are known, nothing written
	StepBaseHalf      CompactStep = "base-half"      // half of the base's rows written
	StepBaseWritten   CompactStep = "base-written"   // every chunk of the base written and synced
	StepTailCopied    CompactStep = "tail-copied"    // the log after X_K copied and synced
	StepManifestReady CompactStep = "manifest-ready" // the manifest written under a temporary name
	StepLocked        CompactStep = "locked"         // inside the writer's batch lock
	StepDeltaCopied   CompactStep = "delta-copied"   // the records appended meanwhile copied and synced
	StepCommitted     CompactStep = "committed"      // the manifest in place: generation K exists
	StepSwitched      CompactStep = "switched"       // the writer appends to generation K's log
)

// CompactSteps are the steps in the order a compaction passes them.
var CompactSteps = []CompactStep{StepStart, StepReplayed, StepBaseHalf, StepBaseWritten, StepTailCopied,
	StepManifestReady, StepLocked, StepDeltaCopied, StepCommitted, StepSwitched}

// CompactOptions tune one compaction.
type CompactOptions struct {
	// ChunkRows and ChunkBytes bound the base's chunk files, as
	// snapshot.chunk_rows and snapshot.chunk_bytes bound a snapshot's.
	ChunkRows, ChunkBytes int
	// Retain is recorded in the new generation's manifest: how long the
	// generation it replaces is still served (storage.compaction.retain).
	Retain time.Duration
	// IO, when set, is called with the bytes read or written since its
	// last call and may wait: the caller's bound on compaction I/O.
	IO func(ctx context.Context, n int) error
	// Fault, when set, is called at each step; an error ends the
	// compaction there as a crash of the process would, cleaning nothing
	// up. A seam for tests.
	Fault func(CompactStep) error
}

// CompactResult is what one compaction did.
type CompactResult struct {
	Generation  uint64
	Rows        int64 // rows of the new base
	BaseBytes   int64 // bytes of the new base
	TailBytes   int64 // bytes of the log copied after X_K
	SourceBytes int64 // what the new base replaces: the old base and the log up to X_K
	// Held is how long the partition writer's batch lock was held: the
	// longest an append waited for the compaction.
	Held     time.Duration
	Duration time.Duration
}

// ErrNothingToCompact means the current generation's log holds nothing a
// new base would take in.
var ErrNothingToCompact = errors.New("nothing to compact: the current log holds no complete transaction")

// ErrNotCompactable means the shape cannot be compacted: it has no
// complete initial snapshot (so no known columns to write a base with).
var ErrNotCompactable = errors.New("the shape has no complete initial snapshot")

// Compact makes a new generation of shape handle, whose log w (the
// writer of the shape's partition in this process) appends to. It holds
// the shape's rows in memory while it writes the base. On any error the
// shape's log is as it was and still current; a generation left without
// its manifest is removed by the next compaction.
func (s *FileStore) Compact(ctx context.Context, w Writer, handle string, opts CompactOptions) (*CompactResult, error) {
	if err := fanout.ValidateHandle(handle); err != nil {
		return nil, err
	}
	fw, ok := w.(*fileWriter)
	if !ok || fw.store.dir != s.dir {
		return nil, fmt.Errorf("compact shape %s: the writer given is not a partition writer of this store", handle)
	}
	c := &compaction{dir: s.dir, handle: handle, w: fw, opts: opts}
	start := time.Now()
	if err := c.run(ctx); err != nil {
		return nil, fmt.Errorf("compact shape %s: %w", handle, err)
	}
	c.res.Duration = time.Since(start)
	return &c.res, nil
}

type compaction struct {
	dir, handle string
	w           *fileWriter
	opts        CompactOptions
	res         CompactResult
}

// step passes step: the fault seam, and a stop of ctx.
func (c *compaction) step(ctx context.Context, step CompactStep) error {
	if c.opts.Fault != nil {
		if err := c.opts.Fault(step); err != nil {
			return fmt.Errorf("stopped at step %s: %w", step, err)
		}
	}
	return ctx.Err()
}

// io accounts n bytes of I/O against the caller's bound.
func (c *compaction) io(ctx context.Context, n int64) error {
	if c.opts.IO == nil || n <= 0 {
		return nil
	}
	return c.opts.IO(ctx, int(n))
}

func (c *compaction) run(ctx context.Context) error {
	if err := c.step(ctx, StepStart); err != nil {
		return err
	}
	chain, err := LoadChain(c.dir, c.handle)
	if err != nil {
		return err
	}
	snap := chain.Snapshot
	if snap == nil {
		return ErrNotCompactable
	}
	last, cur := chain.Last(), chain.Current()
	k := last.Number + 1
	if err := removeIncomplete(c.dir, c.handle, func(n uint64) bool { return n > last.Number }); err != nil {
		return err
	}
	// What the base is built from must be durable first: a reader of the
	// replaced generation's log reads it up to X_K.
	src := genLogPath(c.dir, c.handle, last.Number)
	if err := syncPath(src); errors.Is(err, os.ErrNotExist) {
		return ErrNothingToCompact
	} else if err != nil {
		return err
	}

	// The rows at X_K: the current base, then the logs up to their
	// readable end, replayed as every reader replays them.
	t := newTable(snap.PrimaryKey)
	end, hasEnd, lastXid := cur.End, cur.HasEnd, cur.LastXid
	if cur.Base != nil {
		c.res.SourceBytes = cur.Base.Bytes
		if err := c.io(ctx, cur.Base.Bytes); err != nil {
			return err
		}
	}
	var read int64
	x, err := t.replay(chain, func(e LogEntry, f *fanout.Fragment) error {
		n := int64(headerSize + len(e.payload))
		read += n
		if f != nil { // applied: not already in the snapshot's rows
			lastXid = e.xid
			if o, ok := lastOp(f, snap.PrimaryKey); ok {
				end, hasEnd = o, true
			}
		}
		return c.io(ctx, n)
	})
	if err != nil {
		return err
	}
	c.res.SourceBytes += read
	if x.gen != last.Number {
		return fmt.Errorf("the replay ended in generation %d's log, not in the newest one's (%d)", x.gen, last.Number)
	}
	if x.Offset == 0 && cur == last {
		return ErrNothingToCompact
	}
	if err := c.step(ctx, StepReplayed); err != nil {
		return err
	}

	gdir, fresh, err := c.makeDir(k)
	if err != nil {
		return err
	}
	base, err := c.writeBase(ctx, gdir, snap, t)
	if err != nil {
		return err
	}
	t = nil // the rows are on disk: let them go before the copy
	if err := c.step(ctx, StepBaseWritten); err != nil {
		return err
	}

	target := filepath.Join(gdir, "log")
	out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("create the log of generation %d: %w", k, err)
	}
	defer out.Close()
	copied, acc, tail, err := copyRecords(ctx, src, x.Offset, x.acc, out, c.io, nil)
	if err != nil {
		return err
	}
	if err := syncFile(out); err != nil {
		return fmt.Errorf("fsync the log of generation %d: %w", k, err)
	}
	dirs := []string{gdir, compactRoot(c.dir, c.handle)}
	if fresh {
		dirs = append(dirs, filepath.Dir(compactRoot(c.dir, c.handle)))
	}
	for _, d := range dirs {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	if err := c.step(ctx, StepTailCopied); err != nil {
		return err
	}

	m := genManifest{Format: genManifestFormat, Handle: c.handle, Generation: k, Snapshot: snap.Generation,
		Visibility: snap.Snapshot, XOffset: x.Offset, Acceptor: encodeAcceptor(x.acc), LastXid: lastXid,
		ChunkVersion: base.Version, Table: base.Table, Columns: base.Columns, PrimaryKey: base.PrimaryKey,
		Rows: base.Rows, Bytes: base.Bytes, Chunks: base.Chunks, Retain: c.opts.Retain.String(),
		SourceBytes: c.res.SourceBytes, TailBytes: tail, Completed: time.Now().UTC()}
	if hasEnd {
		m.End = encodeOpOffset(end)
	}
	data, err := json.Marshal(&m)
	if err != nil {
		return err
	}
	tmp := filepath.Join(gdir, manifestName+".tmp")
	if err := writeSynced(tmp, data); err != nil {
		return fmt.Errorf("write the manifest of generation %d: %w", k, err)
	}
	if err := c.step(ctx, StepManifestReady); err != nil {
		return err
	}

	written, held, err := c.w.switchGeneration(ctx, &switchPlan{handle: c.handle, source: src, copied: copied, acc: acc,
		target: target, size: tail, manifestTmp: tmp, manifest: filepath.Join(gdir, manifestName), dirs: dirs,
		step: func(s CompactStep) error { return c.step(ctx, s) }})
	c.res.Held = held
	if err != nil {
		return err
	}
	c.res.Generation, c.res.Rows, c.res.BaseBytes, c.res.TailBytes = k, base.Rows, base.Bytes, tail+written
	return nil
}

// makeDir creates generation k's folder (and compact/, the first time:
// fresh). It never creates the shape's folder: a shape removed meanwhile
// stays removed.
func (c *compaction) makeDir(k uint64) (gdir string, fresh bool, err error) {
	root := compactRoot(c.dir, c.handle)
	if err := os.Mkdir(root, 0o755); err == nil {
		fresh = true
	} else if !errors.Is(err, os.ErrExist) {
		return "", false, fmt.Errorf("create %s: %w (was the shape removed?)", root, err)
	}
	gdir = genDir(c.dir, c.handle, k)
	if err := os.Mkdir(gdir, 0o755); err != nil {
		return "", false, fmt.Errorf("create %s: %w", gdir, err)
	}
	return gdir, fresh, nil
}

// writeBase writes t's rows, sorted by key, as chunk files in gdir with
// the snapshot's columns: the chunk format of snapshots, so readers serve
// a base as they serve a snapshot.
func (c *compaction) writeBase(ctx context.Context, gdir string, snap *Snapshot, t *table) (*Snapshot, error) {
	sw, err := newChunkWriter(gdir, c.handle, snap.Generation, snap.Table, snap.Columns, snap.PrimaryKey,
		c.opts.ChunkRows, c.opts.ChunkBytes)
	if err != nil {
		return nil, err
	}
	rows := t.sorted()
	var accounted int64
	for i, r := range rows {
		tags, active := t.meta(r)
		if err := sw.AddMeta(r, tags, active); err != nil {
			sw.Abort()
			return nil, err
		}
		if _, bytes, _ := sw.Progress(); bytes-accounted >= 256<<10 {
			if err := c.io(ctx, bytes-accounted); err != nil {
				sw.Abort()
				return nil, err
			}
			accounted = bytes
		}
		if i == len(rows)/2 {
			if err := c.step(ctx, StepBaseHalf); err != nil {
				return nil, err
			}
		}
	}
	if err := sw.finishChunks(); err != nil { // the chunks are durable before the manifest names them
		return nil, err
	}
	base := sw.s
	return &base, c.io(ctx, base.Bytes-accounted)
}

// copyRecords appends to out the records of the log at src from byte from
// on that a reader starting with acceptor acc applies, up to the last
// intact frame, and passes each to collect (if not nil). It returns where
// it stopped in src, the acceptor there and the bytes written.
func copyRecords(ctx context.Context, src string, from int64, acc acceptor, out *os.File,
	account func(context.Context, int64) error, collect func(record []byte) error) (end int64, _ acceptor, written int64, err error) {
	f, err := os.Open(src)
	if err != nil {
		return from, acc, 0, fmt.Errorf("open %s to copy its records: %w", src, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return from, acc, 0, err
	}
	if fi.Size() < from {
		return from, acc, 0, fmt.Errorf("%s is %d bytes, shorter than where its copy goes on (%d): it was rewritten meanwhile", src, fi.Size(), from)
	}
	var buf []byte
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		if _, err := out.Write(buf); err != nil {
			return fmt.Errorf("write %s: %w", out.Name(), err)
		}
		written += int64(len(buf))
		n := int64(len(buf))
		buf = buf[:0]
		if account != nil {
			return account(ctx, 2*n) // read and written
		}
		return nil
	}
	n, _, err := scanFrames(io.NewSectionReader(f, from, fi.Size()-from), func(off int64, payload []byte) error {
		epoch, pos, _, err := recordPosition(payload)
		if err != nil {
			return fmt.Errorf("%s: record at byte %d: %w", src, from+off, err)
		}
		if !acc.accept(epoch, pos) {
			return nil // a duplicate or a zombie's write: readers skip it, so it is left behind
		}
		if buf, err = appendFrame(buf, payload); err != nil {
			return err
		}
		if collect != nil {
			if err := collect(payload); err != nil {
				return err
			}
		}
		if len(buf) >= 1<<20 {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	return from + n, acc, written, err
}

// removeIncomplete removes the generation folders of handle without a
// manifest whose number doomed says: what a compaction or an expiry that
// did not finish left behind.
func removeIncomplete(dir, handle string, doomed func(k uint64) bool) error {
	ks, err := listGenerations(dir, handle)
	if err != nil {
		return err
	}
	for _, k := range ks {
		if !doomed(k) {
			continue
		}
		if _, err := os.Stat(filepath.Join(genDir(dir, handle, k), manifestName)); err == nil {
			continue
		}
		if err := os.RemoveAll(genDir(dir, handle, k)); err != nil {
			return fmt.Errorf("remove the incomplete generation %d of shape %s: %w", k, handle, err)
		}
	}
	return nil
}

// syncPath fsyncs the file at path (opened read-only: Linux writes back
// a file's pages through any descriptor).
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	serr := syncFile(f)
	if cerr := f.Close(); serr == nil {
		serr = cerr
	}
	if serr != nil {
		return fmt.Errorf("fsync %s: %w", path, serr)
	}
	return nil
}
