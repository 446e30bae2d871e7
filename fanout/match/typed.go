package match

import (
	"errors"
	"fmt"
	"strings"

	"github.com/fanout/pipeline/fanout"
)

// The general evaluator: expressions that compute values (arithmetic,
// functions, casts, arrays, ...). Plain `column op constant` comparisons keep
// the older operand path (operands.go), which the equality index reads.

// typ is the Postgres type of an expression.
type typ struct {
	k    kind
	arr  bool      // an array of k
	enum *enumType // k == kEnum
	mod  int       // character(n) / character varying(n) length from a cast; 0: none
}

// enumType is an enum's labels in declared order.
type enumType struct {
	name   string
	labels []string
	ord    map[string]int
}

func newEnum(name string, labels []string) *enumType {
	e := &enumType{name: name, labels: labels, ord: make(map[string]int, len(labels))}
	for i, l := range labels {
		e.ord[l] = i
	}
	return e
}

func scalar(k kind) typ { return typ{k: k} }

func (t typ) elem() typ { return typ{k: t.k, enum: t.enum} }

func (t typ) String() string {
	s := t.k.String()
	if t.k == kEnum && t.enum != nil {
		s = t.enum.name
	}
	if t.arr {
		s += "[]"
	}
	return s
}

func (t typ) same(o typ) bool {
	return t.k == o.k && t.arr == o.arr && (t.k != kEnum || t.enum.name == o.enum.name)
}

// texpr is a typed expression; eval returns its value in the native
// representation of its type (see native), or null.
type texpr interface {
	eval(c *evalCtx) (val, bool)
	typ() typ
}

// errEval is an evaluation error Postgres would raise for the row (overflow,
// division by zero, invalid input to a cast): the row's evaluation fails.
type errEval struct{ msg string }

func (e *errEval) Error() string { return e.msg }

func evalErrorf(format string, args ...any) error { return &errEval{fmt.Sprintf(format, args...)} }

// fail records the first evaluation error; the caller returns NULL and the
// boolean nodes stop evaluating.
func (c *evalCtx) fail(err error) (val, bool) {
	if c.failed == nil {
		c.failed = err
	}
	return val{}, true
}

// colExpr reads a column.
type colExpr struct {
	name string
	t    typ
}

func (e *colExpr) typ() typ { return e.t }

func (e *colExpr) eval(c *evalCtx) (val, bool) {
	p := c.row[e.name]
	if p == nil {
		return val{}, true
	}
	v, err := native(*p, e.t)
	if err != nil {
		if c.err == nil {
			c.err = fmt.Errorf("column %q: row value %w", e.name, err)
		}
		return val{}, true
	}
	return v, false
}

// constExpr is a constant; an unknown-typed one (a quoted literal or NULL,
// or a $n parameter) keeps its text until the context types it.
type constExpr struct {
	t    typ
	v    val
	null bool
	lit  string // kUnknown: the literal's text
	desc string
}

func (e *constExpr) typ() typ                  { return e.t }
func (e *constExpr) eval(*evalCtx) (val, bool) { return e.v, e.null }

func isConst(e texpr) bool { _, ok := e.(*constExpr); return ok }

// fold evaluates e now when it reads no column, as Postgres's planner does:
// an error then fails the where clause at Compile, as Postgres fails the query.
func fold(e texpr) (texpr, error) {
	if isConst(e) || readsColumn(e) {
		return e, nil
	}
	if failingExpr(e) != nil {
		return e, nil // already failing: keep the first error
	}
	c := evalCtx{}
	v, null := e.eval(&c)
	if c.failed != nil {
		return &errExpr{t: e.typ(), err: c.failed}, nil
	}
	if c.err != nil {
		return nil, fmt.Errorf("where clause: %v", c.err)
	}
	return &constExpr{t: e.typ(), v: v, null: null, desc: "constant expression"}, nil
}

// columnReader is implemented by expressions with sub-expressions.
type columnReader interface{ children() []texpr }

func readsColumn(e texpr) bool {
	switch x := e.(type) {
	case *colExpr, *opaque:
		return true
	case *constExpr:
		return false
	case columnReader:
		for _, k := range x.children() {
			if readsColumn(k) {
				return true
			}
		}
	}
	return false
}

// native reads s, Postgres text output of type t, as a value.
func native(s string, t typ) (val, error) {
	if t.arr {
		return parseArray(s, t.elem())
	}
	switch t.k {
	case kBpchar:
		return val{s: s}, nil
	case kText, kVarchar:
		return val{s: s}, nil
	case kTime:
		us, err := parseTimeOfDay(s)
		return val{i: us}, err
	case kInterval:
		iv, err := parseInterval(s)
		return val{iv: iv}, err
	case kEnum:
		i, ok := t.enum.ord[s]
		if !ok {
			return val{}, evalErrorf("invalid input value for enum %s: %q", t.enum.name, s)
		}
		return val{i: int64(i), s: s}, nil
	case kJSON:
		if err := checkJSON(s); err != nil {
			return val{}, err
		}
		return val{s: s}, nil
	case kJSONB:
		j, err := canonicalJSONB(s)
		return val{s: j}, err
	case kNumeric:
		n, err := parseNumeric(s)
		return val{n: n}, err
	}
	return convert(s, t.k, domainOf(t.k))
}

// literal converts a constant's text to t, with a Postgres-like error.
func literal(s string, t typ) (val, error) {
	v, err := native(s, t)
	if err != nil {
		var ee *errEval
		if errors.As(err, &ee) {
			return val{}, err
		}
		return val{}, evalErrorf("invalid input for type %s: %v", t, err)
	}
	if t.mod > 0 && (t.k == kVarchar || t.k == kBpchar) {
		v.s = fitLength(v.s, t)
	}
	return v, nil
}

// fitLength is an explicit cast's length coercion: truncate, and pad character(n).
func fitLength(s string, t typ) string {
	r := []rune(s)
	if len(r) > t.mod {
		r = r[:t.mod]
	}
	if t.k == kBpchar {
		for len(r) < t.mod {
			r = append(r, ' ')
		}
	}
	return string(r)
}

// kindOf gives the kind and type of a schema column, new kinds included.
func typeOfColumn(col fanout.Column) (typ, bool) {
	if col.ElemOID != 0 || strings.HasSuffix(col.Type, "[]") {
		elem := fanout.Column{Name: col.Name, OID: col.ElemOID, Type: strings.TrimSuffix(col.Type, "[]"), Enum: col.Enum}
		if col.ElemOID == 0 {
			if k, ok := arrayOIDs[col.OID]; ok {
				elem.OID = k
			}
		}
		t, ok := typeOfColumn(elem)
		if !ok || t.arr {
			return typ{}, false
		}
		t.arr = true
		return t, true
	}
	if k, ok := arrayOIDs[col.OID]; ok {
		t, ok := typeOfColumn(fanout.Column{Name: col.Name, OID: k, Enum: col.Enum})
		t.arr = true
		return t, ok
	}
	if col.Enum != nil {
		return typ{k: kEnum, enum: newEnum(col.Type, *col.Enum)}, true
	}
	k, ok := kindOfColumn(col)
	return scalar(k), ok
}

// arrayOIDs maps the built-in array types to their element types.
var arrayOIDs = map[uint32]uint32{
	1005: 21, 1007: 23, 1016: 20, 1231: 1700, 1021: 700, 1022: 701, 1009: 25, 1015: 1043, 1014: 1042,
	1000: 16, 2951: 2950, 1182: 1082, 1115: 1114, 1185: 1184, 1183: 1083, 1187: 1186, 3807: 3802, 199: 114,
}

// oldKind reports whether the operand path (operands.go) handles k.
func oldKind(k kind) bool { return k != kUnknown && k < kTime }
