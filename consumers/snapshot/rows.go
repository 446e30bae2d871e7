package snapshot

import (
	"slices"
	"unsafe"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
)

// rowFilter decides which rows of a snapshot query a shape keeps and which
// of their values it stores. A row comes as the query's text values (the
// table's columns in schema order, nil for NULL), straight from the wire:
// rowFilter copies nothing and allocates nothing per row. One membership
// rule: a row is in the snapshot exactly when the shape's compiled where
// clause (the matcher that routes streamed changes) accepts it.
type rowFilter struct {
	pred   *match.Predicate
	cols   []string   // the query's columns
	read   []int      // the query columns the where clause reads
	row    fanout.Row // what pred reads: column -> &vals[i], or nil (NULL)
	null   []bool     // row holds nil for the column (else &vals[i])
	vals   []string   // the current row's values, aliasing the wire buffer
	stored []int      // query column of each stored column, in order
	out    [][]byte   // the stored values of the current row

	// A shape with subqueries: their results as of the snapshot, and the
	// current row's tags and active conditions (nil without subqueries).
	handle string
	res    match.Results
	tags   []string
	active []bool
}

// withSubqueries makes the filter evaluate the clause against res and
// compute each accepted row's tags and active conditions.
func (f *rowFilter) withSubqueries(handle string, res match.Results) {
	f.handle, f.res = handle, res
}

// newRowFilter prepares the filter of a shape whose query reads cols and
// which stores the columns stored (each among cols, in the order written).
func newRowFilter(pred *match.Predicate, cols, stored []string) *rowFilter {
	f := &rowFilter{pred: pred, cols: cols, row: fanout.Row{}, null: make([]bool, len(cols)), vals: make([]string, len(cols)),
		out: make([][]byte, len(stored))}
	for _, c := range pred.Columns() {
		if i := slices.Index(cols, c); i >= 0 {
			f.read = append(f.read, i)
			f.row[c] = &f.vals[i]
		}
	}
	for _, s := range stored {
		f.stored = append(f.stored, slices.Index(cols, s))
	}
	return f
}

// accept reports whether the shape keeps the row of query values raw, and
// returns its stored values. Both are valid until the next call: the values
// alias raw, and the strings the matcher reads alias raw's bytes (the
// matcher keeps nothing of a row once Eval returns).
func (f *rowFilter) accept(raw [][]byte) ([][]byte, bool) {
	for _, i := range f.read {
		v := raw[i]
		if v == nil {
			if !f.null[i] {
				f.row[f.cols[i]], f.null[i] = nil, true
			}
			continue
		}
		f.vals[i] = unsafe.String(unsafe.SliceData(v), len(v))
		if f.null[i] {
			f.row[f.cols[i]], f.null[i] = &f.vals[i], false
		}
	}
	if f.res != nil {
		if ok, _ := f.pred.EvalWith(f.row, f.res); !ok {
			return nil, false
		}
		// Like Eval, these keep nothing of the row (tags are hashes).
		f.tags, f.active = f.pred.Tags(f.handle, f.row), f.pred.Active(f.row, f.res)
	} else if !f.pred.Eval(f.row) {
		return nil, false
	}
	for i, q := range f.stored {
		f.out[i] = raw[q]
	}
	return f.out, true
}
