package shapelog

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// epochPath is partitions/<p>/epoch under dir.
func epochPath(dir string, partition int) string {
	return filepath.Join(dir, "partitions", strconv.Itoa(partition), "epoch")
}

// readEpoch returns the owner epoch recorded for partition, 0 when none is.
func readEpoch(dir string, partition int) (uint64, error) {
	data, err := os.ReadFile(epochPath(dir, partition))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read owner epoch of partition %d: %w", partition, err)
	}
	e, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("owner epoch file %s holds %q, not a number (remove it; the next owner rewrites it)",
			epochPath(dir, partition), data)
	}
	return e, nil
}

// writeEpoch records epoch as the owner of partition: written to a temporary
// file, fsynced and renamed over the old one, so a reader sees either epoch.
// The caller holds the partition's epoch lock (lock.go).
func writeEpoch(dir string, partition int, epoch uint64) error {
	path := epochPath(dir, partition)
	pdir := filepath.Dir(path)
	if err := ensurePartitionDir(dir, partition); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(pdir, "epoch-*.tmp")
	if err != nil {
		return fmt.Errorf("write owner epoch of partition %d: %w", partition, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.WriteString(strconv.FormatUint(epoch, 10) + "\n"); err != nil {
		tmp.Close()
		return fmt.Errorf("write owner epoch of partition %d: %w", partition, err)
	}
	if err := syncFile(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("fsync owner epoch of partition %d: %w", partition, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write owner epoch of partition %d: %w", partition, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("install owner epoch of partition %d: %w", partition, err)
	}
	return syncDir(pdir)
}

// syncDir makes a directory's entries (a created or renamed file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s for fsync: %w", dir, err)
	}
	defer d.Close()
	if err := syncFile(d); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
