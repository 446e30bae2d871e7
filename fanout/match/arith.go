package match

import (
	"fmt"
	"math"
	"math/big"
	"strconv"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// opX applies an operator or function to evaluated arguments; strict ones
// (most) return NULL on a NULL argument without calling f.
type opX struct {
	args   []texpr
	t      typ
	strict bool
	f      func(c *evalCtx, v []val, null []bool) (val, bool, error)
}

func (e *opX) typ() typ          { return e.t }
func (e *opX) children() []texpr { return e.args }
func (e *opX) eval(c *evalCtx) (val, bool) {
	var vs [4]val
	var ns [4]bool
	v, n := vs[:0], ns[:0]
	if len(e.args) > 4 {
		v, n = make([]val, 0, len(e.args)), make([]bool, 0, len(e.args))
	}
	anyNull := false
	for _, a := range e.args {
		x, null := a.eval(c) // every argument, as Postgres evaluates them before a strict call
		if c.failed != nil {
			return val{}, true
		}
		anyNull = anyNull || null
		v, n = append(v, x), append(n, null)
	}
	if anyNull && e.strict {
		return val{}, true
	}
	out, null, err := e.f(c, v, n)
	if err != nil {
		return c.fail(err)
	}
	return out, null
}

// op1X and op2X are strict one- and two-argument operators, without the
// argument slices of opX (they are most of a clause's evaluation).
type op1X struct {
	a texpr
	t typ
	f func(a val) (val, error)
}

func (e *op1X) typ() typ          { return e.t }
func (e *op1X) children() []texpr { return []texpr{e.a} }
func (e *op1X) eval(c *evalCtx) (val, bool) {
	x, null := e.a.eval(c)
	if null {
		return val{}, true
	}
	r, err := e.f(x)
	if err != nil {
		return c.fail(err)
	}
	return r, false
}

type op2X struct {
	a, b texpr
	t    typ
	f    func(a, b val) (val, error)
}

func (e *op2X) typ() typ          { return e.t }
func (e *op2X) children() []texpr { return []texpr{e.a, e.b} }
func (e *op2X) eval(c *evalCtx) (val, bool) {
	x, xn := e.a.eval(c)
	y, yn := e.b.eval(c) // both, as Postgres evaluates them before a strict call
	if xn || yn || c.failed != nil {
		return val{}, true
	}
	r, err := e.f(x, y)
	if err != nil {
		return c.fail(err)
	}
	return r, false
}

func strict1(t typ, a texpr, f func(a val) (val, error)) texpr { return &op1X{a: a, t: t, f: f} }

func strict2(t typ, a, b texpr, f func(a, b val) (val, error)) texpr {
	return &op2X{a: a, b: b, t: t, f: f}
}

// operator compiles a value operator: arithmetic, bitwise, ||, and the
// date/time operators.
func (c *compiler) operator(name string, l, r *pg.Node) (texpr, error) {
	if l == nil {
		x, err := c.expr(r)
		if err != nil {
			return nil, err
		}
		return c.unary(name, x)
	}
	a, err := c.expr(l)
	if err != nil {
		return nil, err
	}
	b, err := c.expr(r)
	if err != nil {
		return nil, err
	}
	return c.binary(name, a, b)
}

func (c *compiler) unary(name string, x texpr) (texpr, error) {
	t := x.typ()
	if t.k == kUnknown {
		var err error
		if x, err = c.coerce(x, scalar(kFloat8)); err != nil {
			return nil, err
		}
		if name != "|/" && name != "||/" && name != "@" {
			return nil, fmt.Errorf("where clause: operator %s on an untyped constant is ambiguous; cast it", name)
		}
		t = x.typ()
	}
	if t.arr {
		return nil, fmt.Errorf("where clause: operator %s is not defined for %s", name, t)
	}
	switch name {
	case "-", "+", "@":
		switch {
		case isInt(t.k):
			return strict1(t, x, func(a val) (val, error) {
				switch {
				case name == "+", name == "@" && a.i >= 0:
					return a, nil
				}
				return val{i: -a.i}, negRange(a.i, t.k)
			}), nil
		case isFloat(t.k):
			return strict1(t, x, func(a val) (val, error) {
				switch name {
				case "-":
					return val{f: -a.f}, nil
				case "@":
					return val{f: math.Abs(a.f)}, nil
				}
				return a, nil
			}), nil
		case t.k == kNumeric:
			return strict1(t, x, func(a val) (val, error) {
				if name == "+" || (name == "@" && a.n.sign() >= 0) {
					return a, nil
				}
				return val{n: a.n.neg()}, nil
			}), nil
		case t.k == kInterval && name != "@":
			return strict1(t, x, func(a val) (val, error) {
				if name == "+" {
					return a, nil
				}
				iv, err := a.iv.neg()
				return val{iv: iv}, err
			}), nil
		}
	case "~":
		if isInt(t.k) {
			return strict1(t, x, func(a val) (val, error) { return val{i: ^a.i}, nil }), nil
		}
	case "|/", "||/":
		x, err := c.coerce(x, scalar(kFloat8))
		if err != nil {
			return nil, err
		}
		return strict1(scalar(kFloat8), x, func(a val) (val, error) {
			if name == "||/" {
				return val{f: math.Cbrt(a.f)}, nil
			}
			if a.f < 0 {
				return val{}, evalErrorf("cannot take square root of a negative number")
			}
			return val{f: math.Sqrt(a.f)}, nil
		}), nil
	}
	return nil, fmt.Errorf("where clause: prefix operator %s is not supported for %s (supported: - + @ on numbers, ~ on integers, |/ ||/, - on interval)", name, t)
}

func negRange(i int64, k kind) error {
	if i == math.MinInt64 {
		return evalErrorf("bigint out of range")
	}
	return intRange(-i, k)
}

// binary resolves and compiles a two-operand value operator.
func (c *compiler) binary(name string, a, b texpr) (texpr, error) {
	ta, tb := a.typ(), b.typ()
	switch name {
	case "||":
		return c.concatOp(a, b)
	case "+", "-", "*", "/", "%", "^", "&", "|", "#":
	default:
		return nil, fmt.Errorf("where clause: operator %q is not supported in where clauses (supported: = <> < <= > >= + - * / %% ^ |/ ||/ @ & | # ~ || @> <@ && LIKE ILIKE IN ANY ALL BETWEEN IS [NOT] NULL, IS [NOT] DISTINCT FROM, AND OR NOT)", name)
	}
	if ta.arr || tb.arr {
		return nil, fmt.Errorf("where clause: operator %s is not defined for arrays", name)
	}
	// An untyped constant takes the other side's type (or interval next to a date/time).
	if ta.k == kUnknown && tb.k == kUnknown {
		return nil, fmt.Errorf("where clause: operator %s between two untyped constants is ambiguous; cast one", name)
	}
	if (ta.k == kDate && tb.k == kUnknown || ta.k == kUnknown && tb.k == kDate) && name == "+" {
		return nil, fmt.Errorf("where clause: operator is not unique: date + unknown; cast the constant (::integer, ::interval or ::time)")
	}
	var err error
	if ta.k == kUnknown {
		if a, err = c.coerce(a, unknownPeer(name, tb, true)); err != nil {
			return nil, err
		}
	}
	if tb.k == kUnknown {
		if b, err = c.coerce(b, unknownPeer(name, ta, false)); err != nil {
			return nil, err
		}
	}
	ta, tb = a.typ(), b.typ()
	if isNumber(ta.k) && isNumber(tb.k) {
		return c.numberOp(name, a, b)
	}
	if e, ok, err := c.timeOp(name, a, b); ok || err != nil {
		return e, err
	}
	return nil, fmt.Errorf("where clause: operator %s is not supported for %s and %s", name, ta, tb)
}

// unknownPeer is the type an untyped constant gets next to a value of type t.
func unknownPeer(op string, t typ, left bool) typ {
	// Postgres first tries the other side's type (ts - '...' is ts - ts);
	// + has no such operator for these types, and interval is the one left.
	if (t.k == kTimestamp || t.k == kTimestamptz || t.k == kTime) && op == "+" {
		return scalar(kInterval)
	}
	return t
}

// numberOp is arithmetic and bitwise operators on numbers.
func (c *compiler) numberOp(name string, a, b texpr) (texpr, error) {
	t, _ := commonType(a.typ(), b.typ())
	switch name {
	case "&", "|", "#":
		if !isInt(t.k) {
			return nil, fmt.Errorf("where clause: bitwise operator %s needs integers, not %s and %s", name, a.typ(), b.typ())
		}
	case "%":
		if isFloat(t.k) {
			return nil, fmt.Errorf("where clause: operator %% is not defined for %s (Postgres has none); cast to numeric or integer", t)
		}
	case "^":
		if t.k == kNumeric {
			return nil, fmt.Errorf("where clause: numeric ^ is not supported (the matcher does not reproduce Postgres's rounding of numeric powers); cast to double precision")
		}
		t = scalar(kFloat8)
	case "+", "-", "*", "/":
	default:
		return nil, fmt.Errorf("where clause: operator %s is not supported on numbers (supported: + - * / %% ^ & | #)", name)
	}
	var err error
	if a, err = c.coerce(a, t); err != nil {
		return nil, err
	}
	if b, err = c.coerce(b, t); err != nil {
		return nil, err
	}
	switch {
	case isInt(t.k):
		return strict2(t, a, b, func(x, y val) (val, error) { return intOp(name, x.i, y.i, t.k) }), nil
	case isFloat(t.k):
		return strict2(t, a, b, func(x, y val) (val, error) { return floatOp(name, x.f, y.f, t.k) }), nil
	}
	return strict2(t, a, b, func(x, y val) (val, error) {
		n, err := numericOp(name, x.n, y.n)
		return val{n: n}, err
	}), nil
}

func intOp(op string, a, b int64, k kind) (val, error) {
	var r int64
	over := false
	switch op {
	case "+":
		r = a + b
		over = (a > 0 && b > 0 && r < 0) || (a < 0 && b < 0 && r >= 0)
	case "-":
		r = a - b
		over = (a >= 0 && b < 0 && r < 0) || (a < 0 && b > 0 && r >= 0)
	case "*":
		r = a * b
		over = a != 0 && (r/a != b || (a == -1 && b == math.MinInt64) || (b == -1 && a == math.MinInt64))
	case "/":
		if b == 0 {
			return val{}, evalErrorf("division by zero")
		}
		if b == -1 {
			return val{i: -a}, negRange(a, k)
		}
		r = a / b
	case "%":
		if b == 0 {
			return val{}, evalErrorf("division by zero")
		}
		if b == -1 {
			return val{}, nil
		}
		r = a % b
	case "&":
		r = a & b
	case "|":
		r = a | b
	case "#":
		r = a ^ b
	}
	if over {
		return val{}, evalErrorf("%s out of range", k)
	}
	return val{i: r}, intRange(r, k)
}

func floatOp(op string, a, b float64, k kind) (val, error) {
	f32 := k == kFloat4
	var r float64
	switch op {
	case "+", "-", "*", "/":
		if op == "/" && b == 0 && !math.IsNaN(a) {
			return val{}, evalErrorf("division by zero")
		}
		if f32 {
			x, y := float32(a), float32(b)
			switch op {
			case "+":
				r = float64(x + y)
			case "-":
				r = float64(x - y)
			case "*":
				r = float64(x * y)
			default:
				r = float64(x / y)
			}
		} else {
			switch op {
			case "+":
				r = a + b
			case "-":
				r = a - b
			case "*":
				r = a * b
			default:
				r = a / b
			}
		}
		if math.IsInf(r, 0) && !math.IsInf(a, 0) && !math.IsInf(b, 0) {
			return val{}, evalErrorf("value out of range: overflow")
		}
		if (op == "*" && r == 0 && a != 0 && b != 0) || (op == "/" && r == 0 && a != 0 && !math.IsInf(b, 0)) {
			return val{}, evalErrorf("value out of range: underflow")
		}
		return val{f: r}, nil
	case "^":
		return floatPow(a, b)
	}
	return val{}, evalErrorf("internal: float operator %s", op)
}

// floatPow is Postgres's dpow.
func floatPow(x, y float64) (val, error) {
	switch {
	case math.IsNaN(x):
		if math.IsNaN(y) || y != 0 {
			return val{f: math.NaN()}, nil
		}
		return val{f: 1}, nil
	case math.IsNaN(y):
		if x != 1 {
			return val{f: math.NaN()}, nil
		}
		return val{f: 1}, nil
	case x == 0 && y < 0:
		return val{}, evalErrorf("zero raised to a negative power is undefined")
	case x < 0 && math.Floor(y) != y:
		return val{}, evalErrorf("a negative number raised to a non-integer power yields a complex result")
	}
	r := math.Pow(x, y)
	if !math.IsInf(x, 0) && !math.IsInf(y, 0) {
		if math.IsInf(r, 0) {
			return val{}, evalErrorf("value out of range: overflow")
		}
		if r == 0 && x != 0 {
			return val{}, evalErrorf("value out of range: underflow")
		}
	}
	return val{f: r}, nil
}

// Numeric arithmetic: exact rationals with Postgres's display scales.

func (n num) sign() int {
	switch n.special {
	case 1:
		return 1
	case -1:
		return -1
	case 2:
		return 0
	}
	return n.r.Sign()
}

func (n num) neg() num {
	switch n.special {
	case 1, -1:
		return num{special: -n.special}
	case 2:
		return n
	}
	return num{r: new(big.Rat).Neg(n.r), scale: n.scale}
}

func numInf(sign int) num {
	if sign > 0 {
		return num{special: 1}
	}
	return num{special: -1}
}

var nan = num{special: 2}

func numericOp(op string, a, b num) (num, error) {
	if a.special == 2 || b.special == 2 {
		return nan, nil
	}
	if a.special != 0 || b.special != 0 {
		return numericSpecial(op, a, b)
	}
	scale := max(a.scale, b.scale)
	switch op {
	case "+":
		return num{r: new(big.Rat).Add(a.r, b.r), scale: scale}, nil
	case "-":
		return num{r: new(big.Rat).Sub(a.r, b.r), scale: scale}, nil
	case "*":
		return num{r: new(big.Rat).Mul(a.r, b.r), scale: a.scale + b.scale}, nil
	case "/":
		if b.r.Sign() == 0 {
			return num{}, evalErrorf("division by zero")
		}
		rs := divScale(a, b)
		q := new(big.Rat).Quo(a.r, b.r)
		return num{r: roundRat(q, rs), scale: rs}, nil
	case "%":
		if b.r.Sign() == 0 {
			return num{}, evalErrorf("division by zero")
		}
		q := new(big.Rat).Quo(a.r, b.r)
		t := new(big.Int).Quo(q.Num(), q.Denom()) // truncates toward zero
		m := new(big.Rat).Sub(a.r, new(big.Rat).Mul(new(big.Rat).SetInt(t), b.r))
		return num{r: m, scale: scale}, nil
	}
	return num{}, evalErrorf("internal: numeric operator %s", op)
}

func numericSpecial(op string, a, b num) (num, error) {
	sa, sb := a.sign(), b.sign()
	switch op {
	case "+":
		if a.special != 0 && b.special != 0 && a.special != b.special {
			return nan, nil
		}
		if a.special != 0 {
			return a, nil
		}
		return b, nil
	case "-":
		return numericSpecial("+", a, b.neg())
	case "*":
		if sa == 0 || sb == 0 {
			return nan, nil
		}
		return numInf(sa * sb), nil
	case "/":
		if a.special != 0 {
			if b.special != 0 {
				return nan, nil
			}
			if sb == 0 {
				return num{}, evalErrorf("division by zero")
			}
			return numInf(sa * sb), nil
		}
		return num{r: new(big.Rat), scale: 0}, nil
	case "%":
		if a.special != 0 {
			if b.special == 0 && sb == 0 {
				return num{}, evalErrorf("division by zero")
			}
			return nan, nil
		}
		return a, nil
	}
	return num{}, evalErrorf("internal: numeric operator %s", op)
}

// divScale is Postgres's select_div_scale: at least 16 significant digits.
func divScale(a, b num) int32 {
	w1, d1 := nbaseWeight(a.r)
	w2, d2 := nbaseWeight(b.r)
	qw := w1 - w2
	if d1 <= d2 {
		qw--
	}
	rs := int32(16 - qw*4)
	rs = max(rs, a.scale, b.scale, 0)
	return min(rs, 1000)
}

// nbaseWeight is a number's weight and first digit in base 10000 (Postgres's
// NBASE), 0 and 0 for zero.
func nbaseWeight(r *big.Rat) (int, int64) {
	if r.Sign() == 0 {
		return 0, 0
	}
	x := new(big.Rat).Abs(r)
	base := big.NewRat(10000, 1)
	w := 0
	one := big.NewRat(1, 1)
	for x.Cmp(base) >= 0 {
		x.Quo(x, base)
		w++
	}
	for x.Cmp(one) < 0 {
		x.Mul(x, base)
		w--
	}
	d := new(big.Int).Quo(x.Num(), x.Denom())
	return w, d.Int64()
}

// roundRat rounds r to scale decimal places, half away from zero (numeric's rounding).
func roundRat(r *big.Rat, scale int32) *big.Rat {
	p := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale)), nil)
	x := new(big.Rat).Mul(r, new(big.Rat).SetInt(p))
	neg := x.Sign() < 0
	x.Abs(x)
	x.Add(x, big.NewRat(1, 2))
	q := new(big.Int).Quo(x.Num(), x.Denom())
	if neg {
		q.Neg(q)
	}
	return new(big.Rat).SetFrac(q, p)
}

func numericToInt(n num, k kind) (int64, error) {
	switch n.special {
	case 2:
		return 0, evalErrorf("cannot convert NaN to %s", k)
	case 1, -1:
		return 0, evalErrorf("cannot convert infinity to %s", k)
	}
	r := roundRat(n.r, 0)
	if !r.Num().IsInt64() {
		return 0, evalErrorf("%s out of range", k)
	}
	i := r.Num().Int64()
	return i, intRange(i, k)
}

// floatToNumeric is float8_numeric / float4_numeric: through the shortest
// text of DBL_DIG (FLT_DIG) significant digits.
func floatToNumeric(f float64, k kind) num {
	switch {
	case math.IsNaN(f):
		return nan
	case math.IsInf(f, 1):
		return num{special: 1}
	case math.IsInf(f, -1):
		return num{special: -1}
	}
	digits := 15
	if k == kFloat4 {
		digits = 6
	}
	s := strconv.FormatFloat(f, 'g', digits, 64)
	n, _ := parseNumeric(s)
	return n
}

// numericTypmod applies numeric(p, s): round to s places, and fail when the
// integer part needs more than p-s digits.
func numericTypmod(n num, p, s int) (num, error) {
	if n.special != 0 {
		if n.special == 2 {
			return n, nil
		}
		return num{}, evalErrorf("numeric field overflow: cannot hold an infinite value")
	}
	r := roundRat(n.r, int32(s))
	lim := new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(p-s)), nil))
	if new(big.Rat).Abs(r).Cmp(lim) >= 0 {
		return num{}, evalErrorf("numeric field overflow: a field with precision %d, scale %d must round to an absolute value less than 10^%d", p, s, p-s)
	}
	return num{r: r, scale: int32(s)}, nil
}
