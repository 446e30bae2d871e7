package shapelog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/fanout/pipeline/fanout"
)

// FileStore keeps shape logs in a directory (see the package comment).
type FileStore struct {
	dir string
	log *slog.Logger
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
	return &FileStore{dir: dir, log: log}, nil
}

// Dir is the storage directory.
func (s *FileStore) Dir() string { return s.dir }

func logPath(dir, handle string) string { return filepath.Join(dir, "shapes", handle, "log") }

// Take implements Store.
func (s *FileStore) Take(_ context.Context, partition int, epoch uint64) (Writer, error) {
	cur, err := readEpoch(s.dir, partition)
	if err != nil {
		return nil, err
	}
	if cur > epoch {
		return nil, &FencedError{Partition: partition, Mine: epoch, Current: cur}
	}
	if cur < epoch {
		if err := writeEpoch(s.dir, partition, epoch); err != nil {
			return nil, err
		}
	}
	return &fileWriter{store: s, partition: partition, epoch: epoch, logs: map[string]*openLog{}, closed: map[string]closedLog{}}, nil
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

// openLog is one shape's log opened for appending.
type openLog struct {
	handle string
	f      *os.File
	acc    acceptor
	size   int64 // bytes in the file after this writer's last append or scan
}

// maxOpenLogs bounds the files one partition writer keeps open. A consumer
// owning many partitions of many shapes would otherwise run out of file
// descriptors. A closed log's state is kept (a few words), so reopening it
// needs no rescan unless the file changed size meanwhile.
const maxOpenLogs = 256

// closedLog is what a writer remembers of a log it closed.
type closedLog struct {
	acc  acceptor
	size int64
}

// fileWriter is the Writer of one partition at one epoch.
type fileWriter struct {
	store     *FileStore
	partition int
	epoch     uint64
	mu        sync.Mutex // Writer is single-goroutine; this guards Close racing Append
	logs      map[string]*openLog
	closed    map[string]closedLog
}

// Append implements Writer.
func (w *fileWriter) Append(ctx context.Context, frags []*fanout.Fragment) (Stats, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var st Stats
	if err := ctx.Err(); err != nil {
		return st, err // the caller stopped owning the partition: write nothing
	}
	if err := w.checkEpoch(); err != nil {
		return st, err
	}
	w.closeIdleLogs()
	type pending struct {
		l       *openLog
		buf     []byte
		acc     acceptor // the log's state once buf is durable
		changes int
		n       int
	}
	var order []*pending
	byHandle := map[string]*pending{}
	var newDirs []string
	for _, f := range frags {
		p := byHandle[f.Shape]
		if p == nil {
			l, created, err := w.open(f.Shape)
			if err != nil {
				return Stats{}, err
			}
			if l.acc.maxEpoch > w.epoch {
				return Stats{}, &FencedError{Partition: w.partition, Mine: w.epoch, Current: l.acc.maxEpoch}
			}
			if created {
				newDirs = append(newDirs, filepath.Dir(l.f.Name()))
			}
			p = &pending{l: l, acc: l.acc}
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
		var err error
		if p.buf, err = encodeFrame(p.buf, w.epoch, f); err != nil {
			return Stats{}, err
		}
		p.n++
		p.changes += len(f.Changes)
	}
	for _, p := range order {
		if len(p.buf) == 0 {
			continue
		}
		if _, err := p.l.f.Write(p.buf); err != nil {
			w.drop(p.l) // the tail may be torn: reopen and rescan next time
			return Stats{}, fmt.Errorf("append to log of shape %s: %w", p.l.handle, err)
		}
		p.l.size += int64(len(p.buf))
	}
	for _, p := range order {
		if len(p.buf) == 0 {
			continue
		}
		if err := p.l.f.Sync(); err != nil {
			w.drop(p.l)
			return Stats{}, fmt.Errorf("fsync log of shape %s: %w", p.l.handle, err)
		}
		st.Logs++
	}
	if len(newDirs) > 0 {
		for _, d := range newDirs {
			if err := syncDir(d); err != nil {
				return Stats{}, err
			}
		}
		if err := syncDir(filepath.Join(w.store.dir, "shapes")); err != nil {
			return Stats{}, err
		}
	}
	for _, p := range order {
		p.l.acc = p.acc
		st.Appended += p.n
		st.Changes += p.changes
	}
	return st, nil
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
func (w *fileWriter) open(handle string) (*openLog, bool, error) {
	if l := w.logs[handle]; l != nil {
		return l, false, nil
	}
	if err := fanout.ValidateHandle(handle); err != nil {
		return nil, false, err
	}
	path := logPath(w.store.dir, handle)
	created := false
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		created = true
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, false, fmt.Errorf("create log directory of shape %s: %w", handle, err)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("open log of shape %s: %w", handle, err)
	}
	l := &openLog{handle: handle, f: f}
	if c, ok := w.closed[handle]; ok {
		delete(w.closed, handle)
		if fi, err := f.Stat(); err == nil && fi.Size() == c.size {
			// Unchanged since this writer closed it: its state still holds.
			l.acc, l.size = c.acc, c.size
			w.logs[handle] = l
			return l, created, nil
		}
	}
	if err := recoverLog(l, w.store.log); err != nil {
		f.Close()
		return nil, false, err
	}
	w.logs[handle] = l
	return l, created, nil
}

// closeIdleLogs closes logs, keeping their state, when more than maxOpenLogs
// are open. Called between batches, so no log in use is closed.
func (w *fileWriter) closeIdleLogs() {
	if len(w.logs) <= maxOpenLogs {
		return
	}
	for handle, l := range w.logs {
		if len(w.logs) <= maxOpenLogs/2 {
			return
		}
		w.closed[handle] = closedLog{acc: l.acc, size: l.size}
		l.f.Close()
		delete(w.logs, handle)
	}
}

// recoverLog scans l from the start, learns where it stands and truncates a
// torn tail. Writes go to the end whatever the offset (O_APPEND), so a zombie
// appending through its own descriptor never overwrites a record.
func recoverLog(l *openLog, log *slog.Logger) error {
	if _, err := l.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("read log of shape %s: %w", l.handle, err)
	}
	end, torn, err := scanFrames(l.f, func(off int64, payload []byte) error {
		epoch, f, err := decodeRecord(payload)
		if err != nil {
			return fmt.Errorf("log of shape %s: record at byte %d passes its checksum but does not decode: %w (the log was written by another version; move it away to rebuild the shape)", l.handle, off, err)
		}
		l.acc.accept(epoch, f.Position())
		return nil
	})
	if err != nil {
		return err
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
		if err := l.f.Sync(); err != nil {
			return fmt.Errorf("fsync log of shape %s after truncation: %w", l.handle, err)
		}
	}
	return nil
}

// drop closes a log whose on-disk state is no longer known.
func (w *fileWriter) drop(l *openLog) {
	l.f.Close()
	delete(w.logs, l.handle)
	delete(w.closed, l.handle)
}

// Remove implements Writer.
func (w *fileWriter) Remove(_ context.Context, handle string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if l := w.logs[handle]; l != nil {
		w.drop(l)
	}
	delete(w.closed, handle)
	return RemoveShape(w.store.dir, handle)
}

// Close implements Writer.
func (w *fileWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var first error
	for _, l := range w.logs {
		if err := l.f.Close(); err != nil && first == nil {
			first = fmt.Errorf("close log of shape %s: %w", l.handle, err)
		}
	}
	w.logs = map[string]*openLog{}
	return first
}
