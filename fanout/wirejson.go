package fanout

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout/jsontext"
)

// The fragment wire format is JSON (see Encode). ingest encodes every
// fragment and every consumer parses every LSN it carries, so both are done
// here by hand: encoding/json's reflection was the largest part of ingest's
// CPU, and pglogrepl.ParseLSN (fmt.Sscanf) an eighth of a consumer's.

// appendFragment appends f's wire JSON: byte for byte what json.Marshal of
// wireFragment writes with HTML escaping off (fields in struct order, map
// keys sorted), which TestHandEncodedFragmentsAreEncodingJSONs checks.
func appendFragment(b []byte, f *Fragment) ([]byte, error) {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(f.Version), 10)
	b = append(b, `,"shape":`...)
	b = jsontext.AppendString(b, f.Shape)
	b = append(b, `,"xid":`...)
	b = strconv.AppendUint(b, uint64(f.Xid), 10)
	b = append(b, `,"commit_time":`...)
	var err error
	if b, err = appendTime(b, f.CommitTime); err != nil {
		return nil, err
	}
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, int64(f.Seq), 10)
	b = append(b, `,"last":`...)
	b = strconv.AppendBool(b, f.Last)
	b = append(b, `,"changes":`...)
	if f.Changes == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range f.Changes {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendChange(b, &f.Changes[i])
		}
		b = append(b, ']')
	}
	if f.OpensWindow {
		b = append(b, `,"opens_window":true`...)
	}
	if f.ClosesWindows != 0 {
		b = append(b, `,"closes_windows":`...)
		b = strconv.AppendInt(b, int64(f.ClosesWindows), 10)
	}
	b = append(b, `,"commit_lsn":"`...)
	b = appendLSN(b, f.CommitLSN)
	b = append(b, `","end_lsn":"`...)
	b = appendLSN(b, f.EndLSN)
	return append(b, `"}`...), nil
}

func appendChange(b []byte, c *Change) []byte {
	b = append(b, `{"op":`...)
	b = jsontext.AppendString(b, string(c.Op))
	for _, field := range [...]struct {
		name string
		row  Row
	}{{`,"row":`, c.Row}, {`,"old":`, c.Old}, {`,"before":`, c.Before}} {
		if len(field.row) > 0 { // omitempty
			b = append(b, field.name...)
			b = appendRow(b, field.row)
		}
	}
	if c.Tags != nil || c.RemovedTags != nil || c.Active != nil || c.MoveIn || c.Patterns != nil || c.Snapshot != nil {
		b = appendMoveFields(b, c)
	}
	return append(b, '}')
}

// appendRow appends row as a JSON object with sorted keys, as encoding/json
// writes maps.
func appendRow(b []byte, row Row) []byte {
	var stack [32]string
	keys := stack[:0]
	for k := range row {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsontext.AppendString(b, k)
		b = append(b, ':')
		if v := row[k]; v == nil {
			b = append(b, "null"...)
		} else {
			b = jsontext.AppendString(b, *v)
		}
	}
	return append(b, '}')
}

// appendTime appends t as time.Time's MarshalJSON does (RFC 3339 with
// nanoseconds), which refuses years outside 0..9999.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	if y := t.Year(); y < 0 || y > 9999 {
		return nil, fmt.Errorf("commit time %s: year %d is outside 0..9999, which RFC 3339 cannot write", t, y)
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), nil
}

// appendLSN appends lsn as Postgres prints it (pglogrepl.LSN.String).
func appendLSN(b []byte, lsn pglogrepl.LSN) []byte {
	start := len(b)
	b = strconv.AppendUint(b, uint64(lsn)>>32, 16)
	b = append(b, '/')
	b = strconv.AppendUint(b, uint64(lsn)&0xFFFFFFFF, 16)
	for i := start; i < len(b); i++ { // strconv writes lower case, Postgres upper
		if b[i] >= 'a' && b[i] <= 'f' {
			b[i] -= 'a' - 'A'
		}
	}
	return b
}

var errLSNSyntax = errors.New(`not an LSN: want two hexadecimal numbers of up to 8 digits, "X/X"`)

// parseLSN parses an LSN as Postgres prints it ("16/B374D848"), either
// case; each half at most 32 bits.
func parseLSN(s string) (pglogrepl.LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || len(hi) == 0 || len(lo) == 0 || len(hi) > 8 || len(lo) > 8 {
		return 0, errLSNSyntax
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, errLSNSyntax
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, errLSNSyntax
	}
	return pglogrepl.LSN(h<<32 | l), nil
}
