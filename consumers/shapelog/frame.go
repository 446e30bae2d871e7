package shapelog

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"

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

// record is the payload of a frame.
type record struct {
	Epoch    uint64          `json:"epoch"`
	Fragment json.RawMessage `json:"fragment"`
}

// encodeFrame appends the frame of f written at epoch to buf.
func encodeFrame(buf []byte, epoch uint64, f *fanout.Fragment) ([]byte, error) {
	body, err := f.Encode()
	if err != nil {
		return buf, fmt.Errorf("encode fragment %s %s: %w", f.Shape, f.Position(), err)
	}
	payload, err := json.Marshal(record{Epoch: epoch, Fragment: body})
	if err != nil {
		return buf, fmt.Errorf("encode record %s %s: %w", f.Shape, f.Position(), err)
	}
	if len(payload) > maxPayload {
		return buf, fmt.Errorf("fragment %s %s is %d bytes, over the %d-byte record limit", f.Shape, f.Position(), len(payload), maxPayload)
	}
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[0:4], uint32(len(payload)))
	binary.LittleEndian.PutUint32(h[4:8], crc32.Checksum(payload, crcTable))
	buf = append(buf, h[:]...)
	return append(buf, payload...), nil
}

// decodeRecord parses a frame's payload.
func decodeRecord(payload []byte) (uint64, *fanout.Fragment, error) {
	var r record
	if err := json.Unmarshal(payload, &r); err != nil {
		return 0, nil, fmt.Errorf("record is not JSON of {epoch, fragment}: %w", err)
	}
	f, err := fanout.DecodeFragment(r.Fragment)
	if err != nil {
		return 0, nil, err
	}
	return r.Epoch, f, nil
}

// scanFrames calls fn for every whole, intact frame of r in order, with the
// frame's offset. It returns the offset just after the last intact frame and
// whether bytes follow it that are not an intact frame (a torn tail).
func scanFrames(r io.Reader, fn func(off int64, payload []byte) error) (end int64, torn bool, err error) {
	br := bufio.NewReaderSize(r, 1<<20)
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
