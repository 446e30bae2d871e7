package shapelog

import (
	"errors"
	"fmt"
	"os"

	"github.com/fanout/pipeline/fanout"
)

// LogRecord is one intact record of a shape log, as a reader sees it.
type LogRecord struct {
	Offset   int64           // byte offset of its frame in the log
	Epoch    uint64          // owner epoch it was written at
	Position fanout.Position // commit LSN and fragment seq
	// Accepted says whether readers apply the record (the rules of
	// accept.go); a duplicate or a zombie's write is on disk but not applied.
	Accepted bool
	// Last says the record ends its shape's part of its transaction (until
	// it is in the log, readers see none of the transaction).
	Last bool
}

// ScanLog calls fn for every intact record of the log of handle under dir,
// in file order, so tools and tests can audit a log without replaying it.
// It only reads: a torn tail ends the scan and is left in place. A shape
// without a log has no records.
func ScanLog(dir, handle string, fn func(LogRecord) error) error {
	if err := fanout.ValidateHandle(handle); err != nil {
		return err
	}
	f, err := os.Open(logPath(dir, handle))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open log of shape %s: %w", handle, err)
	}
	defer f.Close()
	var acc acceptor
	_, _, err = scanFrames(f, func(off int64, payload []byte) error {
		h, _, err := readRecord(payload)
		if err != nil {
			return fmt.Errorf("log of shape %s: record at byte %d: %w", handle, off, err)
		}
		return fn(LogRecord{Offset: off, Epoch: h.epoch, Position: h.pos, Accepted: acc.accept(h.epoch, h.pos), Last: h.last})
	})
	return err
}
