package shapelog

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/fanout/pipeline/fanout"
)

// Materialize replays the shape handle under dir and returns its current
// rows sorted by primary key pk: the rows of its current generation's base
// (Chain.Current: the initial snapshot, or the newest compacted base),
// then the logs' transactions after it that the initial snapshot did not
// see (Snapshot.Seen). It reads what is durable, in whole transactions
// (ReadLog, through Chain.Read), and stops at a torn tail without changing
// the file. A shape with neither a log nor a snapshot has no rows (HasData
// tells that case apart from an empty shape).
//
// Replay follows fanout.Change (replay): insert puts Row; update removes
// the row keyed by Old when Old is set, then puts Row over what the row
// held (so a column missing from Row keeps its value); delete removes the
// row keyed by Old; truncate removes every row.
func Materialize(dir, handle string, pk []string) ([]fanout.Row, error) {
	if err := fanout.ValidateHandle(handle); err != nil {
		return nil, err
	}
	if len(pk) == 0 {
		return nil, fmt.Errorf("materialize shape %s: no primary key columns given", handle)
	}
	chain, err := LoadChain(dir, handle)
	if err != nil {
		return nil, err
	}
	t := newTable(pk)
	if _, err := t.replay(chain, nil); err != nil {
		return nil, err
	}
	return t.sorted(), nil
}

// replay applies the shape's current generation to t: its base, then its
// logs (Chain.Read) up to the readable end. each, if not nil, is called
// with every record read and its fragment (nil when the record was
// skipped); its error ends the replay. It returns the cursor at the end of
// what it read.
func (t *table) replay(chain *Chain, each func(e LogEntry, f *fanout.Fragment) error) (Cursor, error) {
	g := chain.Current()
	if g.Base != nil {
		if err := g.Base.EachRow(func(row fanout.Row) error {
			if err := t.apply(fanout.Change{Op: fanout.OpInsert, Row: row}); err != nil {
				return fmt.Errorf("base of shape %s generation %d: %w", chain.handle, g.Number, err)
			}
			return nil
		}); err != nil {
			return g.LogStart(), err
		}
	}
	end, err := chain.Read(g.LogStart(), func(e LogEntry, _ Cursor) error {
		f, err := t.applyEntry(chain, e)
		if err == nil && each != nil {
			err = each(e, f)
		}
		return err
	})
	if errors.Is(err, ErrExpired) && g.Number == 0 && len(chain.gens) > 1 {
		err = fmt.Errorf("shape %s: its initial snapshot was retaken after its log was compacted, and the early log it would be replayed from is gone (%w): remove the shape and add it again", chain.handle, err)
	}
	return end, err
}

// applyEntry applies one log record to t, unless the initial snapshot
// already holds its transaction; it returns the record's fragment, or nil
// when it skipped it. Every replay of a log goes through here (Materialize,
// compaction): a new kind of record is taught to replays here.
func (t *table) applyEntry(chain *Chain, e LogEntry) (*fanout.Fragment, error) {
	if chain.Snapshot != nil && chain.Snapshot.Snapshot.Visible(e.xid) {
		return nil, nil // already in the snapshot's rows
	}
	fr, err := e.Fragment()
	if err != nil {
		return nil, err
	}
	for i, c := range fr.Changes {
		if err := t.apply(c); err != nil {
			return nil, fmt.Errorf("log of shape %s: fragment %s change %d: %w", chain.handle, fr.Position(), i, err)
		}
	}
	return fr, nil
}

// HasData reports whether dir holds anything of shape handle: a log or a
// complete snapshot. A shape registered with the bus but without data in dir
// is most likely read from the wrong storage directory.
func HasData(dir, handle string) (bool, error) {
	if err := fanout.ValidateHandle(handle); err != nil {
		return false, err
	}
	if _, err := os.Stat(logPath(dir, handle)); err == nil {
		return true, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("shape %s: %w", handle, err)
	}
	snap, err := CurrentSnapshot(dir, handle)
	return snap != nil, err
}

// table is a shape's rows keyed by primary key.
type table struct {
	pk   []string
	rows map[string]fanout.Row
	keys map[string][]string // map key -> key values, for sorting
}

func newTable(pk []string) *table {
	return &table{pk: pk, rows: map[string]fanout.Row{}, keys: map[string][]string{}}
}

func (t *table) key(r fanout.Row) (string, []string, error) {
	vals := make([]string, len(t.pk))
	for i, c := range t.pk {
		v, ok := r[c]
		if !ok || v == nil {
			return "", nil, fmt.Errorf("row has no value for primary key column %q", c)
		}
		vals[i] = *v
	}
	k, _ := json.Marshal(vals) // unambiguous join of the key values
	return string(k), vals, nil
}

func (t *table) apply(c fanout.Change) error {
	switch c.Op {
	case fanout.OpInsert:
		k, vals, err := t.key(c.Row)
		if err != nil {
			return err
		}
		t.rows[k], t.keys[k] = copyRow(c.Row), vals
	case fanout.OpUpdate:
		var prev fanout.Row
		if c.Old != nil {
			ok, _, err := t.key(c.Old)
			if err != nil {
				return fmt.Errorf("old key: %w", err)
			}
			prev = t.rows[ok]
			delete(t.rows, ok)
			delete(t.keys, ok)
		}
		k, vals, err := t.key(c.Row)
		if err != nil {
			return err
		}
		if prev == nil {
			prev = t.rows[k]
		}
		row := copyRow(prev)
		for col, v := range c.Row {
			row[col] = v
		}
		t.rows[k], t.keys[k] = row, vals
	case fanout.OpDelete:
		k, _, err := t.key(c.Old)
		if err != nil {
			return fmt.Errorf("old key: %w", err)
		}
		delete(t.rows, k)
		delete(t.keys, k)
	case fanout.OpTruncate:
		t.rows = map[string]fanout.Row{}
		t.keys = map[string][]string{}
	default:
		return fmt.Errorf("unknown op %q", c.Op)
	}
	return nil
}

func (t *table) sorted() []fanout.Row {
	ks := make([]string, 0, len(t.rows))
	for k := range t.rows {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return compareKeys(t.keys[ks[i]], t.keys[ks[j]]) < 0 })
	out := make([]fanout.Row, len(ks))
	for i, k := range ks {
		out[i] = t.rows[k]
	}
	return out
}

func copyRow(r fanout.Row) fanout.Row {
	c := make(fanout.Row, len(r))
	for k, v := range r {
		c[k] = v
	}
	return c
}

// compareKeys orders keys column by column: numerically when both values are
// integers, else by bytes.
func compareKeys(a, b []string) int {
	for i := range a {
		if c := compareValues(a[i], b[i]); c != 0 {
			return c
		}
	}
	return len(a) - len(b)
}

func compareValues(a, b string) int {
	if x, err := strconv.ParseInt(a, 10, 64); err == nil {
		if y, err := strconv.ParseInt(b, 10, 64); err == nil {
			switch {
			case x < y:
				return -1
			case x > y:
				return 1
			}
			return 0
		}
	}
	var x, y big.Int
	if _, ok := x.SetString(a, 10); ok {
		if _, ok := y.SetString(b, 10); ok {
			return x.Cmp(&y)
		}
	}
	return strings.Compare(a, b)
}
