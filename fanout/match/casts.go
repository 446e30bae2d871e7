package match

import (
	"cmp"
	"fmt"
	"math"
	"math/big"
	"strings"
)

// commonType is the type Postgres resolves two operands of one operator to
// (select_common_type for the supported types).
func commonType(a, b typ) (typ, error) {
	switch {
	case a.k == kUnknown && b.k == kUnknown:
		return scalar(kText), nil
	case a.k == kUnknown:
		return b, nil
	case b.k == kUnknown:
		return a, nil
	}
	if a.arr || b.arr {
		if a.arr && b.arr && a.elem().same(b.elem()) {
			return a, nil
		}
		if a.arr && b.arr && isString(a.k) && isString(b.k) {
			return typ{k: kText, arr: true}, nil
		}
		return typ{}, fmt.Errorf("Postgres has no such operator (arrays compare with arrays of the same element type)")
	}
	switch {
	case a.k == b.k && (a.k != kEnum || a.enum.name == b.enum.name):
		if isString(a.k) {
			return scalar(a.k), nil
		}
		return a, nil
	case isNumber(a.k) && isNumber(b.k):
		switch {
		case isFloat(a.k) || isFloat(b.k):
			if a.k == kFloat4 && b.k == kFloat4 {
				return scalar(kFloat4), nil
			}
			return scalar(kFloat8), nil
		case a.k == kNumeric || b.k == kNumeric:
			return scalar(kNumeric), nil
		}
		k, _ := widerKind(a.k, b.k)
		return scalar(k), nil
	case isString(a.k) && isString(b.k):
		switch {
		case a.k == kText || b.k == kText:
			return scalar(kText), nil
		case a.k == kBpchar || b.k == kBpchar:
			return scalar(kBpchar), nil
		}
		return scalar(kVarchar), nil
	case isTemporal(a.k) && isTemporal(b.k):
		k, _ := widerKind(a.k, b.k)
		return scalar(k), nil
	}
	return typ{}, fmt.Errorf("Postgres has no implicit conversion between them")
}

// commonTypeOf resolves the type of several values (CASE results, coalesce).
func commonTypeOf(es []texpr, what string) (typ, error) {
	t := scalar(kUnknown)
	for _, e := range es {
		if e.typ().k == kUnknown {
			continue // select_common_type ignores unknowns unless all are
		}
		n, err := commonType(t, e.typ())
		if err != nil {
			return typ{}, fmt.Errorf("where clause: %s mixes %s and %s: %v", what, t, e.typ(), err)
		}
		t = n
	}
	if t.k == kUnknown {
		t = scalar(kText)
	}
	return t, nil
}

// coerce converts e to t implicitly, as Postgres does for an operator's argument.
func (c *compiler) coerce(e texpr, t typ) (texpr, error) {
	from := e.typ()
	if k, ok := e.(*constExpr); ok && from.k == kUnknown {
		if k.null {
			return &constExpr{t: t, null: true, desc: k.desc}, nil
		}
		v, err := literal(k.lit, t)
		if err != nil {
			return nil, fmt.Errorf("where clause: constant %s is not a valid %s: %v", k.desc, t, err)
		}
		return &constExpr{t: t, v: v, desc: k.desc}, nil
	}
	if from.same(t) {
		return e, nil
	}
	if !implicitCast(from, t) {
		return nil, fmt.Errorf("where clause: %s does not convert to %s implicitly; cast it (::%s)", from, t, t)
	}
	return fold(&castX{x: e, to: t})
}

func implicitCast(from, to typ) bool {
	if from.arr != to.arr {
		return false
	}
	if from.arr {
		return isString(from.k) && isString(to.k)
	}
	switch {
	case isInt(from.k):
		return (isInt(to.k) && intBits(to.k) >= intBits(from.k)) || to.k == kNumeric || isFloat(to.k)
	case from.k == kNumeric:
		return isFloat(to.k)
	case from.k == kFloat4:
		return to.k == kFloat8
	case isString(from.k):
		return isString(to.k)
	case from.k == kDate:
		return to.k == kTimestamp || to.k == kTimestamptz
	case from.k == kTimestamp:
		return to.k == kTimestamptz
	case from.k == kTime:
		return to.k == kInterval
	}
	return false
}

// explicitCast is ::type.
func (c *compiler) explicitCast(x texpr, to castTarget) (texpr, error) {
	from := x.typ()
	if k, ok := x.(*constExpr); ok && from.k == kUnknown {
		e, err := c.coerce(k, to.t)
		if err != nil {
			return nil, err
		}
		if to.precision > 0 {
			return fold(&castX{x: e, to: to.t, prec: to.precision, scale: to.scale})
		}
		return e, nil
	}
	if !explicitOK(from, to.t) {
		return nil, fmt.Errorf("where clause: cannot cast %s to %s (Postgres has no such cast, or the matcher does not support it)", from, to.t)
	}
	return fold(&castX{x: x, to: to.t, prec: to.precision, scale: to.scale})
}

func explicitOK(from, to typ) bool {
	if from.arr && !to.arr {
		return isString(to.k) // array output
	}
	if from.same(to) || implicitCast(from, to) {
		return true
	}
	if from.arr != to.arr {
		return false
	}
	if from.arr {
		return explicitOK(from.elem(), to.elem())
	}
	f, t := from.k, to.k
	switch {
	case isString(t), isString(f):
		return true
	case isNumber(f) && isNumber(t):
		return true
	case (f == kInt4 && t == kBool) || (f == kBool && t == kInt4):
		return true
	case (f == kTimestamp || f == kTimestamptz) && (t == kDate || t == kTime || t == kTimestamp):
		return true
	case f == kTimestamptz && t == kTimestamp:
		return true
	case (f == kJSON && t == kJSONB) || (f == kJSONB && t == kJSON):
		return true
	}
	return false
}

// castX converts a value at evaluation time.
type castX struct {
	x           texpr
	to          typ
	prec, scale int // numeric(p, s)
}

func (e *castX) typ() typ          { return e.to }
func (e *castX) children() []texpr { return []texpr{e.x} }
func (e *castX) eval(c *evalCtx) (val, bool) {
	v, null := e.x.eval(c)
	if null {
		return v, true
	}
	out, err := castVal(v, e.x.typ(), e.to)
	if err == errNullResult {
		return val{}, true
	}
	if err == nil && e.prec > 0 {
		out.n, err = numericTypmod(out.n, e.prec, e.scale)
	}
	if err != nil {
		return c.fail(err)
	}
	return out, false
}

// errNullResult is castVal's way to say the cast yields NULL.
var errNullResult = &errEval{"NULL"}

// castVal converts v of type from to type to.
func castVal(v val, from, to typ) (val, error) {
	if from.arr && !to.arr {
		return val{s: output(v, from)}, nil
	}
	if from.arr {
		a := v.a
		out := &arrayVal{dims: a.dims, lbs: a.lbs, nulls: a.nulls, elems: make([]val, len(a.elems))}
		for i, x := range a.elems {
			if a.nulls[i] {
				continue
			}
			y, err := castVal(x, from.elem(), to.elem())
			if err != nil {
				return val{}, err
			}
			out.elems[i] = y
		}
		return val{a: out}, nil
	}
	f, t := from.k, to.k
	if f == t && f != kEnum && !isString(f) {
		return v, nil
	}
	switch {
	case isString(t):
		var s string
		switch {
		case f == kBool:
			s = "false"
			if v.i == 1 {
				s = "true"
			}
		case f == kBpchar:
			s = strings.TrimRight(v.s, " ")
		default:
			s = output(v, from)
		}
		if to.mod > 0 {
			s = fitLength(s, to)
		}
		return val{s: s}, nil
	case isString(f):
		s := v.s
		if f == kBpchar {
			s = strings.TrimRight(s, " ")
		}
		return literal(s, to)
	case isInt(t):
		switch {
		case isInt(f):
			return val{i: v.i}, intRange(v.i, t)
		case f == kNumeric:
			i, err := numericToInt(v.n, t)
			return val{i: i}, err
		case isFloat(f):
			r := math.RoundToEven(v.f)
			if math.IsNaN(r) || r < -9.223372036854775808e18 || r >= 9.223372036854775808e18 {
				return val{}, evalErrorf("%s out of range", t)
			}
			return val{i: int64(r)}, intRange(int64(r), t)
		case f == kBool:
			return val{i: v.i}, nil
		}
	case t == kNumeric:
		switch {
		case isInt(f):
			return val{n: num{r: new(big.Rat).SetInt64(v.i)}}, nil
		case isFloat(f):
			return val{n: floatToNumeric(v.f, f)}, nil
		}
	case isFloat(t):
		var x float64
		switch {
		case isInt(f):
			x = float64(v.i)
		case f == kNumeric:
			x = v.n.float()
			if v.n.special == 0 && math.IsInf(x, 0) {
				return val{}, evalErrorf("%q is out of range for type %s", output(v, from), t)
			}
		case isFloat(f):
			x = v.f
		}
		if t == kFloat4 {
			y := float64(float32(x))
			if math.IsInf(y, 0) && !math.IsInf(x, 0) {
				return val{}, evalErrorf("value out of range: overflow")
			}
			if y == 0 && x != 0 {
				return val{}, evalErrorf("value out of range: underflow")
			}
			x = y
		}
		return val{f: x}, nil
	case t == kBool && f == kInt4:
		if v.i != 0 {
			return val{i: 1}, nil
		}
		return val{}, nil
	case t == kDate && (f == kTimestamp || f == kTimestamptz):
		if v.i == math.MaxInt64 || v.i == math.MinInt64 {
			return v, nil
		}
		return val{i: floorDiv(v.i, usPerDay) * usPerDay}, nil
	case t == kTime && (f == kTimestamp || f == kTimestamptz):
		if v.i == math.MaxInt64 || v.i == math.MinInt64 {
			return val{}, errNullResult // timestamp_time: NULL
		}
		return val{i: v.i - floorDiv(v.i, usPerDay)*usPerDay}, nil
	case t == kInterval && f == kTime:
		return val{iv: interval{us: v.i}}, nil
	case (t == kTimestamp || t == kTimestamptz) && isTemporal(f):
		return v, nil
	case t == kJSONB && f == kJSON:
		return literal(v.s, to)
	case t == kJSON && f == kJSONB:
		return v, nil
	}
	return val{}, evalErrorf("internal: no cast from %s to %s", from, to)
}

func intRange(i int64, k kind) error {
	switch k {
	case kInt2:
		if i < math.MinInt16 || i > math.MaxInt16 {
			return evalErrorf("smallint out of range")
		}
	case kInt4:
		if i < math.MinInt32 || i > math.MaxInt32 {
			return evalErrorf("integer out of range")
		}
	}
	return nil
}

// compareTyped orders two values of type t, as Postgres's btree comparison does.
func compareTyped(t typ, a, b val) int {
	if t.arr {
		return compareArrays(t.elem(), a.a, b.a)
	}
	switch t.k {
	case kInt2, kInt4, kInt8, kBool, kDate, kTimestamp, kTimestamptz, kTime, kEnum:
		return cmp.Compare(a.i, b.i)
	case kNumeric:
		return a.n.cmp(b.n)
	case kFloat4, kFloat8:
		return cmpFloat(a.f, b.f)
	case kBpchar:
		return strings.Compare(strings.TrimRight(a.s, " "), strings.TrimRight(b.s, " "))
	case kInterval:
		return a.iv.cmp(b.iv)
	case kJSONB:
		return strings.Compare(jsonbKey(a.s), jsonbKey(b.s))
	}
	return strings.Compare(a.s, b.s)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
