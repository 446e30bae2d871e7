package shapelog

import (
	"context"
	"fmt"
	"os"
	"time"
)

// switchPlan is the last step of a compaction: what the writer switches
// from and to.
type switchPlan struct {
	handle string
	source string   // the log the compaction copied (the newest generation's)
	copied int64    // how far into source it copied
	acc    acceptor // the acceptor state after what it copied
	target string   // the new generation's log
	size   int64    // bytes in target
	// manifestTmp is renamed to manifest to commit the generation; dirs
	// are fsynced at the writer's next checkpoint, which makes the rename
	// durable before the journal (holding what was appended since) goes.
	manifestTmp, manifest string
	dirs                  []string
	step                  func(CompactStep) error
}

// switchGeneration commits a compaction under the writer's batch lock,
// so that no append runs meanwhile (an append waits for it: held says how
// long). It copies the records appended since the compaction's copy,
// makes them durable, renames the manifest into place under the
// partition's epoch lock (a newer owner taking the partition meanwhile
// either sees the new generation or fences the rename), and makes the
// writer append to the new log. It returns the bytes it copied.
//
// A fault (the test seam) or a failure after the rename leaves the writer
// refusing all work, as a crash would: the next owner of the partition
// opens the new generation.
func (w *fileWriter) switchGeneration(ctx context.Context, p *switchPlan) (written int64, held time.Duration, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.journal == nil {
		return 0, 0, fmt.Errorf("partition %d: the writer is closed (the partition was released)", w.partition)
	}
	if w.broken != nil {
		return 0, 0, w.broken
	}
	unlock, err := w.lockBatch(ctx)
	if err != nil {
		return 0, 0, err
	}
	locked := time.Now()
	defer func() {
		unlock()
		held = time.Since(locked)
	}()
	crash := func(err error) error {
		w.broken = fmt.Errorf("partition %d: a compaction of shape %s stopped after it had begun to switch the shape's log (%w); restart the consumer", w.partition, p.handle, err)
		return w.broken
	}
	if l := w.logs[p.handle]; l != nil && l.path != p.source {
		return 0, 0, fmt.Errorf("the writer appends to %s, not to %s, which the compaction read", l.path, p.source)
	}
	if c, ok := w.closed[p.handle]; ok && c.path != p.source {
		return 0, 0, fmt.Errorf("the writer appends to %s, not to %s, which the compaction read", c.path, p.source)
	}
	if _, err := os.Stat(p.source); err != nil {
		return 0, 0, fmt.Errorf("the shape's log is gone (was the shape removed?): %w", err)
	}
	if err := p.step(StepLocked); err != nil {
		return 0, 0, crash(err)
	}

	out, err := os.OpenFile(p.target, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return 0, 0, err
	}
	defer out.Close()
	_, acc, written, err := copyRecords(ctx, p.source, p.copied, p.acc, out, nil)
	if err != nil {
		return 0, 0, err
	}
	if l := w.logs[p.handle]; l != nil && l.acc.has && (!acc.has || l.acc.last.After(acc.last)) {
		return 0, 0, fmt.Errorf("the writer has appended up to %s, but the log copied ends at %s: the log changed in a way the compaction does not know", l.acc.last, acc.last)
	}
	if err := syncFile(out); err != nil {
		return 0, 0, fmt.Errorf("fsync %s: %w", p.target, err)
	}
	if err := p.step(StepDeltaCopied); err != nil {
		return 0, 0, crash(err)
	}

	if err := w.commitManifest(ctx, p); err != nil {
		return 0, 0, err
	}
	if err := p.step(StepCommitted); err != nil {
		return 0, 0, crash(err)
	}

	// Generation K exists: the writer appends to its log from now on.
	size := p.size + written
	if l := w.logs[p.handle]; l != nil {
		l.f.Close()
		delete(w.logs, p.handle)
		f, err := openLogFile(p.target, os.O_RDWR|os.O_APPEND)
		if err != nil {
			return 0, 0, crash(fmt.Errorf("open the new log: %w", err))
		}
		w.logs[p.handle] = &openLog{handle: p.handle, path: p.target, f: f, acc: acc, size: size, used: l.used}
	} else if _, ok := w.closed[p.handle]; ok {
		w.closed[p.handle] = closedLog{acc: acc, size: size, path: p.target}
	}
	w.newDirs = append(w.newDirs, p.dirs...)
	if err := p.step(StepSwitched); err != nil {
		return 0, 0, crash(err)
	}
	return written, 0, nil
}

// commitManifest renames the manifest into place while this writer's
// epoch still owns the partition, under the partition's epoch lock: a
// newer owner records its epoch under that lock, so it either finds the new
// generation when it opens the shape's log, or this rename never happens.
func (w *fileWriter) commitManifest(ctx context.Context, p *switchPlan) error {
	release, err := lockEpoch(ctx, w.store.dir, w.partition)
	if err != nil {
		return err
	}
	defer release()
	if err := w.checkEpoch(); err != nil {
		return err
	}
	if err := os.Rename(p.manifestTmp, p.manifest); err != nil {
		return fmt.Errorf("commit %s: %w", p.manifest, err)
	}
	return nil
}
