package shapelog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// syncFile is how the store fsyncs a file. Tests replace it to see which
// files were made durable, and in what order.
var syncFile = (*os.File).Sync

// Writers of one partition exclude each other through flock(2) locks in the
// partition's directory; they work across the processes sharing storage.dir
// (a local file system or one shared volume).
//
//   - partitions/<p>/epoch.lock is held while the owner epoch is read,
//     compared and replaced, so a slow Take of an older epoch can never
//     overwrite a newer one (the epoch only grows).
//   - partitions/<p>/writer-<epoch>.lock is held by the writer of that epoch
//     for each batch, and the batch checks the owner epoch under it. A new
//     owner takes the locks of every older epoch once, after recording its
//     own epoch: then no older writer is inside a batch, and every later
//     batch of theirs sees the newer epoch and writes nothing. Only then does
//     it replay journals and truncate torn tails, so it never cuts a frame
//     that an older writer is still appending.

// olderWriterWait bounds how long a new owner waits for an older writer's
// batch to end. Only a frozen process (SIGSTOP, a hung disk) holds a batch
// that long. The new owner then goes on rather than pin the partition's WAL
// for as long as the freeze lasts: the frozen writer's durable consumer is
// already deleted (the worker deletes it before taking storage), so nothing
// it still writes can be acked, and readers skip what it appends behind the
// new owner's records by epoch.
const olderWriterWait = 2 * time.Second

// epochLockWait bounds the wait for the epoch lock, which a Take holds for
// a read, a small write and a rename.
const epochLockWait = 30 * time.Second

func partitionDir(dir string, partition int) string {
	return filepath.Join(dir, "partitions", strconv.Itoa(partition))
}

func writerLockPath(dir string, partition int, epoch uint64) string {
	return filepath.Join(partitionDir(dir, partition), "writer-"+strconv.FormatUint(epoch, 10)+".lock")
}

// ensurePartitionDir creates partitions/<p> and makes its entry durable in
// partitions/ when it is new.
func ensurePartitionDir(dir string, partition int) error {
	pdir := partitionDir(dir, partition)
	if _, err := os.Stat(pdir); err == nil {
		return nil
	}
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w (set storage.dir to a writable directory)", pdir, err)
	}
	return syncDir(filepath.Dir(pdir))
}

// openLock opens (creating it) a lock file without locking it.
func openLock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", path, err)
	}
	return f, nil
}

// lockFile takes an exclusive lock on f, waiting at most wait (0: as long as
// ctx allows). It reports false when the wait ran out.
func lockFile(ctx context.Context, f *os.File, wait time.Duration) (bool, error) {
	deadline := time.Now().Add(wait)
	for delay := time.Millisecond; ; delay = min(delay*2, 50*time.Millisecond) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return false, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		if wait > 0 && time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("lock %s: %w", f.Name(), ctx.Err())
		case <-time.After(delay):
		}
	}
}

func unlockFile(f *os.File) {
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

// lockEpoch holds partitions/<p>/epoch.lock until the returned release.
func lockEpoch(ctx context.Context, dir string, partition int) (release func(), err error) {
	f, err := openLock(filepath.Join(partitionDir(dir, partition), "epoch.lock"))
	if err != nil {
		return nil, err
	}
	got, err := lockFile(ctx, f, epochLockWait)
	if err == nil && !got {
		err = fmt.Errorf("%s held for over %s: another process is frozen inside Take of this partition; it ends when that process resumes or dies", f.Name(), epochLockWait)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() { unlockFile(f); f.Close() }, nil
}

// waitOlderWriters waits until no writer of an epoch below epoch is inside a
// batch, then removes their lock files. It returns the epochs whose writer
// still held its lock after olderWriterWait.
func waitOlderWriters(ctx context.Context, dir string, partition int, epoch uint64) (busy []uint64, err error) {
	entries, err := os.ReadDir(partitionDir(dir, partition))
	if err != nil {
		return nil, fmt.Errorf("list writer locks of partition %d: %w", partition, err)
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "writer-")
		if !ok {
			continue
		}
		older, err := strconv.ParseUint(strings.TrimSuffix(rest, ".lock"), 10, 64)
		if err != nil || older >= epoch {
			continue
		}
		path := filepath.Join(partitionDir(dir, partition), e.Name())
		f, err := openLock(path)
		if err != nil {
			return busy, err
		}
		got, err := lockFile(ctx, f, olderWriterWait)
		if err != nil {
			f.Close()
			return busy, err
		}
		if !got {
			busy = append(busy, older)
			f.Close()
			continue
		}
		// Its writer's later batches lock the unlinked file, see the newer
		// epoch and write nothing.
		os.Remove(path)
		unlockFile(f)
		f.Close()
	}
	return busy, nil
}
