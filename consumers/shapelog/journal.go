package shapelog

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A partition writer does not fsync every shape log a batch touches: that is
// one fsync per shape, and the disk's fsync rate would cap throughput at a
// few thousand shape-batches a second whatever the batch size. Instead every
// batch goes first to the partition's journal (one append, one fsync), then
// into the shape logs without fsync. The journal is a redo log:
//
//   - after a crash, the next owner of the partition replays it into the
//     shape logs before writing anything (records a log already holds are
//     skipped as duplicates, so replay is idempotent);
//   - a checkpoint fsyncs every shape log written since the last one and then
//     empties the journal, so the journal stays small.
//
// A process crash loses nothing even without the journal (written data is in
// the page cache); the journal is what makes an acked batch survive a machine
// crash or power loss.
//
// Each writer has its own journal file, partitions/<p>/journal-<epoch>, so a
// zombie of an older epoch never writes into the new owner's journal.

// Checkpoint when the journal reaches this size or age, which bounds the
// replay after a crash.
const (
	journalMaxBytes = 16 << 20
	journalMaxAge   = 15 * time.Second
)

// journal is a partition writer's redo log.
type journal struct {
	f          *os.File
	size       int64
	checkpoint time.Time // when the journal was last emptied
}

func journalPath(dir string, partition int, epoch uint64) string {
	return filepath.Join(dir, "partitions", strconv.Itoa(partition), "journal-"+strconv.FormatUint(epoch, 10))
}

// journalFiles lists the journals of partition with an epoch up to max,
// oldest epoch first.
func journalFiles(dir string, partition int, max uint64) ([]string, error) {
	pdir := filepath.Join(dir, "partitions", strconv.Itoa(partition))
	entries, err := os.ReadDir(pdir)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("list journals of partition %d: %w", partition, err)
	}
	type file struct {
		epoch uint64
		path  string
	}
	var files []file
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "journal-")
		if !ok {
			continue
		}
		if epoch, err := strconv.ParseUint(rest, 10, 64); err == nil && epoch <= max {
			files = append(files, file{epoch, filepath.Join(pdir, e.Name())})
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].epoch < files[j].epoch })
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = f.path
	}
	return paths, nil
}

// openJournal opens (creating it) the journal of this writer, empty.
func openJournal(path string) (*journal, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w (set storage.dir to a writable directory)", path, err)
	}
	if err := syncFile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("fsync journal %s: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		f.Close()
		return nil, err
	}
	return &journal{f: f, checkpoint: time.Now()}, nil
}

// appendDurably writes buf to the journal and fsyncs it.
func (j *journal) appendDurably(buf []byte) error {
	if _, err := j.f.Write(buf); err != nil {
		return fmt.Errorf("append to journal %s: %w", j.f.Name(), err)
	}
	j.size += int64(len(buf))
	if err := syncFile(j.f); err != nil {
		return fmt.Errorf("fsync journal %s: %w", j.f.Name(), err)
	}
	return nil
}

func (j *journal) due() bool {
	return j.size >= journalMaxBytes || (j.size > 0 && time.Since(j.checkpoint) >= journalMaxAge)
}

// reset empties the journal once everything in it is durable elsewhere.
func (j *journal) reset() error {
	if err := j.f.Truncate(0); err != nil {
		return fmt.Errorf("empty journal %s: %w", j.f.Name(), err)
	}
	if err := syncFile(j.f); err != nil {
		return fmt.Errorf("fsync journal %s: %w", j.f.Name(), err)
	}
	j.size, j.checkpoint = 0, time.Now()
	return nil
}

// A journal frame's payload is the shape handle's length (one byte), the
// handle, and the shape log record exactly as it goes into that log.
func appendJournalFrame(buf []byte, handle string, record []byte) ([]byte, error) {
	if len(handle) > 255 {
		return buf, fmt.Errorf("shape handle %q is over 255 bytes", handle)
	}
	return appendFrame(buf, []byte{byte(len(handle))}, []byte(handle), record)
}

// scanJournal calls fn for each intact record of the journal at path, in
// order. A torn tail (a crash mid-append) ends the scan: that batch was never
// acked.
func scanJournal(path string, fn func(handle string, record []byte) error) error {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil // replayed and removed meanwhile by a newer owner
	}
	if err != nil {
		return fmt.Errorf("open journal %s for replay: %w", path, err)
	}
	defer f.Close()
	_, _, err = scanFrames(f, func(off int64, payload []byte) error {
		if len(payload) < 1 || len(payload) < 1+int(payload[0]) {
			return fmt.Errorf("journal %s: record at byte %d is too short (the file was written by another version; move it away)", path, off)
		}
		n := int(payload[0])
		return fn(string(payload[1:1+n]), payload[1+n:])
	})
	return err
}
