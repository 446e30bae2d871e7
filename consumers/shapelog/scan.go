package shapelog

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/fanout/pipeline/fanout"
)

// LogRecord is one intact record of a shape log, as a reader sees it.
type LogRecord struct {
	Generation uint64          // the generation whose log holds it
	Offset     int64           // byte offset of its frame in that log
	Epoch      uint64          // owner epoch it was written at
	Position   fanout.Position // commit LSN and fragment seq
	// Accepted says whether readers apply the record (the rules of
	// accept.go); a duplicate or a zombie's write is on disk but not applied.
	Accepted bool
	// Last says the record ends its shape's part of its transaction (until
	// it is in the log, readers see none of the transaction).
	Last bool
}

// ScanLog calls fn for every intact record of the logs of handle under
// dir, in order, so tools and tests can audit a log without replaying it:
// each generation's log that is still on disk (generation.go), up to where
// the next generation's base ends (the records after that are copied into
// the next one's log). It only reads: a torn tail ends the scan of a log
// and is left in place. A shape without a log has no records.
func ScanLog(dir, handle string, fn func(LogRecord) error) error {
	chain, err := LoadChain(dir, handle)
	if err != nil {
		return err
	}
	for _, g := range chain.gens {
		if err := scanGeneration(dir, handle, g, fn); err != nil {
			return err
		}
	}
	return nil
}

func scanGeneration(dir, handle string, g *Generation, fn func(LogRecord) error) error {
	f, err := os.Open(genLogPath(dir, handle, g.Number))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open log of shape %s: %w", handle, err)
	}
	defer f.Close()
	var r io.Reader = f
	if g.bound >= 0 {
		r = io.NewSectionReader(f, 0, g.bound)
	}
	acc := g.start
	_, _, err = scanFrames(r, func(off int64, payload []byte) error {
		h, _, err := readRecord(payload)
		if err != nil {
			return fmt.Errorf("log of shape %s generation %d: record at byte %d: %w", handle, g.Number, off, err)
		}
		return fn(LogRecord{Generation: g.Number, Offset: off, Epoch: h.epoch, Position: h.pos, Accepted: acc.accept(h.epoch, h.pos), Last: h.last})
	})
	return err
}
