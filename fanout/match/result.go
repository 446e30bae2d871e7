package match

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/fanout/pipeline/fanout"
)

// Results gives the current result of each subquery a clause reads.
type Results interface {
	// Result is s's result, or nil when it is not known.
	Result(s *Subquery) *Result
}

// Result is a subquery's result: how many rows of its table give each
// tuple of selected values. Values are kept in the form they are compared
// in (the domain of `left = selected`), so equal values have one entry
// whatever their text (1.0 and 1.00 in numeric). Memory is in proportion
// to the number of distinct tuples. Not safe for concurrent use.
type Result struct {
	sub    *Subquery
	counts map[string]int32    // tuple ID (TupleID) -> rows giving it
	nulls  map[string]struct{} // the IDs of tuples with a NULL element
	rows   int
}

// NewResult is s's empty result.
func NewResult(s *Subquery) *Result {
	return &Result{sub: s, counts: map[string]int32{}, nulls: map[string]struct{}{}}
}

// Len is the number of distinct tuples.
func (r *Result) Len() int { return len(r.counts) }

// Rows is the number of rows the result counts.
func (r *Result) Rows() int { return r.rows }

// Has reports whether tuple id is in the result.
func (r *Result) Has(id string) bool { return r.counts[id] > 0 }

// Each calls f for every tuple ID in the result, in no order.
func (r *Result) Each(f func(id string)) {
	for id := range r.counts {
		f(id)
	}
}

// Add counts one more row giving id; entered reports that id was not in
// the result before.
func (r *Result) Add(id string) (entered bool) {
	r.rows++
	n := r.counts[id]
	r.counts[id] = n + 1
	if n == 0 && hasNullElement(id, r.sub.Arity()) {
		r.nulls[id] = struct{}{}
	}
	return n == 0
}

// Remove counts one row giving id less; left reports that no row gives it
// any more. Removing an id that is not counted is a no-op.
func (r *Result) Remove(id string) (left bool) {
	n, ok := r.counts[id]
	if !ok {
		return false
	}
	r.rows--
	if n > 1 {
		r.counts[id] = n - 1
		return false
	}
	delete(r.counts, id)
	delete(r.nulls, id)
	return true
}

// RowTuple is the tuple ID a row of the subquery's table gives (its
// selected columns); err reports a value that is not valid text of its
// column's type (it counts as NULL).
func (s *Subquery) RowTuple(row fanout.Row) (id string, err error) {
	var k tupleKey
	for i, c := range s.Columns {
		p := row[c]
		if p == nil {
			k.addNull()
			continue
		}
		v, cerr := convert(*p, s.kinds[i], s.doms[i])
		if cerr != nil {
			if err == nil {
				err = fmt.Errorf("subquery column %q of %s: value %w", c, s.Table, cerr)
			}
			k.addNull()
			continue
		}
		k.add(s.doms[i], v)
	}
	return k.id(), err
}

// LeftTuple is the tuple ID of an outer row's left side of the subquery
// (the columns compared with it): what the row's tag hashes, and what the
// index looks up.
func (s *Subquery) LeftTuple(row fanout.Row) (id string, null bool, err error) {
	var k tupleKey
	for i, c := range s.Left {
		p := row[c]
		if p == nil {
			k.addNull()
			continue
		}
		v, cerr := convert(*p, s.lkinds[i], s.doms[i])
		if cerr != nil {
			if err == nil {
				err = fmt.Errorf("column %q: row value %w", c, cerr)
			}
			k.addNull()
			continue
		}
		k.add(s.doms[i], v)
	}
	return k.id(), k.nulls > 0, err
}

// tupleKey builds a tuple ID. One element: its canonical text, or "\x00"
// for NULL (Postgres text never holds a NUL byte). Several: each element
// as <length>:<text>, or N for NULL, concatenated. Equal tuples (in their
// comparison domains) have equal IDs and unequal ones different IDs.
type tupleKey struct {
	parts []string // canonical texts; "" for a NULL
	isNul []bool
	nulls int
}

func (k *tupleKey) add(d domain, v val) {
	k.parts = append(k.parts, canonicalText(d, v))
	k.isNul = append(k.isNul, false)
}

func (k *tupleKey) addNull() {
	k.parts = append(k.parts, "")
	k.isNul = append(k.isNul, true)
	k.nulls++
}

func (k *tupleKey) id() string {
	if len(k.parts) == 1 {
		if k.isNul[0] {
			return nullElement
		}
		return k.parts[0]
	}
	var b strings.Builder
	for i, p := range k.parts {
		if k.isNul[i] {
			b.WriteByte('N')
			continue
		}
		b.WriteString(strconv.Itoa(len(p)))
		b.WriteByte(':')
		b.WriteString(p)
	}
	return b.String()
}

const nullElement = "\x00"

// canonicalText is v's text in domain d: equal values, equal texts.
func canonicalText(d domain, v val) string {
	switch d {
	case dInt, dBool, dTime:
		return strconv.FormatInt(v.i, 10)
	}
	return key(d, v).s
}

// appendCanonical appends canonicalText(d, v) to b.
func appendCanonical(b []byte, d domain, v val) []byte {
	switch d {
	case dInt, dBool, dTime:
		return strconv.AppendInt(b, v.i, 10)
	case dText, dBpchar, dUUID:
		return append(b, v.s...)
	}
	return append(b, key(d, v).s...)
}

// inOne is in for a one-column subquery and a left value that is not NULL,
// given as its canonical text.
func (r *Result) inOne(text []byte) tri {
	switch {
	case r.rows == 0:
		return tFalse
	case r.counts[string(text)] > 0:
		return tTrue
	case len(r.nulls) > 0:
		return tNull
	}
	return tFalse
}

// tupleElements splits a tuple ID of arity n into its elements; null[i]
// is set for a NULL element.
func tupleElements(id string, n int) (parts []string, null []bool) {
	if n == 1 {
		return []string{id}, []bool{id == nullElement}
	}
	for len(id) > 0 {
		if id[0] == 'N' {
			parts, null = append(parts, ""), append(null, true)
			id = id[1:]
			continue
		}
		colon := strings.IndexByte(id, ':')
		l, _ := strconv.Atoi(id[:colon])
		parts, null = append(parts, id[colon+1:colon+1+l]), append(null, false)
		id = id[colon+1+l:]
	}
	return parts, null
}

func hasNullElement(id string, n int) bool {
	_, null := tupleElements(id, n)
	for _, x := range null {
		if x {
			return true
		}
	}
	return false
}

// in is `left IN (result)` with SQL's semantics: FALSE on an empty result;
// TRUE when a tuple equals left; otherwise NULL when a tuple might equal
// it (a NULL on either side where the other elements are equal), else
// FALSE. Only NOT IN tells NULL from FALSE.
func (r *Result) in(left tupleKey) tri {
	if r.rows == 0 {
		return tFalse
	}
	n := r.sub.Arity()
	if left.nulls == 0 {
		if r.counts[left.id()] > 0 {
			return tTrue
		}
		for id := range r.nulls {
			if mightEqual(left, id, n) {
				return tNull
			}
		}
		return tFalse
	}
	if n == 1 {
		return tNull
	}
	for id := range r.counts {
		if mightEqual(left, id, n) {
			return tNull
		}
	}
	return tFalse
}

// mightEqual reports whether the row comparison left = tuple is not FALSE:
// every pair of elements is equal or has a NULL.
func mightEqual(left tupleKey, id string, n int) bool {
	parts, null := tupleElements(id, n)
	for i := range parts {
		if left.isNul[i] || null[i] {
			continue
		}
		if left.parts[i] != parts[i] {
			return false
		}
	}
	return true
}

// staticResults are results computed once, by subquery ID.
type staticResults map[string]*Result

func (s staticResults) Result(q *Subquery) *Result { return s[q.ID] }

// BuildResults computes the results of p's subqueries, nested ones first,
// from the rows rows returns for each (its LoadSQL, read in one snapshot):
// what a snapshot needs to evaluate a clause with subqueries as of that
// snapshot. A row of a subquery's table counts when its own WHERE matches.
func BuildResults(p *Predicate, rows func(s *Subquery) ([]fanout.Row, error)) (Results, error) {
	res := staticResults{}
	var fill func(p *Predicate) error
	fill = func(p *Predicate) error {
		if p == nil {
			return nil
		}
		for _, s := range p.subs {
			if res[s.ID] != nil {
				continue
			}
			if err := fill(s.Where); err != nil {
				return err
			}
			rs, err := rows(s)
			if err != nil {
				return err
			}
			r := NewResult(s)
			for _, row := range rs {
				if s.Where != nil {
					if ok, _ := s.Where.EvalWith(row, res); !ok {
						continue
					}
				}
				id, _ := s.RowTuple(row)
				r.Add(id)
			}
			res[s.ID] = r
		}
		return nil
	}
	if err := fill(p); err != nil {
		return nil, err
	}
	return res, nil
}
