package shapelog

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/fanout/pipeline/fanout"
)

// Cursor is a reader's place in a shape log: the generation whose log it
// is in (generation.go), the byte offset of the next frame and the
// acceptor's state there, so that a read resumed from a cursor skips
// exactly the records a read from the start would skip. The zero Cursor is
// the start of generation 0's log; Generation.LogStart is the start of
// another's.
type Cursor struct {
	Offset int64
	acc    acceptor
	gen    uint64
	// windows is how many move-in windows are open here (subquery
	// shapes: see ReadLog); 0 at every readable end.
	windows int
}

// Generation is the generation whose log the cursor is in.
func (c Cursor) Generation() uint64 { return c.gen }

// Last is the position of the last accepted fragment before c, if any.
func (c Cursor) Last() (fanout.Position, bool) { return c.acc.last, c.acc.has }

// LogEntry is one accepted record as ReadLog passes it: the header is
// decoded, the fragment only when asked for, so a reader that skips
// fragments it has already served decodes no JSON. An entry is only valid
// during the callback.
type LogEntry struct {
	Position fanout.Position
	Epoch    uint64
	// Last says the record ends its shape's part of its transaction.
	Last bool
	// Changes is how many row changes the record holds, -1 when its
	// header does not say (records written before format 3).
	Changes int
	// MayTruncate is false when the record surely holds no truncate.
	MayTruncate bool
	xid         uint32
	payload     []byte
	handle      string
	offset      int64
	gen         uint64
}

// Generation is the generation whose log holds the entry.
func (e LogEntry) Generation() uint64 { return e.gen }

// Fragment decodes the entry's fragment.
func (e LogEntry) Fragment() (*fanout.Fragment, error) {
	_, fr, err := decodeRecord(e.payload)
	if err != nil {
		return nil, fmt.Errorf("log of shape %s: record at byte %d: %w", e.handle, e.offset, err)
	}
	return fr, nil
}

// Size is the record's size in bytes: about what its changes weigh.
func (e LogEntry) Size() int { return len(e.payload) }

// Xid is the entry's transaction id, from the record's header (a reader
// skipping the transactions a snapshot saw decodes none of them). ok is
// always true; it stays for the callers that predate version 3 records.
func (e LogEntry) Xid() (xid uint32, ok bool) { return e.xid, true }

// ErrStopRead, returned by a ReadLog callback, ends the read early without error.
var ErrStopRead = errors.New("stop reading the shape log")

// StatLog returns the file information of the log of the chain's newest
// generation, the one a read of the chain ends in (nil when it has none):
// a reader that keeps what it read (the shape API's log index) skips
// reading again a chain whose last log has the file, size and
// modification time it had before the last read. A chain loaded later,
// with a newer generation, names another file.
func (c *Chain) StatLog() (os.FileInfo, error) {
	fi, err := os.Stat(genLogPath(c.dir, c.handle, c.Last().Number))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return fi, err
}

// ReadLog calls fn, in log order, for every record after from that a
// replay applies (duplicates and zombie epochs are skipped by the rules of
// accept.go), with the cursor just after it, up to the log's readable end.
// It reads the log of from's generation only; Chain.Read goes on through
// the newer generations. It returns the cursor after the last record
// passed to fn (fn returned nil) or, when fn never stopped it, the
// readable end.
//
// The readable end is the one rule of what a reader may see: whole
// transactions only. A transaction reaches a shape's log in one or more
// records (large ones are cut into fragments, written by one batch or
// several, possibly by successive owners of the partition); none of its
// records is readable until the record that ends it (Last) is in the log,
// or a record of a later transaction is (a partition is handled in commit
// order, so an earlier transaction whose end never came never will: it was
// dead-lettered). So the records after the end of the last complete
// transaction are held back, and a read resumed from the returned cursor
// gets them whole once their transaction is. Every reader (the HTTP API,
// Materialize, fanoutctl shape rows, compaction) reads through here.
//
// Shapes with subqueries add one rule: a move-in window (a record that
// opens one, fanout/moves.go) holds back everything from that record on,
// later transactions included, until the records that close every open
// window are in the log (the rows the move-in brought). So no reader sees a
// point of the log where rows that moved in are missing.
//
// A torn tail ends the read and is left in place: a writer may be
// appending. A log that does not exist (yet) has nothing after from; one
// that a newer generation replaced and that was removed is an
// *ExpiredError. It only reads, so it never slows a writer beyond the page
// cache.
func ReadLog(dir, handle string, from Cursor, fn func(e LogEntry, next Cursor) error) (Cursor, error) {
	end, _, err := ReadLogHeld(dir, handle, from, fn)
	return end, err
}

// ReadLogHeld is ReadLog that also returns the position of the first
// record after the returned cursor that the readable-end rule held back (an
// incomplete transaction, or records inside an open move-in window); zero
// when none was. A reader's up-to-date watermark must stay below its commit
// LSN: while a window is open, records of complete transactions are held
// back after the safe LSN passed them.
func ReadLogHeld(dir, handle string, from Cursor, fn func(e LogEntry, next Cursor) error) (Cursor, fanout.Position, error) {
	if err := fanout.ValidateHandle(handle); err != nil {
		return from, fanout.Position{}, err
	}
	end, _, held, err := readLog(dir, handle, from, -1, fn)
	return end, held, err
}

// readLog is ReadLog of from's generation's log up to byte limit (-1: the
// readable end). A limit is where the next generation's base ends, the end
// of a complete transaction: everything before it is readable. stopped
// says fn ended the read (ErrStopRead); held is ReadLogHeld's.
func readLog(dir, handle string, from Cursor, limit int64, fn func(e LogEntry, next Cursor) error) (end Cursor, stopped bool, held fanout.Position, err error) {
	f, err := os.Open(genLogPath(dir, handle, from.gen))
	if errors.Is(err, os.ErrNotExist) {
		gone, gerr := logExpired(dir, handle, from.gen)
		if gerr != nil {
			return from, false, fanout.Position{}, gerr
		}
		if gone {
			return from, false, fanout.Position{}, &ExpiredError{Handle: handle, Generation: from.gen, Why: "its log was removed"}
		}
		return from, false, fanout.Position{}, nil
	}
	if err != nil {
		return from, false, fanout.Position{}, fmt.Errorf("open log of shape %s: %w", handle, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return from, false, fanout.Position{}, fmt.Errorf("stat log of shape %s: %w", handle, err)
	}
	size := fi.Size()
	if size < from.Offset {
		return from, false, fanout.Position{}, fmt.Errorf("log of shape %s is %d bytes, shorter than the read position %d (the log was rewritten; read it from the start)", handle, size, from.Offset)
	}
	if limit >= 0 {
		if limit > size {
			return from, false, fanout.Position{}, fmt.Errorf("log of generation %d of shape %s is %d bytes, shorter than where the next generation's base ends (%d): storage damaged", from.gen, handle, size, limit)
		}
		if limit <= from.Offset {
			return from, false, fanout.Position{}, nil // the reader is past the bound already
		}
		size = limit
	}
	r := &logReader{f: f, handle: handle, fn: fn, readable: from, scanned: from}
	_, _, err = scanFrames(io.NewSectionReader(f, from.Offset, size-from.Offset), func(rel int64, payload []byte) error {
		return r.frame(from.Offset+rel, payload)
	})
	if err == nil && limit >= 0 && r.open {
		err = r.passOn(r.scanned.Offset) // complete: the next generation's base holds it
	}
	if errors.Is(err, ErrStopRead) {
		return r.readable, true, fanout.Position{}, nil
	}
	if err == nil && r.open {
		held = r.firstHeld
	}
	return r.readable, false, held, err
}

// logReader applies the readable-end rule to one forward scan of a log.
// Records of a transaction whose end is not seen yet are not passed on at
// once: the scan goes on, and when the transaction turns out complete, its
// records are read again (they are in the page cache) and passed on. Only
// transactions cut into several records pay that second read; nothing is
// held in memory.
type logReader struct {
	f      *os.File
	handle string
	fn     func(e LogEntry, next Cursor) error
	// readable is the cursor after the last record handled (passed on or
	// skipped) that is not inside an incomplete transaction.
	readable Cursor
	// scanned is the cursor after the last record scanned.
	scanned Cursor
	// open is set while the scan is inside a transaction whose end it has
	// not met (or a move-in window): its records from readable on are
	// held back; firstHeld is the first of them.
	open      bool
	openTx    fanout.Position
	firstHeld fanout.Position
}

func (r *logReader) frame(off int64, payload []byte) error {
	h, _, err := readRecord(payload)
	if err != nil {
		return fmt.Errorf("log of shape %s: record at byte %d: %w", r.handle, off, err)
	}
	before := r.scanned
	next := r.scanned
	next.Offset = off + headerSize + int64(len(payload))
	accepted := next.acc.accept(h.epoch, h.pos)
	if accepted {
		next.windows = windowsAfter(before.windows, h)
	}
	r.scanned = next
	if !accepted {
		if !r.open {
			r.readable = next
		}
		return nil
	}
	if r.open && before.windows == 0 && h.pos.CommitLSN != r.openTx.CommitLSN {
		// A later transaction: the open one is as complete as it will
		// ever be. Pass it on, then this record as any other.
		if err := r.passOn(before.Offset); err != nil {
			return err
		}
	}
	if next.windows > 0 {
		// Inside a move-in window: held back until the rows close it.
		if !r.open {
			r.open, r.firstHeld = true, h.pos
		}
		r.openTx = h.pos
		return nil
	}
	if before.windows > 0 {
		// This record closes the last window open.
		if h.last {
			return r.passOn(next.Offset)
		}
		if !r.open {
			r.open, r.firstHeld = true, h.pos
		}
		r.openTx = h.pos
		return nil
	}
	if r.open {
		switch {
		case h.pos.CommitLSN != r.openTx.CommitLSN:
			// A later transaction: the open one is as complete as it
			// will ever be. Pass it on, then this record as any other.
			if err := r.passOn(before.Offset); err != nil {
				return err
			}
		case h.last:
			return r.passOn(next.Offset)
		default:
			return nil // still inside the open transaction
		}
	}
	if !h.last {
		r.open, r.openTx, r.firstHeld = true, h.pos, h.pos
		return nil
	}
	if err := r.fn(r.entry(h, payload, off), next); err != nil {
		return err
	}
	r.readable = next
	return nil
}

// passOn reads the held-back records again, from r.readable to end, and
// passes the accepted ones on; the transaction is then closed.
func (r *logReader) passOn(end int64) error {
	r.open = false
	start, cur := r.readable.Offset, r.readable
	sr := io.NewSectionReader(r.f, start, end-start)
	_, torn, err := scanIntact(sr, func(rel int64, payload []byte) error {
		off := start + rel
		h, _, err := readRecord(payload)
		if err != nil {
			return fmt.Errorf("log of shape %s: record at byte %d: %w", r.handle, off, err)
		}
		next := cur
		next.Offset = off + headerSize + int64(len(payload))
		if next.acc.accept(h.epoch, h.pos) {
			next.windows = windowsAfter(cur.windows, h)
			if err := r.fn(r.entry(h, payload, off), next); err != nil {
				return err
			}
		}
		cur = next
		r.readable = cur
		return nil
	})
	if err == nil && (torn || cur.Offset != end) {
		err = fmt.Errorf("log of shape %s: records between bytes %d and %d changed while being read (the log was rewritten; read it again)", r.handle, start, end)
	}
	return err
}

func (r *logReader) entry(h recordHeader, payload []byte, off int64) LogEntry {
	return LogEntry{Position: h.pos, Epoch: h.epoch, Last: h.last, Changes: h.changes, MayTruncate: h.truncate || h.changes < 0,
		xid: h.xid, payload: payload, handle: r.handle, offset: off, gen: r.scanned.gen}
}

// windowsAfter is how many move-in windows are open after an accepted
// record with header h, open before it. Closing more than are open (rows
// placed again after a restart of ingest, for a window already closed) is
// closing none.
func windowsAfter(open int, h recordHeader) int {
	if h.opens {
		open++
	}
	return max(0, open-h.closes)
}

// OpenWindows is how many move-in windows are open at c (0 at a readable
// end; inside a range passed whole once its windows closed, more).
func (c Cursor) OpenWindows() int { return c.windows }
