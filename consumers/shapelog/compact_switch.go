package shapelog

// The last step of a compaction: the writer switches a shape to its new
// generation's log. It copies the records appended since the compaction's
// copy, makes them durable, renames the manifest into place under the
// partition's epoch lock (a newer owner taking the partition meanwhile
// either finds the new generation or fences the rename) and appends to the
// new log from then on.
//
// Appends must not wait for it: so a switch rides on the writer's next
// batch (Append), whose journal fsync also makes the copied records
// durable (they go into the journal ahead of the batch's): the batch pays
// a copy of a few records and a rename, no fsync of its own. Only when no
// batch comes within switchWait (the partition is idle: nobody waits) does
// the compaction take the writer's lock and fsync the new log itself.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// switchWait is how long a compaction waits for a batch to ride on.
const switchWait = 250 * time.Millisecond

// switchPlan is what the writer switches from and to.
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

	// Set by the switch.
	written    int64         // bytes of the records copied by the switch
	held       time.Duration // the time the switch added to the writer's work
	committing time.Time     // when a batch began to commit it
	done       chan error    // the switch's outcome, once
	finished   bool
}

func (p *switchPlan) finish(err error) {
	if !p.finished {
		p.finished = true
		p.done <- err
	}
}

// errBatchFailed ends a switch that was riding on a batch that failed:
// the compaction fails, the log is as it was.
var errBatchFailed = errors.New("the batch the switch rode on failed")

// switchGeneration switches p's shape to its new log (see the top of this
// file) and returns the bytes it copied and the time it added to the
// writer's work. A fault (the test seam) or a failure after the rename
// leaves the writer refusing all work, as a crash would: the next owner of
// the partition opens the new generation.
func (w *fileWriter) switchGeneration(ctx context.Context, p *switchPlan) (written int64, held time.Duration, err error) {
	p.done = make(chan error, 1)
	w.mu.Lock()
	if err := w.usable(); err != nil {
		w.mu.Unlock()
		return 0, 0, err
	}
	w.switches = append(w.switches, p)
	w.mu.Unlock()
	t := time.NewTimer(switchWait)
	defer t.Stop()
	select {
	case err := <-p.done:
		return p.written, p.held, err
	case <-t.C:
	case <-ctx.Done():
	}
	w.mu.Lock()
	if i := slices.Index(w.switches, p); i >= 0 {
		// No batch took it: the partition is idle.
		w.switches = slices.Delete(w.switches, i, i+1)
		w.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		return w.switchNow(ctx, p)
	}
	w.mu.Unlock()
	err = <-p.done // a batch took it and has finished it
	return p.written, p.held, err
}

// usable says why the writer takes no work, if it does not.
func (w *fileWriter) usable() error {
	if w.journal == nil {
		return fmt.Errorf("partition %d: the writer is closed (the partition was released)", w.partition)
	}
	return w.broken
}

// switchNow switches under the writer's batch lock on its own, fsyncing
// the new log.
func (w *fileWriter) switchNow(ctx context.Context, p *switchPlan) (int64, time.Duration, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return 0, 0, err
	}
	unlock, err := w.lockBatch(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer unlock()
	start := time.Now()
	if _, err := w.copyDelta(ctx, p, false); err != nil {
		return 0, 0, err
	}
	if err := syncPath(p.target); err != nil {
		return 0, 0, err
	}
	err = w.commitSwitch(ctx, p)
	return p.written, time.Since(start), err
}

// takeSwitches prepares the switches waiting for a batch, under the
// batch's lock: their records appended since the compaction's copy are
// copied into the new logs, and returned as journal frames to go ahead of
// the batch's. A switch that cannot be prepared fails alone.
func (w *fileWriter) takeSwitches(ctx context.Context) (ready []*switchPlan, journal []byte, err error) {
	plans := w.switches
	w.switches = nil
	for i, p := range plans {
		start := time.Now()
		frames, err := w.copyDelta(ctx, p, true)
		var crash *switchCrash
		if errors.As(err, &crash) {
			for _, q := range plans[i:] {
				q.finish(err)
			}
			return nil, nil, err
		}
		if err != nil {
			p.finish(err)
			continue
		}
		p.held = time.Since(start) // not finished yet: the compaction reads it after
		journal = append(journal, frames...)
		ready = append(ready, p)
	}
	return ready, journal, nil
}

// commitSwitches commits the switches prepared by takeSwitches, once
// the batch's journal (holding their records) is durable.
func (w *fileWriter) commitSwitches(ctx context.Context, ready []*switchPlan) error {
	for _, p := range ready {
		p.committing = time.Now()
		err := w.commitSwitch(ctx, p)
		var crash *switchCrash
		if errors.As(err, &crash) {
			return err
		}
	}
	return nil
}

// finishSwitches ends the switches a failed batch had taken.
func finishSwitches(plans []*switchPlan) {
	for _, p := range plans {
		p.finish(errBatchFailed)
	}
}

// switchCrash is a fault of the test seam inside the writer: the writer
// refuses all work from then on, as a crashed process would.
type switchCrash struct{ err error }

func (c *switchCrash) Error() string { return c.err.Error() }
func (c *switchCrash) Unwrap() error { return c.err }

// crash makes the writer refuse all work after a fault at a step of p.
func (w *fileWriter) crash(p *switchPlan, err error) error {
	w.broken = fmt.Errorf("partition %d: a compaction of shape %s stopped while switching the shape's log (%w); restart the consumer", w.partition, p.handle, err)
	c := &switchCrash{err: w.broken}
	p.finish(c)
	return c
}

// copyDelta checks that the writer appends to the log p copied, and
// copies the records appended since into p's target; with journal, it
// also returns them as journal frames.
func (w *fileWriter) copyDelta(ctx context.Context, p *switchPlan, journal bool) ([]byte, error) {
	if l := w.logs[p.handle]; l != nil && l.path != p.source {
		return nil, fmt.Errorf("the writer appends to %s, not to %s, which the compaction read", l.path, p.source)
	}
	if c, ok := w.closed[p.handle]; ok && c.path != p.source {
		return nil, fmt.Errorf("the writer appends to %s, not to %s, which the compaction read", c.path, p.source)
	}
	if _, err := os.Stat(p.source); err != nil {
		return nil, fmt.Errorf("the shape's log is gone (was the shape removed?): %w", err)
	}
	if err := p.step(StepLocked); err != nil {
		return nil, w.crash(p, err)
	}
	out, err := os.OpenFile(p.target, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	var frames []byte
	var collect func([]byte) error
	if journal {
		collect = func(record []byte) error {
			var err error
			frames, err = appendJournalFrame(frames, p.handle, record)
			return err
		}
	}
	_, acc, written, err := copyRecords(ctx, p.source, p.copied, p.acc, out, nil, collect)
	if err != nil {
		return nil, err
	}
	if l := w.logs[p.handle]; l != nil && l.acc.has && (!acc.has || l.acc.last.After(acc.last)) {
		return nil, fmt.Errorf("the writer has appended up to %s, but the log copied ends at %s: the log changed in a way the compaction does not know", l.acc.last, acc.last)
	}
	p.acc, p.written = acc, written
	return frames, nil
}

// commitSwitch renames p's manifest into place (generation K exists from
// then on) and makes the writer append to the new log.
func (w *fileWriter) commitSwitch(ctx context.Context, p *switchPlan) error {
	if err := p.step(StepDeltaCopied); err != nil {
		return w.crash(p, err)
	}
	if err := w.commitManifest(ctx, p); err != nil {
		p.finish(err)
		return err
	}
	if err := p.step(StepCommitted); err != nil {
		return w.crash(p, err)
	}
	size := p.size + p.written
	if l := w.logs[p.handle]; l != nil {
		l.f.Close()
		delete(w.logs, p.handle)
		f, err := openLogFile(p.target, os.O_RDWR|os.O_APPEND)
		if err != nil {
			return w.crash(p, fmt.Errorf("open the new log: %w", err))
		}
		w.logs[p.handle] = &openLog{handle: p.handle, path: p.target, f: f, acc: p.acc, size: size, used: l.used}
	} else if _, ok := w.closed[p.handle]; ok {
		w.closed[p.handle] = closedLog{acc: p.acc, size: size, path: p.target}
	}
	// The new log is fsynced at the next checkpoint, before the journal
	// holding the records copied into it goes; so are the folders, which
	// makes the rename durable.
	w.dirty[p.handle] = true
	w.newDirs = append(w.newDirs, p.dirs...)
	if err := p.step(StepSwitched); err != nil {
		return w.crash(p, err)
	}
	if !p.committing.IsZero() {
		p.held += time.Since(p.committing) // before finish: the compaction reads it then
	}
	p.finish(nil)
	return nil
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
