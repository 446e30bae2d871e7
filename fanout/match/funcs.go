package match

import (
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// supportedFunctions is printed when a clause calls another function.
const supportedFunctions = "lower, upper, length, char_length, octet_length, concat, concat_ws, coalesce, greatest, least, nullif, abs, like, justify_days, justify_hours, justify_interval, timezone (AT TIME ZONE), array_ndims, array_length, cardinality, and function-style casts (int4(x), text(x), ...)"

func (c *compiler) funcCall(f *pg.FuncCall) (texpr, error) {
	var parts []string
	for _, n := range f.Funcname {
		parts = append(parts, n.GetString_().GetSval())
	}
	name := strings.ToLower(parts[len(parts)-1])
	if len(parts) > 2 || (len(parts) == 2 && parts[0] != "pg_catalog") {
		return nil, fmt.Errorf("where clause: function %s() is not supported (supported: %s)", strings.Join(parts, "."), supportedFunctions)
	}
	if f.AggStar || f.AggDistinct || len(f.AggOrder) > 0 || f.AggFilter != nil || f.Over != nil || f.FuncVariadic {
		return nil, fmt.Errorf("where clause: %s(): aggregates, window functions, DISTINCT, ORDER BY, FILTER and VARIADIC are not supported", name)
	}
	if len(f.Args) == 1 {
		if k, ok := kindOfTypeName(name); ok && name != "char" {
			x, err := c.expr(f.Args[0])
			if err != nil {
				return nil, err
			}
			return c.explicitCast(x, castTarget{t: scalar(k)})
		}
	}
	switch name {
	case "coalesce", "greatest", "least", "concat", "concat_ws":
		return c.variadic(name, f.Args)
	case "nullif":
		if len(f.Args) != 2 {
			return nil, fmt.Errorf("where clause: nullif() takes two arguments")
		}
		return c.nullif(f.Args[0], f.Args[1])
	}
	args := make([]texpr, len(f.Args))
	for i, a := range f.Args {
		var err error
		if args[i], err = c.expr(a); err != nil {
			return nil, err
		}
	}
	want := func(n int) error {
		if len(args) != n {
			return fmt.Errorf("where clause: %s() takes %d argument(s), not %d", name, n, len(args))
		}
		return nil
	}
	text1 := func(f func(s string) val, rt kind) (texpr, error) {
		if err := want(1); err != nil {
			return nil, err
		}
		x, err := c.coerce(args[0], scalar(kText))
		if err != nil {
			return nil, err
		}
		return strict1(scalar(rt), x, func(a val) (val, error) { return f(a.s), nil }), nil
	}
	switch name {
	case "lower":
		return text1(func(s string) val { return val{s: asciiLower(s)} }, kText)
	case "upper":
		return text1(func(s string) val { return val{s: asciiUpper(s)} }, kText)
	case "length", "char_length", "character_length":
		// character(n)'s length ignores trailing spaces: the cast to text drops them.
		return text1(func(s string) val { return val{i: int64(len([]rune(s)))} }, kInt4)
	case "octet_length":
		return text1(func(s string) val { return val{i: int64(len(s))} }, kInt4)
	case "like":
		if err := want(2); err != nil {
			return nil, err
		}
		x, err := c.coerce(args[0], scalar(kText))
		if err != nil {
			return nil, err
		}
		k, ok := args[1].(*constExpr)
		if !ok || k.null || !(k.t.k == kUnknown || isString(k.t.k)) {
			return nil, fmt.Errorf("where clause: like()'s pattern must be a quoted text constant")
		}
		lit := k.lit
		if k.t.k != kUnknown {
			lit = k.v.s
		}
		pat, err := compileLike(lit, false, '\\')
		if err != nil {
			return nil, fmt.Errorf("where clause: like() %s: %v", quote(lit), err)
		}
		return &boolExpr{&likeExprNode{x: x, pat: pat}}, nil
	case "abs":
		if err := want(1); err != nil {
			return nil, err
		}
		return c.unary("@", args[0])
	case "justify_days", "justify_hours", "justify_interval":
		if err := want(1); err != nil {
			return nil, err
		}
		x, err := c.coerce(args[0], scalar(kInterval))
		if err != nil {
			return nil, err
		}
		j := map[string]func(interval) (interval, error){"justify_days": justifyDays, "justify_hours": justifyHours, "justify_interval": justifyInterval}[name]
		return strict1(scalar(kInterval), x, func(a val) (val, error) {
			r, err := j(a.iv)
			return val{iv: r}, err
		}), nil
	case "timezone":
		if err := want(2); err != nil {
			return nil, err
		}
		zone, err := c.coerce(args[0], scalar(kText))
		if err != nil {
			return nil, err
		}
		x := args[1]
		if x.typ().k == kUnknown || x.typ().k == kDate {
			if x, err = c.coerce(x, scalar(kTimestamptz)); err != nil {
				return nil, err
			}
		}
		switch x.typ().k {
		case kTimestamptz:
			return strict2(scalar(kTimestamp), zone, x, func(z, t val) (val, error) {
				r, err := zoneShift(z.s, t.i, true)
				return val{i: r}, err
			}), nil
		case kTimestamp:
			return strict2(scalar(kTimestamptz), zone, x, func(z, t val) (val, error) {
				r, err := zoneShift(z.s, t.i, false)
				return val{i: r}, err
			}), nil
		}
		return nil, fmt.Errorf("where clause: timezone() / AT TIME ZONE needs a timestamp or timestamptz, not %s", x.typ())
	case "array_ndims", "cardinality", "array_length":
		if (name == "array_length" && len(args) != 2) || (name != "array_length" && len(args) != 1) {
			return nil, fmt.Errorf("where clause: wrong number of arguments to %s()", name)
		}
		if !args[0].typ().arr {
			return nil, fmt.Errorf("where clause: %s() needs an array, not %s", name, args[0].typ())
		}
		if name == "array_length" {
			d, err := c.coerce(args[1], scalar(kInt4))
			if err != nil {
				return nil, err
			}
			return &opX{args: []texpr{args[0], d}, t: scalar(kInt4), strict: true, f: func(_ *evalCtx, v []val, _ []bool) (val, bool, error) {
				a, dim := v[0].a, v[1].i
				if dim < 1 || dim > int64(len(a.dims)) {
					return val{}, true, nil
				}
				return val{i: int64(a.dims[dim-1])}, false, nil
			}}, nil
		}
		return &opX{args: args, t: scalar(kInt4), strict: true, f: func(_ *evalCtx, v []val, _ []bool) (val, bool, error) {
			a := v[0].a
			if name == "cardinality" {
				return val{i: int64(len(a.elems))}, false, nil
			}
			if len(a.dims) == 0 {
				return val{}, true, nil
			}
			return val{i: int64(len(a.dims))}, false, nil
		}}, nil
	case "now", "current_date", "current_timestamp", "localtimestamp", "clock_timestamp", "statement_timestamp", "transaction_timestamp", "random", "timeofday":
		return nil, fmt.Errorf("where clause: %s() is not supported: a shape's filter must not depend on when or where it is evaluated", name)
	}
	return nil, fmt.Errorf("where clause: function %s() is not supported (supported: %s)", name, supportedFunctions)
}

func asciiUpper(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' {
			return r - 'a' + 'A'
		}
		return r
	}, s)
}

// variadic compiles coalesce, greatest, least, concat and concat_ws.
func (c *compiler) variadic(name string, nodes []*pg.Node) (texpr, error) {
	if len(nodes) == 0 {
		return nil, fmt.Errorf("where clause: %s() needs arguments", name)
	}
	args := make([]texpr, len(nodes))
	for i, n := range nodes {
		var err error
		if args[i], err = c.expr(n); err != nil {
			return nil, err
		}
	}
	if name == "concat" || name == "concat_ws" {
		types := make([]typ, len(args))
		for i := range args {
			if args[i].typ().k == kUnknown {
				var err error
				if args[i], err = c.coerce(args[i], scalar(kText)); err != nil {
					return nil, err
				}
			}
			types[i] = args[i].typ()
		}
		ws := name == "concat_ws"
		return &opX{args: args, t: scalar(kText), strict: false, f: func(_ *evalCtx, v []val, null []bool) (val, bool, error) {
			var b strings.Builder
			sep, start := "", 0
			if ws {
				if null[0] {
					return val{}, true, nil
				}
				sep, start = output(v[0], types[0]), 1
			}
			first := true
			for i := start; i < len(v); i++ {
				if null[i] {
					continue
				}
				if !first {
					b.WriteString(sep)
				}
				first = false
				b.WriteString(output(v[i], types[i]))
			}
			return val{s: b.String()}, false, nil
		}}, nil
	}
	t, err := commonTypeOf(args, name+"()")
	if err != nil {
		return nil, err
	}
	for i := range args {
		if args[i], err = c.coerce(args[i], t); err != nil {
			return nil, err
		}
	}
	if name == "coalesce" {
		// Postgres's planner drops the arguments after the first constant
		// that is not NULL (and the NULL constants).
		var kept []texpr
		for i, a := range args {
			if failingExpr(a) != nil {
				kept = append(kept, args[i:]...)
				break
			}
			if k, ok := a.(*constExpr); ok {
				if k.null {
					continue
				}
				kept = append(kept, a)
				break
			}
			kept = append(kept, a)
		}
		if len(kept) == 0 {
			return &constExpr{t: t, null: true, desc: "NULL"}, nil
		}
		return &coalesceX{args: kept, t: t}, nil
	}
	if t.k == kJSON || t.k == kJSONB {
		return nil, fmt.Errorf("where clause: %s() is not supported on %s", name, t)
	}
	greatest := name == "greatest"
	return &opX{args: args, t: t, f: func(_ *evalCtx, v []val, null []bool) (val, bool, error) {
		best, found := val{}, false
		for i := range v {
			if null[i] {
				continue
			}
			if !found {
				best, found = v[i], true
				continue
			}
			if c := compareTyped(t, v[i], best); (greatest && c > 0) || (!greatest && c < 0) {
				best = v[i]
			}
		}
		return best, !found, nil
	}}, nil
}

// coalesceX evaluates its arguments only until one is not NULL, as Postgres does.
type coalesceX struct {
	args []texpr
	t    typ
}

func (e *coalesceX) typ() typ          { return e.t }
func (e *coalesceX) children() []texpr { return e.args }
func (e *coalesceX) eval(c *evalCtx) (val, bool) {
	for _, a := range e.args {
		v, null := a.eval(c)
		if c.failed != nil {
			return val{}, true
		}
		if !null {
			return v, false
		}
	}
	return val{}, true
}

// concatOp compiles ||: text with text or any non-array value, or arrays.
func (c *compiler) concatOp(a, b texpr) (texpr, error) {
	ta, tb := a.typ(), b.typ()
	var err error
	switch {
	case ta.arr || tb.arr:
		return c.arrayConcat(a, b)
	case ta.k == kUnknown && tb.k == kUnknown:
		if a, err = c.coerce(a, scalar(kText)); err != nil {
			return nil, err
		}
		if b, err = c.coerce(b, scalar(kText)); err != nil {
			return nil, err
		}
	case ta.k == kUnknown:
		if a, err = c.coerce(a, scalar(kText)); err != nil {
			return nil, err
		}
	case tb.k == kUnknown:
		if b, err = c.coerce(b, scalar(kText)); err != nil {
			return nil, err
		}
	}
	ta, tb = a.typ(), b.typ()
	if !isString(ta.k) && !isString(tb.k) {
		return nil, fmt.Errorf("where clause: operator || needs text on one side (or arrays), not %s and %s", ta, tb)
	}
	if ta.k == kJSONB || tb.k == kJSONB {
		return nil, fmt.Errorf("where clause: jsonb || is not supported")
	}
	// textanycat / anytextcat: a non-text side is printed by its output
	// function; character(n) is cast to text (its padding dropped).
	toText := func(e texpr) (texpr, error) {
		if isString(e.typ().k) {
			return c.coerce(e, scalar(kText))
		}
		t := e.typ()
		return strict1(scalar(kText), e, func(v val) (val, error) { return val{s: output(v, t)}, nil }), nil
	}
	if a, err = toText(a); err != nil {
		return nil, err
	}
	if b, err = toText(b); err != nil {
		return nil, err
	}
	return strict2(scalar(kText), a, b, func(x, y val) (val, error) { return val{s: x.s + y.s}, nil }), nil
}

func (c *compiler) arrayConcat(a, b texpr) (texpr, error) {
	ta, tb := a.typ(), b.typ()
	var err error
	switch {
	case ta.arr && tb.k == kUnknown:
		b, err = c.coerce(b, ta) // Postgres reads an untyped literal as the array type
	case tb.arr && ta.k == kUnknown:
		a, err = c.coerce(a, tb)
	case ta.arr && !tb.arr:
		b, err = c.coerce(b, ta.elem())
	case tb.arr && !ta.arr:
		a, err = c.coerce(a, tb.elem())
	default:
		var t typ
		if t, err = commonType(ta, tb); err == nil {
			if a, err = c.coerce(a, t); err == nil {
				b, err = c.coerce(b, t)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("where clause: ||: %v", err)
	}
	aArr, bArr := a.typ().arr, b.typ().arr
	t := a.typ()
	if !aArr {
		t = b.typ()
	}
	return &opX{args: []texpr{a, b}, t: t, f: func(_ *evalCtx, v []val, null []bool) (val, bool, error) {
		var x, y *arrayVal
		switch {
		case aArr && bArr:
			if null[0] && null[1] {
				return val{}, true, nil
			}
			if null[0] {
				return v[1], false, nil
			}
			if null[1] {
				return v[0], false, nil
			}
			x, y = v[0].a, v[1].a
		case aArr:
			if null[0] {
				return val{a: oneElem(v[1], null[1])}, false, nil
			}
			x, y = v[0].a, oneElem(v[1], null[1])
		default:
			if null[1] {
				return val{a: oneElem(v[0], null[0])}, false, nil
			}
			x, y = oneElem(v[0], null[0]), v[1].a
		}
		r, err := concatArrays(x, y)
		if err != nil {
			return val{}, true, err
		}
		return val{a: r}, false, nil
	}}, nil
}
