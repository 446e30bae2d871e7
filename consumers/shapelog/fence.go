package shapelog

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// HighestEpoch returns the highest owner epoch recorded for any partition
// directory, including partitions beyond the current bus.partitions (left by
// a larger count). Every record in a log was written at an epoch its
// partition's file recorded first, and those files only grow, so no log holds
// a record above it. Consumers report it in their heartbeats so that flushd
// binds above it, even when the bindings bucket is lost.
func (s *FileStore) HighestEpoch() (uint64, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "partitions"))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list partition directories of %s: %w", s.dir, err)
	}
	var top uint64
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil || !e.IsDir() {
			continue // not a partition directory
		}
		epoch, err := readEpoch(s.dir, p)
		if err != nil {
			return 0, err
		}
		top = max(top, epoch)
	}
	return top, nil
}
