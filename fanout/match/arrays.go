package match

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// arrayVal is an array: dimensions, lower bounds and elements in row-major order.
type arrayVal struct {
	dims, lbs []int
	elems     []val
	nulls     []bool
}

// parseArray reads array text ('{1,2,NULL}', '{{a,b},{c,d}}', '[0:1]={1,2}').
func parseArray(s string, elem typ) (val, error) {
	bad := func(why string) (val, error) {
		return val{}, fmt.Errorf("malformed array literal %q: %s", s, why)
	}
	t := strings.TrimSpace(s)
	a := &arrayVal{}
	var lbs []int
	if strings.HasPrefix(t, "[") {
		eq := strings.Index(t, "=")
		if eq < 0 {
			return bad("dimensions without '='")
		}
		for _, d := range strings.Split(strings.Trim(t[:eq], "[]"), "][") {
			lo, _, ok := strings.Cut(d, ":")
			n, err := strconv.Atoi(lo)
			if !ok || err != nil {
				return bad("bad dimensions")
			}
			lbs = append(lbs, n)
		}
		t = strings.TrimSpace(t[eq+1:])
	}
	if !strings.HasPrefix(t, "{") {
		return bad("it must start with '{'")
	}
	var sizes []int // elements seen per depth in the current sub-array
	var dims []int
	depth, i := 0, 0
	for i < len(t) {
		ch := t[i]
		switch {
		case ch == '{':
			depth++
			if depth > len(sizes) {
				sizes = append(sizes, 0)
			}
			sizes[depth-1] = 0
			i++
		case ch == '}':
			if depth == 0 {
				return bad("unbalanced '}'")
			}
			n := sizes[depth-1]
			for len(dims) < depth {
				dims = append(dims, -1)
			}
			if dims[depth-1] == -1 {
				dims[depth-1] = n
			} else if dims[depth-1] != n {
				return bad("multidimensional arrays must have sub-arrays with matching dimensions")
			}
			depth--
			if depth > 0 {
				sizes[depth-1]++
			}
			i++
		case ch == ',' || ch == ' ' || ch == '\t' || ch == '\n':
			i++
		default:
			if depth == 0 {
				return bad("junk after closing right brace")
			}
			var item string
			quoted := false
			if ch == '"' {
				quoted = true
				i++
				var b strings.Builder
				for i < len(t) && t[i] != '"' {
					if t[i] == '\\' && i+1 < len(t) {
						i++
					}
					b.WriteByte(t[i])
					i++
				}
				if i == len(t) {
					return bad("unterminated quote")
				}
				i++
				item = b.String()
			} else {
				var b strings.Builder
				for i < len(t) && t[i] != ',' && t[i] != '}' {
					if t[i] == '\\' && i+1 < len(t) {
						i++
					}
					b.WriteByte(t[i])
					i++
				}
				item = strings.TrimRight(b.String(), " \t\n")
			}
			if depth != len(sizes) {
				return bad("elements and sub-arrays mixed")
			}
			sizes[depth-1]++
			if !quoted && strings.EqualFold(item, "null") {
				a.elems = append(a.elems, val{})
				a.nulls = append(a.nulls, true)
				continue
			}
			v, err := native(item, elem)
			if err != nil {
				return val{}, err
			}
			a.elems = append(a.elems, v)
			a.nulls = append(a.nulls, false)
		}
		if depth == 0 && i < len(t) && strings.TrimSpace(t[i:]) != "" {
			return bad("junk after closing right brace")
		}
	}
	if depth != 0 {
		return bad("unbalanced '{'")
	}
	if len(a.elems) == 0 {
		return val{a: &arrayVal{}}, nil
	}
	a.dims = dims
	a.lbs = make([]int, len(dims))
	for k := range a.lbs {
		a.lbs[k] = 1
		if k < len(lbs) {
			a.lbs[k] = lbs[k]
		}
	}
	return val{a: a}, nil
}

func formatArray(a *arrayVal, elem typ) string {
	if len(a.elems) == 0 {
		return "{}"
	}
	var b strings.Builder
	custom := false
	for _, l := range a.lbs {
		custom = custom || l != 1
	}
	if custom {
		for k, l := range a.lbs {
			fmt.Fprintf(&b, "[%d:%d]", l, l+a.dims[k]-1)
		}
		b.WriteByte('=')
	}
	pos := 0
	var rec func(d int)
	rec = func(d int) {
		b.WriteByte('{')
		for i := 0; i < a.dims[d]; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			if d+1 < len(a.dims) {
				rec(d + 1)
				continue
			}
			if a.nulls[pos] {
				b.WriteString("NULL")
			} else {
				b.WriteString(quoteArrayElem(output(a.elems[pos], elem)))
			}
			pos++
		}
		b.WriteByte('}')
	}
	rec(0)
	return b.String()
}

func quoteArrayElem(s string) string {
	if s != "" && !strings.EqualFold(s, "null") && !strings.ContainsAny(s, "{},\"\\ \t\n\r\v\f") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// compareArrays is array_cmp: elements in order (NULL above values), then
// the element count, the dimensions and the lower bounds.
func compareArrays(elem typ, a, b *arrayVal) int {
	n := min(len(a.elems), len(b.elems))
	for i := 0; i < n; i++ {
		an, bn := a.nulls[i], b.nulls[i]
		switch {
		case an && bn:
			continue
		case an:
			return 1
		case bn:
			return -1
		}
		if c := compareTyped(elem, a.elems[i], b.elems[i]); c != 0 {
			return c
		}
	}
	if c := cmp.Compare(len(a.elems), len(b.elems)); c != 0 {
		return c
	}
	if c := cmp.Compare(len(a.dims), len(b.dims)); c != 0 {
		return c
	}
	for k := range a.dims {
		if c := cmp.Compare(a.dims[k], b.dims[k]); c != 0 {
			return c
		}
		if c := cmp.Compare(a.lbs[k], b.lbs[k]); c != 0 {
			return c
		}
	}
	return 0
}

// arrayOp compiles @>, <@ and &&.
func (c *compiler) arrayOp(name string, l, r *pg.Node) (node, error) {
	a, err := c.expr(l)
	if err != nil {
		return nil, err
	}
	b, err := c.expr(r)
	if err != nil {
		return nil, err
	}
	if !a.typ().arr && !b.typ().arr {
		return nil, fmt.Errorf("where clause: operator %s needs arrays, not %s and %s", name, a.typ(), b.typ())
	}
	t, err := commonType(a.typ(), b.typ())
	if err != nil || !t.arr {
		return nil, fmt.Errorf("where clause: operator %s needs two arrays of one element type, not %s and %s", name, a.typ(), b.typ())
	}
	if a, err = c.coerce(a, t); err != nil {
		return nil, err
	}
	if b, err = c.coerce(b, t); err != nil {
		return nil, err
	}
	if name == "<@" {
		a, b, name = b, a, "@>"
	}
	return &arrayOpNode{overlap: name == "&&", a: a, b: b, elem: t.elem()}, nil
}

type arrayOpNode struct {
	overlap bool // &&; else a @> b
	a, b    texpr
	elem    typ
}

func (n *arrayOpNode) eval(c *evalCtx) tri {
	x, xn := n.a.eval(c)
	y, yn := n.b.eval(c)
	if xn || yn {
		return tNull
	}
	has := func(arr *arrayVal, v val) bool {
		for i, e := range arr.elems {
			if !arr.nulls[i] && compareTyped(n.elem, e, v) == 0 {
				return true
			}
		}
		return false
	}
	if n.overlap {
		for i, e := range y.a.elems {
			if !y.a.nulls[i] && has(x.a, e) {
				return tTrue
			}
		}
		return tFalse
	}
	for i, e := range y.a.elems {
		if y.a.nulls[i] || !has(x.a, e) {
			return tFalse
		}
	}
	return tTrue
}

// anyAll compiles x op ANY (array) and x op ALL (array).
func (c *compiler) anyAll(name string, l, r *pg.Node, all bool) (node, error) {
	op, ok := cmpOps[name]
	if !ok {
		return nil, fmt.Errorf("where clause: %s ANY/ALL is not supported; use a comparison operator (= <> < <= > >=)", name)
	}
	x, err := c.expr(l)
	if err != nil {
		return nil, err
	}
	arr, err := c.expr(r)
	if err != nil {
		return nil, err
	}
	at := arr.typ()
	if at.k == kUnknown {
		et := x.typ()
		if et.k == kUnknown {
			et = scalar(kText)
		}
		if arr, err = c.coerce(arr, typ{k: et.k, arr: true, enum: et.enum}); err != nil {
			return nil, err
		}
		at = arr.typ()
	}
	if !at.arr {
		return nil, fmt.Errorf("where clause: %s %s needs an array on its right, not %s", name, map[bool]string{false: "ANY", true: "ALL"}[all], at)
	}
	t, err := commonType(x.typ(), at.elem())
	if err != nil {
		return nil, fmt.Errorf("where clause: cannot compare %s with elements of %s: %v", x.typ(), at, err)
	}
	if err := checkComparable(t, op); err != nil {
		return nil, err
	}
	if x, err = c.coerce(x, t); err != nil {
		return nil, err
	}
	if !at.elem().same(t) {
		if !implicitCast(at.elem(), t) {
			return nil, fmt.Errorf("where clause: cannot compare %s with elements of %s", x.typ(), at)
		}
		arr = &castX{x: arr, to: typ{k: t.k, arr: true, enum: t.enum}}
	}
	return &anyAllNode{op: op, all: all, x: x, arr: arr, t: t}, nil
}

type anyAllNode struct {
	op     cmpOp
	all    bool
	x, arr texpr
	t      typ
}

func (n *anyAllNode) eval(c *evalCtx) tri {
	x, xn := n.x.eval(c)
	a, an := n.arr.eval(c)
	if an {
		return tNull
	}
	if len(a.a.elems) == 0 {
		return triOf(n.all)
	}
	if xn {
		return tNull
	}
	sawNull := false
	for i, e := range a.a.elems {
		if a.a.nulls[i] {
			sawNull = true
			continue
		}
		if n.op.holds(compareTyped(n.t, x, e)) != n.all {
			return triOf(!n.all)
		}
	}
	if sawNull {
		return tNull
	}
	return triOf(n.all)
}

// arrayCtor compiles ARRAY[...] (elem set: the type of a cast around it).
func (c *compiler) arrayCtor(items []*pg.Node, elem typ) (texpr, error) {
	var es []texpr
	for _, it := range items {
		e, err := c.expr(it)
		if err != nil {
			return nil, err
		}
		es = append(es, e)
	}
	if elem.k == kUnknown {
		if len(es) == 0 {
			return nil, fmt.Errorf("where clause: an empty ARRAY[] needs a type: write ARRAY[]::integer[]")
		}
		t, err := commonTypeOf(es, "ARRAY[...]")
		if err != nil {
			return nil, err
		}
		elem = t
	}
	if elem.arr {
		return nil, fmt.Errorf("where clause: nested ARRAY[ARRAY[...]] is not supported; write a literal '{{1,2},{3,4}}'")
	}
	for i := range es {
		var err error
		if es[i], err = c.coerce(es[i], elem); err != nil {
			if x, cerr := c.explicitCast(es[i], castTarget{t: elem}); cerr == nil && len(items) > 0 {
				es[i] = x
				continue
			}
			return nil, err
		}
	}
	t := typ{k: elem.k, arr: true, enum: elem.enum}
	return fold(&opX{args: es, t: t, f: func(_ *evalCtx, v []val, null []bool) (val, bool, error) {
		if len(v) == 0 {
			return val{a: &arrayVal{}}, false, nil
		}
		a := &arrayVal{dims: []int{len(v)}, lbs: []int{1}, elems: append([]val(nil), v...), nulls: append([]bool(nil), null...)}
		return val{a: a}, false, nil
	}})
}

// concatArrays is array || array, array || element, element || array (one-dimensional).
func concatArrays(x, y *arrayVal) (*arrayVal, error) {
	switch {
	case len(x.elems) == 0:
		return y, nil
	case len(y.elems) == 0:
		return x, nil
	}
	// array_cat: equal dimensions concatenate along the first one; an array
	// of one dimension less is appended (or prepended) as one slice.
	var dims, lbs []int
	switch {
	case len(x.dims) == len(y.dims) && slices.Equal(x.dims[1:], y.dims[1:]):
		dims = append([]int{x.dims[0] + y.dims[0]}, x.dims[1:]...)
		lbs = x.lbs
	case len(x.dims) == len(y.dims)+1 && slices.Equal(x.dims[1:], y.dims):
		dims = append([]int{x.dims[0] + 1}, x.dims[1:]...)
		lbs = x.lbs
	case len(y.dims) == len(x.dims)+1 && slices.Equal(y.dims[1:], x.dims):
		dims = append([]int{y.dims[0] + 1}, y.dims[1:]...)
		lbs = append([]int{1}, y.lbs[1:]...)
	default:
		return nil, evalErrorf("cannot concatenate incompatible arrays")
	}
	return &arrayVal{dims: dims, lbs: lbs,
		elems: append(append([]val(nil), x.elems...), y.elems...), nulls: append(append([]bool(nil), x.nulls...), y.nulls...)}, nil
}

func oneElem(v val, null bool) *arrayVal {
	return &arrayVal{dims: []int{1}, lbs: []int{1}, elems: []val{v}, nulls: []bool{null}}
}
