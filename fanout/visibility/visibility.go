// Package visibility decides whether a transaction was seen by a Postgres
// snapshot (pg_current_snapshot()): the rule that hands a shape over from its
// initial snapshot to its streamed log. A transaction the snapshot saw is
// already in the snapshot's rows; one it did not see must be applied after
// them. Pure: no I/O.
package visibility

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Snapshot is a pg_snapshot: xids below Xmin are finished, xids at or above
// Xmax had not started, and Xip lists those in between still in progress.
// Xids are 64-bit (epoch in the high 32 bits), as pg_current_snapshot()
// reports them.
type Snapshot struct {
	Xmin uint64   `json:"xmin"`
	Xmax uint64   `json:"xmax"`
	Xip  []uint64 `json:"xip_list"`
}

// Parse reads the text form of a pg_snapshot, "xmin:xmax:xip1,xip2".
func Parse(text string) (Snapshot, error) {
	parts := strings.Split(strings.TrimSpace(text), ":")
	if len(parts) != 3 {
		return Snapshot{}, fmt.Errorf("pg_snapshot %q is not xmin:xmax:xip_list", text)
	}
	var s Snapshot
	var err error
	if s.Xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("pg_snapshot %q: xmin: %w", text, err)
	}
	if s.Xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("pg_snapshot %q: xmax: %w", text, err)
	}
	if parts[2] != "" {
		for _, x := range strings.Split(parts[2], ",") {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return Snapshot{}, fmt.Errorf("pg_snapshot %q: xip %q: %w", text, x, err)
			}
			s.Xip = append(s.Xip, v)
		}
	}
	if s.Xmin > s.Xmax {
		return Snapshot{}, fmt.Errorf("pg_snapshot %q: xmin above xmax", text)
	}
	slices.Sort(s.Xip)
	return s, nil
}

// String is the pg_snapshot text form.
func (s Snapshot) String() string {
	xs := make([]string, len(s.Xip))
	for i, x := range s.Xip {
		xs[i] = strconv.FormatUint(x, 10)
	}
	return fmt.Sprintf("%d:%d:%s", s.Xmin, s.Xmax, strings.Join(xs, ","))
}

// Widen turns pgoutput's 32-bit xid into the 64-bit xid it stands for, taking
// the epoch from the snapshot: the xid is the one within 2^31 of Xmax. Any
// transaction a shape log holds is that close to its snapshot (Postgres
// forbids xids 2^31 apart from being live together).
func (s Snapshot) Widen(xid uint32) uint64 {
	d := int64(int32(xid - uint32(s.Xmax))) // signed distance from xmax, mod 2^32
	w := int64(s.Xmax) + d
	if w < 0 {
		return uint64(xid) // before the first epoch: xid is already 64-bit
	}
	return uint64(w)
}

// Visible64 reports whether a committed transaction's 64-bit xid was seen by
// the snapshot: below Xmin, or below Xmax and not in progress.
func (s Snapshot) Visible64(xid uint64) bool {
	if xid < s.Xmin {
		return true
	}
	if xid >= s.Xmax {
		return false
	}
	_, inProgress := slices.BinarySearch(s.Xip, xid)
	return !inProgress
}

// Visible reports whether the committed transaction with pgoutput xid was
// seen by the snapshot, so its changes are already in the snapshot's rows.
func (s Snapshot) Visible(xid uint32) bool { return s.Visible64(s.Widen(xid)) }
