package shapelog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"

	"github.com/fanout/pipeline/fanout"
)

// FileStore keeps shape logs in a directory (see the package comment).
type FileStore struct {
	dir string
	log *slog.Logger
	// maxOpenLogs bounds the logs each writer keeps open (SetMaxOpenLogs).
	maxOpenLogs int
}

// NewFileStore uses dir (created if missing) for shape logs.
func NewFileStore(dir string, log *slog.Logger) (*FileStore, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{dir, filepath.Join(dir, "shapes"), filepath.Join(dir, "partitions")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("storage directory: %w (set storage.dir to a writable directory)", err)
		}
	}
	return &FileStore{dir: dir, log: log, maxOpenLogs: defaultMaxOpenLogs}, nil
}

// SetMaxOpenLogs sets how many shape logs each partition writer keeps open
// (at least MinOpenLogs; OpenLogsPerWriter says how many the process's
// descriptor limit allows). Call it before taking writers: a writer keeps
// the bound it was taken with.
func (s *FileStore) SetMaxOpenLogs(n int) { s.maxOpenLogs = max(n, MinOpenLogs) }

// Dir is the storage directory.
func (s *FileStore) Dir() string { return s.dir }

func logPath(dir, handle string) string { return filepath.Join(dir, "shapes", handle, "log") }

// Take implements Store. In order: the new epoch is recorded (under the
// partition's epoch lock, so it only grows), every older writer's batch in
// progress is waited for (lock.go), the journals of older owners are
// replayed and every log they name is made durable, and only then are they
// removed.
func (s *FileStore) Take(ctx context.Context, partition int, epoch uint64) (Writer, error) {
	if err := ensurePartitionDir(s.dir, partition); err != nil {
		return nil, err
	}
	release, err := lockEpoch(ctx, s.dir, partition)
	if err != nil {
		return nil, fmt.Errorf("take partition %d: %w", partition, err)
	}
	cur, err := readEpoch(s.dir, partition)
	if err == nil && cur > epoch {
		err = &FencedError{Partition: partition, Mine: epoch, Current: cur}
	}
	if err == nil && cur < epoch {
		err = writeEpoch(s.dir, partition, epoch)
	}
	release()
	if err != nil {
		return nil, err
	}
	lock, err := openLock(writerLockPath(s.dir, partition, epoch))
	if err != nil {
		return nil, err
	}
	busy, err := waitOlderWriters(ctx, s.dir, partition, epoch)
	if err != nil {
		lock.Close()
		return nil, err
	}
	if len(busy) > 0 {
		s.log.Warn("an older writer of the partition is still inside a batch after the wait (a frozen process?); going on: it can no longer ack, and readers skip what it writes behind this epoch",
			"partition", partition, "epoch", epoch, "older_epochs", busy, "waited", olderWriterWait)
	}
	w := &fileWriter{store: s, partition: partition, epoch: epoch, lock: lock, maxOpenLogs: s.maxOpenLogs, logs: map[string]*openLog{}, closed: map[string]closedLog{}, dirty: map[string]bool{}}
	if err := w.replay(); err != nil {
		w.closeLogs()
		lock.Close()
		return nil, err
	}
	j, err := openJournal(journalPath(s.dir, partition, epoch))
	if err != nil {
		w.closeLogs()
		lock.Close()
		return nil, err
	}
	w.journal = j
	w.fs = openFilesystem(s.dir)
	return w, nil
}

// Materialize implements Store.
func (s *FileStore) Materialize(_ context.Context, handle string, pk []string) ([]fanout.Row, error) {
	return Materialize(s.dir, handle, pk)
}

// Remove implements Store.
func (s *FileStore) Remove(_ context.Context, handle string) error { return RemoveShape(s.dir, handle) }

// Handles implements Store.
func (s *FileStore) Handles(context.Context) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "shapes"))
	if err != nil {
		return nil, fmt.Errorf("list shape logs: %w", err)
	}
	var hs []string
	for _, e := range entries {
		if e.IsDir() && fanout.ValidateHandle(e.Name()) == nil {
			hs = append(hs, e.Name())
		}
	}
	sort.Strings(hs)
	return hs, nil
}

// RemoveShape deletes the log of handle under dir.
func RemoveShape(dir, handle string) error {
	if err := fanout.ValidateHandle(handle); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(dir, "shapes", handle)); err != nil {
		return fmt.Errorf("remove log of shape %s: %w", handle, err)
	}
	return syncDir(filepath.Join(dir, "shapes"))
}

// openLog is one shape's log opened for appending: the log of its
// current generation (generation.go), at path.
type openLog struct {
	handle string
	path   string
	f      *os.File
	acc    acceptor
	size   int64  // bytes in the file after this writer's last append or scan
	used   uint64 // the writer's use count when the log was last opened or found open
}

// A partition writer keeps a bounded number of logs open: a consumer owning
// many partitions of many shapes would otherwise run out of file
// descriptors. A closed log's state is kept (a few words), so reopening it
// needs no rescan unless the file changed size meanwhile; but a reopen is
// an open(2), and with every log of a busy partition open there are none.
const (
	defaultMaxOpenLogs = 256 // FileStore's bound until SetMaxOpenLogs
	MinOpenLogs        = 16  // the lowest bound SetMaxOpenLogs takes
)

// closedLog is what a writer remembers of a log it closed.
type closedLog struct {
	acc  acceptor
	size int64
	path string
}

// fileWriter is the Writer of one partition at one epoch.
type fileWriter struct {
	store     *FileStore
	partition int
	epoch     uint64
	mu        sync.Mutex // Writer is single-goroutine; this guards Close racing Append
	lock      *os.File   // writer-<epoch>.lock, held during each batch (lock.go)
	// maxOpenLogs bounds len(logs): closeIdleLogs closes down to half of it.
	maxOpenLogs int
	logs        map[string]*openLog
	closed      map[string]closedLog
	uses        uint64 // counts w.open calls: openLog.used orders the open logs by recency
	reopens     int    // logs opened again after closeIdleLogs closed them

	journal *journal
	// dirty names the logs written since the last checkpoint, open or
	// closed since (closing a log does not make it durable).
	dirty   map[string]bool
	newDirs []string // log directories created since the last checkpoint
	broken  error    // set when durability can no longer be promised
	// fs is storage.dir opened for syncfs at checkpoints, or nil where every
	// log is fsynced instead (syncfs_linux.go).
	fs *os.File
	// switches are compactions waiting for the next batch to switch a
	// shape to its new log (compact_switch.go).
	switches []*switchPlan
}

// Append implements Writer. The batch is durable once it is in the
// partition's journal (one fsync); the shape logs are written after it and
// fsynced at the next checkpoint (journal.go). A batch may name more shapes
// than the writer keeps logs open: logs are closed as needed on the way
// (their state kept) and reopened to be written.
func (w *fileWriter) Append(ctx context.Context, frags []*fanout.Fragment) (Stats, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var st Stats
	if err := ctx.Err(); err != nil {
		return st, err // the caller stopped owning the partition: write nothing
	}
	reopensBefore := w.reopens
	if w.broken != nil {
		return st, w.broken
	}
	unlock, err := w.lockBatch(ctx)
	if err != nil {
		return st, err
	}
	defer unlock()
	// Compactions waiting to switch a shape to its new log do it with this
	// batch: the records they copy go into its journal, ahead of its own.
	switches, journalBuf, err := w.takeSwitches(ctx)
	if err != nil {
		return Stats{}, err // a fault of the test seam: the writer is done
	}
	defer finishSwitches(switches) // those still open if the batch fails
	type pending struct {
		handle  string
		buf     []byte
		acc     acceptor // the log's state once buf is written
		changes int
		n       int
	}
	var order []*pending
	byHandle := map[string]*pending{}
	for _, f := range frags {
		p := byHandle[f.Shape]
		if p == nil {
			l, err := w.open(f.Shape)
			if err != nil {
				return Stats{}, err
			}
			if l.acc.maxEpoch > w.epoch {
				return Stats{}, &FencedError{Partition: w.partition, Mine: w.epoch, Current: l.acc.maxEpoch}
			}
			p = &pending{handle: f.Shape, acc: l.acc}
			w.closeIdleLogs()
			byHandle[f.Shape] = p
			order = append(order, p)
		}
		orphan := p.acc.orphan(f)
		if !p.acc.accept(w.epoch, f.Position()) {
			st.Skipped++
			continue
		}
		if orphan {
			st.Orphans++
			w.store.log.Warn("fragment continues a transaction whose earlier part is not in the log (replacement consumer mid-transaction, or a dead-lettered piece); appended",
				"shape", f.Shape, "commit_lsn", f.CommitLSN.String(), "seq", f.Seq, "partition", w.partition)
		}
		record, err := encodeRecord(w.epoch, f)
		if err != nil {
			return Stats{}, &ShapeError{Shape: f.Shape, Err: err}
		}
		if p.buf, err = appendFrame(p.buf, record); err != nil {
			return Stats{}, &ShapeError{Shape: f.Shape, Err: fmt.Errorf("fragment %s: %w", f.Position(), err)}
		}
		if journalBuf, err = appendJournalFrame(journalBuf, f.Shape, record); err != nil {
			return Stats{}, err
		}
		p.n++
		p.changes += f.NumChanges()
	}
	if len(journalBuf) > 0 {
		if err := w.appendJournal(journalBuf); err != nil {
			return Stats{}, err
		}
	}
	if err := w.commitSwitches(ctx, switches); err != nil {
		return Stats{}, err // a fault of the test seam: the writer is done
	}
	if len(order) == 0 || st.Skipped == len(frags) {
		st.Reopened = w.reopens - reopensBefore
		return st, nil // every fragment was a duplicate
	}
	// The logs are written in the reverse order of their opening above:
	// when the batch names more shapes than the writer keeps open, the ones
	// still open are the last opened, and writing those first finds them
	// open (in opening order, each write would reopen a log that the
	// previous reopen had just closed as the least recently used).
	for i := len(order) - 1; i >= 0; i-- {
		p := order[i]
		if len(p.buf) == 0 {
			continue
		}
		l, err := w.open(p.handle) // open still, or reopened: its state is kept
		if err != nil {
			// The batch is in the journal, which the next owner replays.
			w.broken = fmt.Errorf("partition %d: the log of shape %s cannot be reopened after its batch was journaled (%v); restart the consumer, which replays the partition's journal", w.partition, p.handle, err)
			return Stats{}, w.broken
		}
		if _, err := l.f.Write(p.buf); err != nil {
			// The batch is in the journal; what reached this log is
			// unknown, so it is reopened and rescanned next time.
			w.drop(l)
			return Stats{}, fmt.Errorf("append to log of shape %s: %w", p.handle, err)
		}
		l.size += int64(len(p.buf))
		l.acc = p.acc
		w.dirty[p.handle] = true
		w.closeIdleLogs()
		st.Logs++
		st.Appended += p.n
		st.Changes += p.changes
	}
	if w.journal.due() {
		if err := w.checkpoint(); err != nil {
			return Stats{}, err
		}
	}
	st.Reopened = w.reopens - reopensBefore
	return st, nil
}

// appendJournal makes buf durable in the journal. A failed append is cut off
// again, so that no later record lands behind a torn one (replay stops at
// the first torn record); if even that fails, the writer refuses all work.
func (w *fileWriter) appendJournal(buf []byte) error {
	size := w.journal.size
	err := w.journal.appendDurably(buf)
	if err == nil {
		return nil
	}
	if terr := w.journal.f.Truncate(size); terr != nil {
		w.broken = fmt.Errorf("journal of partition %d cannot be repaired after a failed append (%v): %w; restart the consumer, which replays the journal", w.partition, err, terr)
		return w.broken
	}
	w.journal.size = size
	return err
}

// checkpoint fsyncs every log written since the last checkpoint and the
// directories created meanwhile, then empties the journal.
func (w *fileWriter) checkpoint() error {
	if w.fs != nil && len(w.dirty)+len(w.newDirs) >= syncFilesystemFrom {
		// One syncfs instead of an fsync per log and directory: at 300K
		// shapes a checkpoint has thousands of logs to sync, and fsyncing
		// 5,000 small files took this machine 1 s and 0.4 s of CPU where
		// one syncfs took 40-80 ms.
		if err := syncFS(w.fs); err != nil {
			return w.breakDurability(fmt.Errorf("syncfs of the file system of %s: %w", w.store.dir, err))
		}
	} else {
		if err := w.syncLogs(); err != nil {
			return w.breakDurability(err)
		}
		if len(w.newDirs) > 0 {
			for _, d := range w.newDirs {
				if err := syncDir(d); err != nil {
					return err
				}
			}
			if err := syncDir(filepath.Join(w.store.dir, "shapes")); err != nil {
				return err
			}
		}
	}
	w.dirty = map[string]bool{}
	w.newDirs = nil
	if w.journal == nil {
		return nil
	}
	return w.journal.reset()
}

// breakDurability makes the writer refuse all work after a failed sync:
// Linux may have dropped the unwritten pages with the error, so a second
// sync would succeed without them. Only a replay of the journal (kept as
// it is) restores them.
func (w *fileWriter) breakDurability(err error) error {
	w.broken = fmt.Errorf("partition %d: %w; restart the consumer, which replays the partition's journal into the shape logs", w.partition, err)
	return w.broken
}

// syncFilesystemFrom is how many dirty logs and new directories make a
// checkpoint sync the whole file system of the store (syncfs) rather than
// each of them: below it, fsyncs cost less than writing out whatever else
// the file system holds (keep storage.dir on its own volume, PRODUCTION.md).
const syncFilesystemFrom = 64

// parallelSyncs bounds the logs a checkpoint fsyncs at once.
const parallelSyncs = 16

// syncLogs fsyncs the dirty logs, several at a time: fsyncs of different
// files overlap in the disk queue and share journal commits of the file
// system. A log closed since it was written is reopened for its fsync: the
// kernel keeps its unwritten pages, and a write-back error nobody has seen
// yet is reported to the new descriptor.
func (w *fileWriter) syncLogs() error {
	errs := make([]error, 0, len(w.dirty))
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	sem := make(chan struct{}, parallelSyncs)
	var wg sync.WaitGroup
	for handle := range w.dirty {
		l := w.logs[handle]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if l != nil {
				if err := syncFile(l.f); err != nil {
					fail(fmt.Errorf("fsync log of shape %s: %w", handle, err))
				}
				return
			}
			if err := syncClosedLog(w.closedPath(handle)); err != nil {
				fail(fmt.Errorf("fsync log of shape %s: %w", handle, err))
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// closedPath is the current log of handle, which this writer does not
// hold open.
func (w *fileWriter) closedPath(handle string) string {
	if c, ok := w.closed[handle]; ok {
		return c.path
	}
	path, _, err := currentLog(w.store.dir, handle)
	if err != nil {
		return logPath(w.store.dir, handle) // fsynced if there; the error shows at its next open
	}
	return path
}

// syncClosedLog fsyncs the log at path through a new descriptor. A log that
// is gone was removed with its shape: nothing of it needs to last.
func syncClosedLog(path string) error {
	f, err := openLogFile(path, os.O_RDONLY)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	serr := syncFile(f)
	if cerr := f.Close(); serr == nil {
		serr = cerr
	}
	return serr
}

// replay writes the records of the partition's journals (this epoch's and
// older ones: a crashed or fenced owner's) that the shape logs lack, makes
// them durable, and deletes the journals.
func (w *fileWriter) replay() error {
	paths, err := journalFiles(w.store.dir, w.partition, w.epoch)
	if err != nil || len(paths) == 0 {
		return err
	}
	bufs := map[*openLog][]byte{}
	// Every log a journal names is fsynced before the journal goes, also
	// when it already holds the records: the dead owner may have written
	// them without an fsync, and they may still be only in the page cache.
	named := map[*openLog]bool{}
	// A shape whose log is unusable (ShapeError) is left out of the replay;
	// its next batch sets it aside. The journals are then kept, renamed, for
	// the operator instead of removed: they hold that shape's acked records.
	unusable := map[string]error{}
	replayed := 0
	for _, path := range paths {
		err := scanJournal(path, func(handle string, record []byte) error {
			if unusable[handle] != nil {
				return nil
			}
			l, err := w.open(handle)
			var shapeErr *ShapeError
			if errors.As(err, &shapeErr) {
				unusable[handle] = err
				return nil
			}
			if err != nil {
				return err
			}
			named[l] = true
			epoch, pos, _, err := recordPosition(record)
			if err != nil {
				return fmt.Errorf("journal %s: %w", path, err)
			}
			if !l.acc.accept(epoch, pos) {
				return nil // the log holds it already
			}
			if bufs[l], err = appendFrame(bufs[l], record); err != nil {
				return err
			}
			replayed++
			return nil
		})
		if err != nil {
			return err
		}
	}
	for l, buf := range bufs {
		if _, err := l.f.Write(buf); err != nil {
			return fmt.Errorf("replay journal into log of shape %s: %w", l.handle, err)
		}
		l.size += int64(len(buf))
	}
	for l := range named {
		w.dirty[l.handle] = true
		// The dead owner may have created the log's directory, unsynced.
		w.newDirs = append(w.newDirs, filepath.Dir(l.f.Name()))
	}
	if err := w.checkpoint(); err != nil {
		return err
	}
	for _, path := range paths {
		if len(unusable) > 0 {
			kept := path + ".kept"
			if err := os.Rename(path, kept); err != nil && !os.IsNotExist(err) {
				return fmt.Errorf("keep replayed journal %s: %w", path, err)
			}
			w.store.log.Error("journal replayed except into unusable shape logs; kept for recovery by hand", "journal", kept, "shapes", fmt.Sprint(unusable))
			continue
		}
		// Owners taking the partition in quick succession may replay the
		// same journal; the records are the same, so either removal will do.
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("remove replayed journal: %w", err)
		}
	}
	if replayed > 0 {
		w.store.log.Info("replayed records from the partition's journal into shape logs (writes not yet fsynced when the last owner stopped)",
			"partition", w.partition, "records", replayed, "logs", len(bufs))
	}
	return nil
}

// lockBatch takes this epoch's writer lock for one batch and checks, under
// it, that no newer owner took the partition: a newer owner takes the lock
// once after recording its epoch, so a batch that passes here is finished
// before the newer owner recovers anything.
func (w *fileWriter) lockBatch(ctx context.Context) (unlock func(), err error) {
	if _, err := lockFile(ctx, w.lock, 0); err != nil {
		return nil, err
	}
	if err := w.checkEpoch(); err != nil {
		unlockFile(w.lock)
		return nil, err
	}
	return func() { unlockFile(w.lock) }, nil
}

// checkEpoch refuses the batch when a newer owner took the partition.
func (w *fileWriter) checkEpoch() error {
	cur, err := readEpoch(w.store.dir, w.partition)
	if err != nil {
		return err
	}
	if cur > w.epoch {
		return &FencedError{Partition: w.partition, Mine: w.epoch, Current: cur}
	}
	return nil
}

// open returns the open log of handle, opening (and recovering) it first.
// A log directory it creates is fsynced at the next checkpoint.
func (w *fileWriter) open(handle string) (*openLog, error) {
	w.uses++
	if l := w.logs[handle]; l != nil {
		l.used = w.uses
		return l, nil
	}
	if err := fanout.ValidateHandle(handle); err != nil {
		return nil, err
	}
	var path string
	var start acceptor
	c, wasClosed := w.closed[handle]
	if wasClosed {
		path = c.path
	} else {
		var err error
		if path, start, err = currentLog(w.store.dir, handle); err != nil {
			return nil, err // a damaged manifest is a *ShapeError
		}
	}
	// Most opens are of a log that exists (one this writer closed as idle):
	// try that first, and look at the directory only when it is missing.
	f, err := openLogFile(path, os.O_RDWR|os.O_APPEND)
	if errors.Is(err, os.ErrNotExist) && path == logPath(w.store.dir, handle) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, fmt.Errorf("create log directory of shape %s: %w", handle, err)
		}
		w.newDirs = append(w.newDirs, filepath.Dir(path))
		f, err = openLogFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND)
	}
	if err != nil {
		return nil, fmt.Errorf("open log of shape %s: %w", handle, err)
	}
	l := &openLog{handle: handle, path: path, f: f, used: w.uses, acc: start}
	if wasClosed {
		w.reopens++
		delete(w.closed, handle)
		if fi, err := f.Stat(); err == nil && fi.Size() == c.size {
			// Unchanged since this writer closed it: its state still holds.
			l.acc, l.size = c.acc, c.size
			w.logs[handle] = l
			return l, nil
		}
		// Changed by someone else meanwhile: find and read it afresh.
		f.Close()
		return w.open(handle)
	}
	if err := recoverLog(l, w.store.log); err != nil {
		f.Close()
		return nil, err
	}
	w.logs[handle] = l
	return l, nil
}

// openLogFile opens a shape log as a plain blocking file. os.OpenFile
// would also try to register it with the runtime's network poller, four
// system calls that cannot succeed for a regular file; at 300K shapes,
// where nearly every write reopens a log, they were a seventh of a
// consumer's CPU.
func openLogFile(path string, flag int) (*os.File, error) {
	for {
		fd, err := syscall.Open(path, flag|syscall.O_CLOEXEC, 0o644)
		if err == syscall.EINTR {
			continue // interrupted by a signal before it began: not a failure
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	}
}

// closeIdleLogs closes logs, keeping their state, when more than
// w.maxOpenLogs are open, down to half of that: the least recently used
// first, so that the logs of busy shapes stay open while those of rarely
// written ones come and go. Any log may be closed, also one the batch in progress uses:
// Append keeps its own state of those and reopens them to write. A closed
// log stays dirty until the next checkpoint fsyncs it: checkpointing here
// instead made every batch at 300K shapes (thousands of logs) fsync
// hundreds of files.
func (w *fileWriter) closeIdleLogs() {
	if len(w.logs) <= w.maxOpenLogs {
		return
	}
	byAge := make([]*openLog, 0, len(w.logs))
	for _, l := range w.logs {
		byAge = append(byAge, l)
	}
	// Sorting maxOpenLogs+1 logs once per maxOpenLogs/2 opens: a few
	// comparisons per open, against a system call per reopen avoided.
	slices.SortFunc(byAge, func(a, b *openLog) int { return cmp.Compare(a.used, b.used) })
	for _, l := range byAge[:len(byAge)-w.maxOpenLogs/2] {
		w.closed[l.handle] = closedLog{acc: l.acc, size: l.size, path: l.path}
		if err := l.f.Close(); err != nil {
			w.store.log.Warn("closing an idle shape log failed; the next checkpoint's fsync reports whether its data is lost", "shape", l.handle, "err", err)
		}
		delete(w.logs, l.handle)
	}
}

// recoverLog scans l from the start, from the acceptor state l has (the
// state its generation's log starts from), learns where it stands and
// truncates a torn tail. Writes go to the end whatever the offset (O_APPEND), so a zombie
// appending through its own descriptor never overwrites a record.
func recoverLog(l *openLog, log *slog.Logger) error {
	if fi, err := l.f.Stat(); err == nil && fi.Size() == 0 {
		return nil // a new log: nothing to learn
	}
	if _, err := l.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("read log of shape %s: %w", l.handle, err)
	}
	var undecodable error
	end, torn, err := scanFrames(l.f, func(off int64, payload []byte) error {
		epoch, pos, _, err := recordPosition(payload)
		if err != nil {
			undecodable = fmt.Errorf("record at byte %d passes its checksum but does not decode: %w (written by another version, or damaged; move the log away to rebuild the shape)", off, err)
			return undecodable
		}
		l.acc.accept(epoch, pos)
		return nil
	})
	var corrupt *CorruptError
	if undecodable != nil || errors.As(err, &corrupt) {
		return &ShapeError{Shape: l.handle, Err: err}
	}
	if err != nil {
		return fmt.Errorf("read log of shape %s: %w", l.handle, err)
	}
	l.size = end
	if torn {
		size := int64(-1)
		if fi, err := l.f.Stat(); err == nil {
			size = fi.Size()
		}
		log.Warn("shape log has a torn or corrupt tail (an interrupted write); truncating it, the fragments in it were not acked and will be redelivered",
			"shape", l.handle, "offset", end, "size", size)
		if err := l.f.Truncate(end); err != nil {
			return fmt.Errorf("truncate torn tail of log of shape %s at byte %d: %w", l.handle, end, err)
		}
		if err := syncFile(l.f); err != nil {
			return fmt.Errorf("fsync log of shape %s after truncation: %w", l.handle, err)
		}
	}
	return nil
}

// drop closes a log whose on-disk state is no longer known. What this writer
// wrote to it is still in the journal, which is replayed on the next Take.
func (w *fileWriter) drop(l *openLog) {
	l.f.Close()
	delete(w.logs, l.handle)
	delete(w.closed, l.handle)
	if w.dirty[l.handle] {
		delete(w.dirty, l.handle)
		w.broken = fmt.Errorf("partition %d: a write to the log of shape %s failed after its batch was journaled; restart the consumer, which replays the partition's journal", w.partition, l.handle)
	}
}

// Remove implements Writer. A checkpoint first empties the journal, so a
// later replay cannot bring the removed log back.
func (w *fileWriter) Remove(ctx context.Context, handle string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.broken != nil {
		return w.broken
	}
	unlock, err := w.lockBatch(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if err := w.checkpoint(); err != nil {
		return err
	}
	if l := w.logs[handle]; l != nil {
		w.drop(l)
	}
	delete(w.closed, handle)
	return RemoveShape(w.store.dir, handle)
}

// Close implements Writer: a checkpoint, so the next owner has no journal to
// replay, then the files are closed.
func (w *fileWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.switches {
		p.finish(fmt.Errorf("partition %d: the writer closed (the partition was released) before the switch", w.partition))
	}
	w.switches = nil
	var first error
	if w.broken == nil && w.journal != nil {
		first = w.checkpoint()
	}
	if err := w.closeLogs(); err != nil && first == nil {
		first = err
	}
	if w.journal != nil {
		if err := w.journal.f.Close(); err != nil && first == nil {
			first = fmt.Errorf("close journal: %w", err)
		}
		w.journal = nil
	}
	if w.lock != nil {
		w.lock.Close()
		w.lock = nil
	}
	if w.fs != nil {
		w.fs.Close()
		w.fs = nil
	}
	return first
}

func (w *fileWriter) closeLogs() error {
	var first error
	for _, l := range w.logs {
		if err := l.f.Close(); err != nil && first == nil {
			first = fmt.Errorf("close log of shape %s: %w", l.handle, err)
		}
	}
	w.logs = map[string]*openLog{}
	return first
}
