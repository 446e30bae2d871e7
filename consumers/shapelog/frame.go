package shapelog

import (
	"bufio"
	"bytes"
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

// A payload is recordBinary, the 8-byte little-endian epoch the record was
// written at, and the fragment's wire bytes (fanout.Fragment.Wire). Logs of
// the first version hold JSON records {"epoch","fragment"} instead; those
// are still read.
const recordBinary = 0x01

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
	record := make([]byte, 0, 9+len(body))
	record = append(record, recordBinary)
	record = binary.LittleEndian.AppendUint64(record, epoch)
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

// decodeRecord parses a frame's payload.
func decodeRecord(payload []byte) (uint64, *fanout.Fragment, error) {
	var epoch uint64
	var body []byte
	switch {
	case len(payload) >= 9 && payload[0] == recordBinary:
		epoch, body = binary.LittleEndian.Uint64(payload[1:9]), payload[9:]
	case len(payload) > 0 && payload[0] == '{':
		var r jsonRecord
		if err := json.Unmarshal(payload, &r); err != nil {
			return 0, nil, fmt.Errorf("record is not JSON of {epoch, fragment}: %w", err)
		}
		epoch, body = r.Epoch, r.Fragment
	default:
		return 0, nil, fmt.Errorf("record of unknown format (first byte %#x)", firstByte(payload))
	}
	// The fragment keeps its bytes (Wire), and scanFrames reuses its buffer.
	f, err := fanout.DecodeFragment(bytes.Clone(body))
	if err != nil {
		return 0, nil, err
	}
	return epoch, f, nil
}

func firstByte(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
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
