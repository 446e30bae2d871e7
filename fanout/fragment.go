package fanout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// WireVersion is the fragment format version. A consumer rejects (dead-letters)
// fragments of a version it does not know.
const WireVersion = 1

// Op is what a change does to a shape's rows.
type Op string

const (
	// OpInsert adds Row (also: a row that moved into the shape).
	OpInsert Op = "insert"
	// OpUpdate replaces the row keyed by Old (or by Row when Old is nil) with Row.
	OpUpdate Op = "update"
	// OpDelete removes the row keyed by Old (also: a row that moved out).
	OpDelete Op = "delete"
	// OpTruncate removes every row of the shape.
	OpTruncate Op = "truncate"
)

// Value is a column value in Postgres text format; nil is SQL NULL.
type Value = *string

// Row maps column name -> value.
type Row map[string]Value

// Change is one row change as seen by one shape (already projected).
type Change struct {
	Op Op `json:"op"`
	// Row is the new row (insert, update).
	Row Row `json:"row,omitempty"`
	// Old holds the old primary key (update when the key changed, delete).
	Old Row `json:"old,omitempty"`
	// Before is the old row as far as a reader needs it, present only when
	// ingest had the whole old row (REPLICA IDENTITY FULL): for an update,
	// the old values of the projected columns it changed plus the old
	// primary key (so never empty: "known, nothing changed" is the key
	// alone); for a delete (a move out too), the whole projected old row.
	// Never on inserts and truncates. The shape API renders Electric's
	// replica=full old_value and default-replica updates from it; logs
	// written before it existed lack it, and readers fall back to Row/Old.
	Before Row `json:"before,omitempty"`
}

// Fragment is one shape's part of one transaction, or a bounded piece of it.
// A transaction's part for a shape is split into fragments Seq 0..n; the one
// with Last set is the end of that part. Fragments are published on
// Subject(Partition(shape), shape).
type Fragment struct {
	Version int    `json:"v"`
	Shape   string `json:"shape"`
	// Xid and CommitLSN identify the transaction; CommitLSN is the LSN of its
	// commit record (pgoutput Begin.FinalLSN), EndLSN the end of it.
	Xid        uint32        `json:"xid"`
	CommitLSN  pglogrepl.LSN `json:"-"`
	EndLSN     pglogrepl.LSN `json:"-"`
	CommitTime time.Time     `json:"commit_time"`
	Seq        int           `json:"seq"`
	Last       bool          `json:"last"`
	Changes    []Change      `json:"changes"`

	wire []byte // the message body f was decoded from, if any
	// changeCount is len(Changes), or, for a fragment checked but not
	// decoded (DecodeMessage), how many changes its wire bytes hold.
	changeCount int
	// truncates says, for a fragment checked but not decoded, whether its
	// wire bytes hold a truncate.
	truncates bool
}

// NumChanges is how many changes f holds.
func (f *Fragment) NumChanges() int {
	if f.Changes == nil {
		return f.changeCount
	}
	return len(f.Changes)
}

// HasTruncate reports whether f holds a truncate (readers cannot express
// one as a change: the shape is rotated).
func (f *Fragment) HasTruncate() bool {
	if f.Changes == nil {
		return f.truncates
	}
	for i := range f.Changes {
		if f.Changes[i].Op == OpTruncate {
			return true
		}
	}
	return false
}

// Position orders fragments within a shape log: by commit, then by Seq.
type Position struct {
	CommitLSN pglogrepl.LSN
	Seq       int
}

// Position is where f sits in its shape's log.
func (f *Fragment) Position() Position { return Position{f.CommitLSN, f.Seq} }

// After reports whether p comes strictly after q.
func (p Position) After(q Position) bool {
	if p.CommitLSN != q.CommitLSN {
		return p.CommitLSN > q.CommitLSN
	}
	return p.Seq > q.Seq
}

func (p Position) String() string { return fmt.Sprintf("%s#%d", p.CommitLSN, p.Seq) }

// wireFragment is Fragment with LSNs as "0/16B3748" text, so fragments read
// well in `nats stream view`.
type wireFragment struct {
	Fragment
	CommitLSN string `json:"commit_lsn"`
	EndLSN    string `json:"end_lsn"`
}

// Encode is the message body of f: the JSON of wireFragment, written by
// hand (wirejson.go).
func (f *Fragment) Encode() ([]byte, error) {
	return appendFragment(make([]byte, 0, 256), f)
}

// Wire is the message body of f: the bytes it was decoded from, so a
// consumer stores exactly what was published without encoding it again, or
// else Encode.
func (f *Fragment) Wire() ([]byte, error) {
	if f.wire != nil {
		return f.wire, nil
	}
	return f.Encode()
}

// DecodeFragment parses and validates a message body. The fragment keeps
// data as its Wire bytes: the caller must not change data afterwards. Any error means the
// message is not a fragment this version understands: dead-letter it.
func DecodeFragment(data []byte) (*Fragment, error) {
	var w wireFragment
	if err := decodeStrict(data, &w); err != nil {
		return nil, fmt.Errorf("fragment is not valid JSON of the wire format: %w", err)
	}
	f := w.Fragment
	f.wire = data
	if err := f.checkHeader(w.CommitLSN, w.EndLSN); err != nil {
		return nil, err
	}
	for i, c := range f.Changes {
		switch c.Op {
		case OpInsert:
			if c.Row == nil {
				return nil, fmt.Errorf("fragment %s %s: change %d: insert without row", f.Shape, f.Position(), i)
			}
			if c.Before != nil {
				return nil, fmt.Errorf("fragment %s %s: change %d: insert with an old row (before)", f.Shape, f.Position(), i)
			}
		case OpUpdate:
			if c.Row == nil {
				return nil, fmt.Errorf("fragment %s %s: change %d: update without row", f.Shape, f.Position(), i)
			}
		case OpDelete:
			if c.Old == nil {
				return nil, fmt.Errorf("fragment %s %s: change %d: delete without old key", f.Shape, f.Position(), i)
			}
		case OpTruncate:
			if c.Before != nil {
				return nil, fmt.Errorf("fragment %s %s: change %d: truncate with an old row (before)", f.Shape, f.Position(), i)
			}
		default:
			return nil, fmt.Errorf("fragment %s %s: change %d: unknown op %q", f.Shape, f.Position(), i, c.Op)
		}
	}
	return &f, nil
}

// checkHeader validates f's version, shape and position, and sets its LSNs
// from their wire text.
func (f *Fragment) checkHeader(commitLSN, endLSN string) error {
	if f.Version != WireVersion {
		return fmt.Errorf("fragment wire version %d, this build reads version %d", f.Version, WireVersion)
	}
	var err error
	if f.CommitLSN, err = parseLSN(commitLSN); err != nil {
		return fmt.Errorf("fragment commit_lsn %q: %w", commitLSN, err)
	}
	if f.EndLSN, err = parseLSN(endLSN); err != nil {
		return fmt.Errorf("fragment end_lsn %q: %w", endLSN, err)
	}
	if err := ValidateHandle(f.Shape); err != nil {
		return fmt.Errorf("fragment: %w", err)
	}
	if f.CommitLSN == 0 || f.Seq < 0 {
		return fmt.Errorf("fragment of shape %s has no commit LSN or a negative seq", f.Shape)
	}
	return nil
}

// decodeStrict rejects unknown fields and trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the JSON value")
	}
	return nil
}
