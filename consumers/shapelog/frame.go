package shapelog

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"sync"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
)

// A record on disk is a frame: 4-byte little-endian payload length, 4-byte
// CRC32-C of the payload, then the payload (JSON of record). A frame cut short
// or failing its CRC marks the torn tail a crash left behind.
const (
	headerSize = 8
	// maxPayload bounds one record, so a garbage length is not read as a
	// gigabyte allocation.
	maxPayload = 256 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// A payload is a record: a binary header, then the record's body. The
// header carries everything the writer, journal replay and readers need to
// place a record (epoch, position, transaction, whether it ends its
// transaction's part), so none of them decode JSON to do so. Version 3,
// written now, little-endian:
//
//	version  1 byte   0x03
//	kind     1 byte   what the body is (RecordKind)
//	flags    1 byte   bit 0: last, the record ends its shape's part of its transaction
//	                  bit 1: truncate, the record holds a truncate
//	                  bit 2: the record opens a move-in window (fanout.Fragment.OpensWindow)
//	                  bits 3-7: how many move-in windows the record closes (0-31)
//	epoch    8 bytes  owner epoch the record was written at
//	lsn      8 bytes  commit LSN of its transaction
//	seq      4 bytes  its place in that transaction's part (fanout.Fragment.Seq)
//	xid      4 bytes  the transaction's id
//	changes  4 bytes  how many row changes the body holds
//	body              for KindChanges: the fragment's wire bytes (fanout.Fragment.Wire)
//
// Older records are still read: version 2 (0x02: epoch, lsn, seq, then the
// fragment; xid and last are read from the fragment's JSON) and version 1
// (JSON {"epoch","fragment"}). LAYOUT.md describes the whole layout.
const (
	recordV3         = 0x03
	recordV3Header   = 1 + 1 + 1 + 8 + 8 + 4 + 4 + 4
	recordV2         = 0x02
	recordV2Header   = 1 + 8 + 8 + 4
	flagLast         = 0x01
	flagTruncate     = 0x02
	flagOpensWindow  = 0x04
	closesShift      = 3              // bits 3-7: windows closed
	recordHeaderSize = recordV3Header // what this build writes
)

// RecordKind says what a record's body is. A reader refuses a kind it does
// not know (a newer build wrote it) rather than skip data.
type RecordKind byte

const (
	// KindChanges is a fragment: one shape's changes of one transaction.
	KindChanges RecordKind = 1
	// Kinds 2 and up are reserved for records that are not row changes
	// (the subquery moves of LAYOUT.md).
)

// recordHeader is what a record says of itself before its body.
type recordHeader struct {
	kind  RecordKind
	epoch uint64
	pos   fanout.Position
	xid   uint32
	last  bool
	// truncate says the record holds a truncate; changes counts its
	// changes. Records before version 3 do not say: changes is -1 there,
	// and only decoding the body tells whether it holds a truncate.
	truncate bool
	changes  int
	// Move-in windows of subquery shapes (fanout/moves.go): the record
	// opens one, and closes this many.
	opens  bool
	closes int
}

// jsonRecord is the payload of a first-version frame.
type jsonRecord struct {
	Epoch    uint64          `json:"epoch"`
	Fragment json.RawMessage `json:"fragment"`
}

// encodeFrame appends the frame of f written at epoch to buf.
func encodeFrame(buf []byte, epoch uint64, f *fanout.Fragment) ([]byte, error) {
	record, err := encodeRecord(epoch, f)
	if err != nil {
		return buf, err
	}
	return appendFrame(buf, record)
}

// encodeRecord is the payload of the frame of f written at epoch.
func encodeRecord(epoch uint64, f *fanout.Fragment) ([]byte, error) {
	body, err := f.Wire()
	if err != nil {
		return nil, fmt.Errorf("encode fragment %s %s: %w", f.Shape, f.Position(), err)
	}
	var flags byte
	if f.Last {
		flags |= flagLast
	}
	if f.HasTruncate() {
		flags |= flagTruncate
	}
	if f.OpensWindow {
		flags |= flagOpensWindow
	}
	if f.ClosesWindows < 0 || f.ClosesWindows > fanout.MaxClosedWindows {
		return nil, fmt.Errorf("fragment %s %s closes %d move-in windows (0..%d)", f.Shape, f.Position(), f.ClosesWindows, fanout.MaxClosedWindows)
	}
	flags |= byte(f.ClosesWindows) << closesShift
	record := make([]byte, 0, recordV3Header+len(body))
	record = append(record, recordV3, byte(KindChanges), flags)
	record = binary.LittleEndian.AppendUint64(record, epoch)
	record = binary.LittleEndian.AppendUint64(record, uint64(f.CommitLSN))
	record = binary.LittleEndian.AppendUint32(record, uint32(f.Seq))
	record = binary.LittleEndian.AppendUint32(record, f.Xid)
	record = binary.LittleEndian.AppendUint32(record, uint32(f.NumChanges()))
	return append(record, body...), nil
}

// appendFrame appends to buf a frame whose payload is parts, concatenated.
func appendFrame(buf []byte, parts ...[]byte) ([]byte, error) {
	size := 0
	for _, p := range parts {
		size += len(p)
	}
	if size > maxPayload {
		return buf, fmt.Errorf("record of %d bytes is over the %d-byte limit", size, maxPayload)
	}
	start := len(buf)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(size))
	buf = append(buf, 0, 0, 0, 0) // CRC, set below
	for _, p := range parts {
		buf = append(buf, p...)
	}
	binary.LittleEndian.PutUint32(buf[start+4:], crc32.Checksum(buf[start+headerSize:], crcTable))
	return buf, nil
}

// readRecord reads the header of a frame's payload and returns the body.
func readRecord(payload []byte) (recordHeader, []byte, error) {
	var h recordHeader
	switch {
	case len(payload) >= recordV3Header && payload[0] == recordV3:
		h.kind = RecordKind(payload[1])
		h.last = payload[2]&flagLast != 0
		h.truncate = payload[2]&flagTruncate != 0
		h.opens = payload[2]&flagOpensWindow != 0
		h.closes = int(payload[2] >> closesShift)
		h.epoch = binary.LittleEndian.Uint64(payload[3:11])
		h.pos.CommitLSN = pglogrepl.LSN(binary.LittleEndian.Uint64(payload[11:19]))
		h.pos.Seq = int(binary.LittleEndian.Uint32(payload[19:23]))
		h.xid = binary.LittleEndian.Uint32(payload[23:27])
		h.changes = int(binary.LittleEndian.Uint32(payload[27:31]))
		if h.kind != KindChanges {
			return h, nil, fmt.Errorf("record of kind %d, which this build does not know (a newer version wrote it: upgrade this service)", h.kind)
		}
		return h, payload[recordV3Header:], nil
	case len(payload) >= recordV2Header && payload[0] == recordV2:
		h.kind, h.changes = KindChanges, -1
		h.epoch = binary.LittleEndian.Uint64(payload[1:9])
		h.pos.CommitLSN = pglogrepl.LSN(binary.LittleEndian.Uint64(payload[9:17]))
		h.pos.Seq = int(binary.LittleEndian.Uint32(payload[17:21]))
		body := payload[recordV2Header:]
		var ok bool
		if h.xid, h.last, ok = fragmentHead(body); !ok {
			f, err := fanout.DecodeFragment(body)
			if err != nil {
				return h, nil, err
			}
			h.xid, h.last = f.Xid, f.Last
		}
		return h, body, nil
	case len(payload) > 0 && payload[0] == '{':
		var r jsonRecord
		if err := json.Unmarshal(payload, &r); err != nil {
			return h, nil, fmt.Errorf("record is not JSON of {epoch, fragment}: %w", err)
		}
		f, err := fanout.DecodeFragment(r.Fragment)
		if err != nil {
			return h, nil, err
		}
		h.kind, h.epoch, h.pos, h.xid, h.last = KindChanges, r.Epoch, f.Position(), f.Xid, f.Last
		h.truncate, h.changes = f.HasTruncate(), len(f.Changes)
		return h, r.Fragment, nil
	default:
		return h, nil, fmt.Errorf("record of unknown format (first byte %#x)", firstByte(payload))
	}
}

// recordPosition reads the epoch and position of a frame's payload, and
// returns the fragment's wire bytes.
func recordPosition(payload []byte) (epoch uint64, pos fanout.Position, body []byte, err error) {
	h, body, err := readRecord(payload)
	return h.epoch, h.pos, body, err
}

// decodeRecord parses a frame's payload.
func decodeRecord(payload []byte) (uint64, *fanout.Fragment, error) {
	h, body, err := readRecord(payload)
	if err != nil {
		return 0, nil, err
	}
	// The fragment keeps its bytes (Wire), and scanFrames reuses its buffer.
	f, err := fanout.DecodeFragment(bytes.Clone(body))
	if err != nil {
		return 0, nil, err
	}
	if f.Position() != h.pos {
		return 0, nil, fmt.Errorf("record header says position %s, its fragment %s", h.pos, f.Position())
	}
	if f.Xid != h.xid || f.Last != h.last {
		return 0, nil, fmt.Errorf("record header says xid %d last %t, its fragment xid %d last %t", h.xid, h.last, f.Xid, f.Last)
	}
	return h.epoch, f, nil
}

// fragmentHead reads xid and last from a fragment's wire JSON without
// decoding it: both stand, once each, among the top-level fields before
// "changes" in the form ingest writes (fanout's appendFragment). ok is false
// when the bytes do not show them plainly: decode the fragment instead.
func fragmentHead(body []byte) (xid uint32, last bool, ok bool) {
	if len(body) == 0 || body[0] != '{' {
		return 0, false, false
	}
	head := body[:min(len(body), 512)]
	i := bytes.Index(head, []byte(`"changes"`))
	if i < 0 {
		return 0, false, false
	}
	head = head[:i]
	digits, ok := fieldValue(head, `"xid":`)
	if !ok {
		return 0, false, false
	}
	n := 0
	for n < len(digits) && digits[n] >= '0' && digits[n] <= '9' {
		n++
	}
	if n == 0 || n == len(digits) || (digits[n] != ',' && digits[n] != '}') {
		return 0, false, false
	}
	v, err := strconv.ParseUint(string(digits[:n]), 10, 32)
	if err != nil {
		return 0, false, false
	}
	lv, ok := fieldValue(head, `"last":`)
	switch {
	case !ok:
		return 0, false, false
	case bytes.HasPrefix(lv, []byte("true,")):
		last = true
	case bytes.HasPrefix(lv, []byte("false,")):
	default:
		return 0, false, false
	}
	return uint32(v), last, true
}

// fieldValue is what follows the one occurrence of name in head.
func fieldValue(head []byte, name string) ([]byte, bool) {
	i := bytes.Index(head, []byte(name))
	if i < 0 || bytes.Count(head, []byte(name)) != 1 {
		return nil, false
	}
	return head[i+len(name):], true
}

func firstByte(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// scanFrames calls fn for every whole, intact frame of r in order, with the
// frame's offset. It returns the offset just after the last intact frame and
// whether bytes follow it that are not an intact frame (a torn tail: the end
// of an interrupted write). A bad frame with an intact frame somewhere after
// it is not a torn tail but damage inside the file: scanFrames then fails
// with a *CorruptError rather than let a writer truncate, or a reader hide,
// the intact records behind it. (That check needs r to be a file.)
func scanFrames(r io.Reader, fn func(off int64, payload []byte) error) (end int64, torn bool, err error) {
	base := int64(-1)
	if f, ok := r.(io.Seeker); ok {
		if off, err := f.Seek(0, io.SeekCurrent); err == nil {
			base = off
		}
	}
	end, torn, err = scanIntact(r, fn)
	if err != nil || !torn || base < 0 {
		return end, torn, err
	}
	ra, ok := r.(io.ReaderAt)
	if !ok {
		return end, torn, nil
	}
	if at, found, err := intactFrameAfter(ra, base+end+1); err != nil {
		return end, false, err
	} else if found {
		return end, false, &CorruptError{Offset: base + end, Next: at}
	}
	return end, true, nil
}

// CorruptError is a damaged frame that intact frames follow.
type CorruptError struct {
	Offset int64 // where the damaged frame starts
	Next   int64 // where the first intact frame after it starts
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("damaged record at byte %d with intact records after it (from byte %d): the file was changed in the middle, not torn at its end; nothing was truncated (restore the file, or move it away to rebuild)", e.Offset, e.Next)
}

// frameReaders are the read buffers of log scans, reused: the shape API
// scans a log for every live request a notice wakes, and a new 64 KiB
// buffer each time was most of its garbage (and its collector's work was
// most of its tail latency).
var frameReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

func scanIntact(r io.Reader, fn func(off int64, payload []byte) error) (end int64, torn bool, err error) {
	br := frameReaders.Get().(*bufio.Reader)
	br.Reset(r)
	defer func() {
		br.Reset(nil)
		frameReaders.Put(br)
	}()
	var h [headerSize]byte
	var payload []byte
	for {
		n, err := io.ReadFull(br, h[:])
		if err == io.EOF {
			return end, false, nil
		}
		if err != nil {
			if err == io.ErrUnexpectedEOF && n > 0 {
				return end, true, nil
			}
			return end, false, err
		}
		size := binary.LittleEndian.Uint32(h[0:4])
		if size > maxPayload {
			return end, true, nil
		}
		if cap(payload) < int(size) {
			payload = make([]byte, size)
		}
		payload = payload[:size]
		if _, err := io.ReadFull(br, payload); err != nil {
			if err == io.ErrUnexpectedEOF || err == io.EOF {
				return end, true, nil
			}
			return end, false, err
		}
		if crc32.Checksum(payload, crcTable) != binary.LittleEndian.Uint32(h[4:8]) {
			return end, true, nil
		}
		if err := fn(end, payload); err != nil {
			return end, false, err
		}
		end += headerSize + int64(size)
	}
}

// intactFrameAfter looks for an intact frame starting at any offset from
// from on. A frame has a payload of at least minFramePayload bytes (zeroed
// pages are never taken for frames). Only called on a damaged frame.
func intactFrameAfter(ra io.ReaderAt, from int64) (int64, bool, error) {
	const window = 1 << 20
	buf := make([]byte, window+headerSize)
	var payload []byte
	for off := from; ; off += window {
		n, err := ra.ReadAt(buf, off)
		if n < headerSize {
			if err == nil || err == io.EOF {
				return 0, false, nil
			}
			return 0, false, fmt.Errorf("read after a damaged record at byte %d: %w", from-1, err)
		}
		for i := 0; i+headerSize <= n && i < window; i++ {
			size := binary.LittleEndian.Uint32(buf[i:])
			if size < minFramePayload || size > maxPayload {
				continue
			}
			if cap(payload) < int(size) {
				payload = make([]byte, size)
			}
			payload = payload[:size]
			if m, _ := ra.ReadAt(payload, off+int64(i)+headerSize); m != int(size) {
				continue
			}
			if crc32.Checksum(payload, crcTable) == binary.LittleEndian.Uint32(buf[i+4:]) {
				return off + int64(i), true, nil
			}
		}
	}
}

// minFramePayload is the smallest payload a frame carries: a journal frame
// has a handle length and a handle, a log record its binary header.
const minFramePayload = 2
