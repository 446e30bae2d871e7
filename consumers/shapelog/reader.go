package shapelog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/fanout/pipeline/fanout"
)

// Cursor is a reader's place in a shape log: the byte offset of the next
// frame and the acceptor's state there, so that a read resumed from a cursor
// skips exactly the records a read from the start would skip. The zero
// Cursor is the start of the log. A cursor is only meaningful for the log it
// came from.
type Cursor struct {
	Offset int64
	acc    acceptor
}

// Last is the position of the last accepted fragment before c, if any.
func (c Cursor) Last() (fanout.Position, bool) { return c.acc.last, c.acc.has }

// LogEntry is one accepted record as ReadLog passes it: the position is
// decoded, the fragment only when asked for, so a reader that skips
// fragments it has already served decodes no JSON. An entry is only valid
// during the callback.
type LogEntry struct {
	Position fanout.Position
	Epoch    uint64
	payload  []byte
	handle   string
	offset   int64
}

// Fragment decodes the entry's fragment.
func (e LogEntry) Fragment() (*fanout.Fragment, error) {
	_, fr, err := decodeRecord(e.payload)
	if err != nil {
		return nil, fmt.Errorf("log of shape %s: record at byte %d: %w", e.handle, e.offset, err)
	}
	return fr, nil
}

// ErrStopRead, returned by a ReadLog callback, ends the read early without error.
var ErrStopRead = errors.New("stop reading the shape log")

// ReadLog calls fn, in log order, for every record after from that a
// replay applies (duplicates and zombie epochs are skipped by the rules of
// accept.go, as Materialize skips them), with the cursor just after it. It
// returns the cursor after the last fragment passed to fn (fn returned nil)
// or, when fn never stopped it, after the last intact frame. A torn tail
// ends the read and is left in place: a writer may be appending. A log that
// does not exist (yet) has nothing after from. It only reads, so it never
// slows a writer beyond the page cache.
func ReadLog(dir, handle string, from Cursor, fn func(e LogEntry, next Cursor) error) (Cursor, error) {
	if err := fanout.ValidateHandle(handle); err != nil {
		return from, err
	}
	f, err := os.Open(logPath(dir, handle))
	if errors.Is(err, os.ErrNotExist) {
		return from, nil
	}
	if err != nil {
		return from, fmt.Errorf("open log of shape %s: %w", handle, err)
	}
	defer f.Close()
	if from.Offset > 0 {
		fi, err := f.Stat()
		if err != nil {
			return from, fmt.Errorf("stat log of shape %s: %w", handle, err)
		}
		if fi.Size() < from.Offset {
			return from, fmt.Errorf("log of shape %s is %d bytes, shorter than the read position %d (the log was rewritten; read it from the start)", handle, fi.Size(), from.Offset)
		}
		if _, err := f.Seek(from.Offset, io.SeekStart); err != nil {
			return from, fmt.Errorf("read log of shape %s: %w", handle, err)
		}
	}
	cur := from
	_, _, err = scanFrames(f, func(rel int64, payload []byte) error {
		off := from.Offset + rel
		epoch, pos, _, err := recordPosition(payload)
		if err != nil {
			return fmt.Errorf("log of shape %s: record at byte %d: %w", handle, off, err)
		}
		next := cur
		next.Offset = off + headerSize + int64(len(payload))
		if !next.acc.accept(epoch, pos) {
			cur = next
			return nil
		}
		if err := fn(LogEntry{Position: pos, Epoch: epoch, payload: payload, handle: handle, offset: off}, next); err != nil {
			return err
		}
		cur = next
		return nil
	})
	if errors.Is(err, ErrStopRead) {
		err = nil
	}
	return cur, err
}

// Xid is the entry's transaction id, read from the fragment's JSON without
// decoding it (a reader skipping the transactions a snapshot saw decodes
// none of them); ok is false when the record does not show it plainly: call
// Fragment.
func (e LogEntry) Xid() (xid uint32, ok bool) {
	_, _, body, err := recordPosition(e.payload)
	if err != nil || len(body) == 0 || body[0] != '{' {
		return 0, false
	}
	head := body[:min(len(body), 512)]
	if i := bytes.Index(head, []byte(`"changes"`)); i >= 0 {
		head = head[:i] // the top-level fields before the changes
	}
	i := bytes.Index(head, []byte(`"xid":`))
	if i < 0 || bytes.Count(head, []byte(`"xid":`)) != 1 {
		return 0, false
	}
	digits := head[i+len(`"xid":`):]
	n := 0
	for n < len(digits) && digits[n] >= '0' && digits[n] <= '9' {
		n++
	}
	if n == 0 || n == len(digits) || (digits[n] != ',' && digits[n] != '}') {
		return 0, false
	}
	v, err := strconv.ParseUint(string(digits[:n]), 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(v), true
}
