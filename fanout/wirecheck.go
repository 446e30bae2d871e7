package fanout

import "strconv"

// Every consumer checks every message it is delivered, and with
// encoding/json that was close to half of a consumer's CPU: the Decoder
// scans a value once to find its end and again to unmarshal it, for the
// envelope and then for each fragment. Ingest always writes one exact form
// (EncodeMessage of appendFragment's output), so a consumer reads that form
// in one pass here. Anything else, from any other writer or a damaged
// message, goes to encoding/json as before: this path only ever says "read
// it, and it is this", never "this is wrong", so it cannot refuse what the
// general path accepts. TestCanonicalReadingAgreesWithEncodingJSON checks
// that what it accepts, encoding/json reads the same.

// decodeCanonicalMessage reads a message of partition in the exact form
// EncodeMessage writes. ok is false when data is not in that form or is
// not a valid message: the caller then reads it with encoding/json, which
// says what is wrong.
func decodeCanonicalMessage(partition int, data []byte) (items []Item, ok bool) {
	s := wireScanner{b: data}
	if !s.literal(`{"v":`) {
		return nil, false
	}
	if v, ok := s.integer(); !ok || v != MessageVersion || !s.literal(`,"partition":`) {
		return nil, false
	}
	if p, ok := s.integer(); !ok || p != int64(partition) || !s.literal(`,"fragments":[`) {
		return nil, false
	}
	for {
		start := s.i
		f, ok := s.fragment()
		if !ok {
			return nil, false
		}
		f.wire = data[start:s.i:s.i]
		items = append(items, Item{Frag: f, Raw: f.wire, Shape: f.Shape})
		if s.literal("]}") {
			break
		}
		if !s.literal(",") {
			return nil, false
		}
	}
	return items, s.i == len(data)
}

// checkCanonicalFragment is checkFragment for a fragment in the exact form
// appendFragment writes; ok is false for anything else.
func checkCanonicalFragment(raw []byte) (*Fragment, bool) {
	s := wireScanner{b: raw}
	f, ok := s.fragment()
	if !ok || s.i != len(raw) {
		return nil, false
	}
	f.wire = raw
	return f, true
}

// wireScanner reads canonical JSON from b at i. Each method reports
// whether what is at i has the form it reads, and moves past it if so.
type wireScanner struct {
	b []byte
	i int
}

// fragment reads a fragment as appendFragment writes it (fields in
// wireFragment's order, no space), and checks it as checkFragment does.
func (s *wireScanner) fragment() (*Fragment, bool) {
	var f Fragment
	if !s.literal(`{"v":`) {
		return nil, false
	}
	v, ok := s.integer()
	if !ok || !s.literal(`,"shape":`) {
		return nil, false
	}
	f.Version = int(v)
	shape, ok := s.plainString()
	if !ok || !s.literal(`,"xid":`) {
		return nil, false
	}
	f.Shape = string(shape)
	xid, ok := s.uint32()
	if !ok || !s.literal(`,"commit_time":`) {
		return nil, false
	}
	f.Xid = xid
	start := s.i
	if _, ok := s.plainString(); !ok {
		return nil, false
	}
	// time.Time's own JSON reading, so both paths accept the same times.
	if err := f.CommitTime.UnmarshalJSON(s.b[start:s.i]); err != nil || !s.literal(`,"seq":`) {
		return nil, false
	}
	seq, ok := s.integer()
	if !ok || !s.literal(`,"last":`) {
		return nil, false
	}
	f.Seq = int(seq)
	switch {
	case s.literal("true"):
		f.Last = true
	case s.literal("false"):
	default:
		return nil, false
	}
	if !s.literal(`,"changes":`) {
		return nil, false
	}
	if !s.literal("null") {
		if f.changeCount, f.truncates, ok = s.changes(); !ok {
			return nil, false
		}
	}
	if !s.literal(`,"commit_lsn":`) {
		return nil, false
	}
	commitLSN, ok := s.plainString()
	if !ok || !s.literal(`,"end_lsn":`) {
		return nil, false
	}
	endLSN, ok := s.plainString()
	if !ok || !s.literal("}") {
		return nil, false
	}
	if f.checkHeader(string(commitLSN), string(endLSN)) != nil {
		return nil, false
	}
	return &f, true
}

// changes reads a JSON array of changes as appendChange writes them and
// returns how many it held and whether one was a truncate.
func (s *wireScanner) changes() (n int, truncates, ok bool) {
	if !s.literal("[") {
		return 0, false, false
	}
	if s.literal("]") {
		return 0, false, true
	}
	for n = 1; ; n++ {
		op, ok := s.change()
		if !ok {
			return 0, false, false
		}
		truncates = truncates || op == OpTruncate
		if s.literal("]") {
			return n, truncates, true
		}
		if !s.literal(",") {
			return 0, false, false
		}
	}
}

var quotedOps = [...]struct {
	op     Op
	quoted string
}{{OpInsert, `"insert"`}, {OpUpdate, `"update"`}, {OpDelete, `"delete"`}, {OpTruncate, `"truncate"`}}

// change reads {"op":OP[,"row":{..}][,"old":{..}][,"before":{..}]} and
// checks it as checkFragment does: inserts and updates carry a row,
// deletes an old key, and only updates and deletes a before.
func (s *wireScanner) change() (Op, bool) {
	if !s.literal(`{"op":`) {
		return "", false
	}
	var op Op
	for _, known := range quotedOps {
		if s.literal(known.quoted) {
			op = known.op
			break
		}
	}
	if op == "" {
		return "", false
	}
	row, ok1 := s.optionalRow(`,"row":`)
	old, ok2 := s.optionalRow(`,"old":`)
	before, ok3 := s.optionalRow(`,"before":`)
	if !ok1 || !ok2 || !ok3 || !s.literal("}") {
		return "", false
	}
	switch op {
	case OpInsert:
		return op, row && !before
	case OpUpdate:
		return op, row
	case OpDelete:
		return op, old
	default: // truncate
		return op, !before
	}
}

// optionalRow reads field (`,"name":`) and a row after it, if b holds
// field at i: present says whether it did, ok whether the row was one.
func (s *wireScanner) optionalRow(field string) (present, ok bool) {
	if !s.literal(field) {
		return false, true
	}
	return true, s.row()
}

// row reads a JSON object whose values are strings or null: a Row as
// DecodeFragment reads it.
func (s *wireScanner) row() bool {
	if !s.literal("{") {
		return false
	}
	if s.literal("}") {
		return true
	}
	for {
		if !s.jsonString() || !s.literal(":") {
			return false
		}
		if !s.literal("null") && !s.jsonString() {
			return false
		}
		if s.literal("}") {
			return true
		}
		if !s.literal(",") {
			return false
		}
	}
}

// literal moves past lit if b holds it at i.
func (s *wireScanner) literal(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return false
	}
	s.i += len(lit)
	return true
}

// plainString reads a JSON string with no escape in it and returns its
// contents: header fields (handles, LSNs, times) never need escaping.
func (s *wireScanner) plainString() ([]byte, bool) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	for j := s.i + 1; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			text := s.b[s.i+1 : j]
			s.i = j + 1
			return text, true
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// jsonString moves past any valid JSON string. Like encoding/json, it
// takes bytes that are not valid UTF-8 (readers decode them as U+FFFD).
func (s *wireScanner) jsonString() bool {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return false
	}
	for j := s.i + 1; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			s.i = j + 1
			return true
		case c < 0x20:
			return false
		case c == '\\':
			j++
			if j >= len(s.b) {
				return false
			}
			switch s.b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(s.b) || !isHex4(s.b[j+1:j+5]) {
					return false
				}
				j += 4
			default:
				return false
			}
		}
	}
	return false
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// digits moves past a JSON integer, -?(0|[1-9][0-9]*), and returns it.
func (s *wireScanner) digits() ([]byte, bool) {
	start, j := s.i, s.i
	if j < len(s.b) && s.b[j] == '-' {
		j++
	}
	first := j
	for j < len(s.b) && '0' <= s.b[j] && s.b[j] <= '9' {
		j++
	}
	if j == first || (s.b[first] == '0' && j > first+1) {
		return nil, false
	}
	// A fraction or exponent is a JSON number but not an integer field's.
	if j < len(s.b) && (s.b[j] == '.' || s.b[j] == 'e' || s.b[j] == 'E') {
		return nil, false
	}
	s.i = j
	return s.b[start:j], true
}

// integer reads an int field's value (int is 64 bits where this runs).
func (s *wireScanner) integer() (int64, bool) {
	d, ok := s.digits()
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(string(d), 10, strconv.IntSize)
	return n, err == nil
}

// uint32 reads a uint32 field's value (xid).
func (s *wireScanner) uint32() (uint32, bool) {
	d, ok := s.digits()
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(string(d), 10, 32)
	return uint32(n), err == nil
}
