package match

import (
	"fmt"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// pair compiles the two operands of a comparison and resolves the domain
// they are compared in, as Postgres's operator resolution would.
func (c *compiler) pair(l, r *pg.Node) (operand, operand, error) {
	a, err := c.operand(l)
	if err != nil {
		return operand{}, operand{}, err
	}
	b, err := c.operand(r)
	if err != nil {
		return operand{}, operand{}, err
	}
	return c.bindPair(a, b)
}

// bindPair resolves the domain a and b are compared in and binds both.
func (c *compiler) bindPair(a, b rawOperand) (operand, operand, error) {
	ka, kb := a.kind, b.kind
	switch {
	case ka == kUnknown && kb == kUnknown:
		ka, kb = kText, kText
	case ka == kUnknown:
		ka = kb
	case kb == kUnknown:
		kb = ka
	}
	d, ok := commonDomain(ka, kb)
	if !ok {
		hint := ""
		if a.col != "" && b.col == "" && isString(ka) {
			hint = fmt.Sprintf("; quote the constant: '%s'", b.lit)
		}
		return operand{}, operand{}, fmt.Errorf("where clause: cannot compare %s (%s) with %s (%s)%s", a.desc, ka, b.desc, kb, hint)
	}
	lo, err := c.bindAgainst(a, ka, d, b)
	if err != nil {
		return operand{}, operand{}, err
	}
	ro, err := c.bindAgainst(b, kb, d, a)
	if err != nil {
		return operand{}, operand{}, err
	}
	return lo, ro, nil
}

// inListTypes gives the constants of an IN list the type Postgres gives
// them: with two or more constants it compares x = ANY(ARRAY[...]) in the
// common type of x and the constants (so in `real_col IN (0.1, 0.2)` the
// constants are real), else each item is an ordinary comparison.
func inListTypes(x *rawOperand, list []rawOperand) error {
	consts := []rawOperand{*x}
	for _, it := range list {
		if it.col == "" {
			consts = append(consts, it)
		}
	}
	if len(consts) < 3 {
		return nil
	}
	common := kUnknown
	for _, o := range consts {
		switch {
		case o.kind == kUnknown:
		case common == kUnknown:
			common = o.kind
		default:
			k, ok := widerKind(common, o.kind)
			if !ok {
				return fmt.Errorf("where clause: IN list mixes %s and %s", common, o.kind)
			}
			common = k
		}
	}
	if common == kUnknown {
		common = kText
	}
	if x.col == "" {
		x.kind = common
	}
	for i := range list {
		if list[i].col == "" {
			list[i].kind = common
		}
	}
	return nil
}

// widerKind is Postgres's select_common_type for two kinds of one category:
// the one the other converts to implicitly (text, float8 and timestamptz are
// the preferred types of their categories).
func widerKind(a, b kind) (kind, bool) {
	rank := map[kind]int{kInt2: 1, kInt4: 2, kInt8: 3, kNumeric: 4, kFloat4: 5, kFloat8: 6, kDate: 1, kTimestamp: 2, kTimestamptz: 3}
	switch {
	case a == b:
		return a, true
	case isNumber(a) && isNumber(b), isTemporal(a) && isTemporal(b):
		if rank[b] > rank[a] {
			return b, true
		}
		return a, true
	case isString(a) && isString(b):
		if b == kText {
			return b, true
		}
		return a, true
	}
	return kUnknown, false
}

// bindAgainst is bind with an error that names the other side, so a bad
// constant is reported with the column it was compared with.
func (c *compiler) bindAgainst(x rawOperand, k kind, d domain, other rawOperand) (operand, error) {
	o, err := c.bind(x, k, d)
	if err != nil {
		if other.col != "" {
			return operand{}, fmt.Errorf("where clause: column %q is %s, and constant %s does not convert to it: %v", other.col, other.kind, x.desc, err)
		}
		return operand{}, fmt.Errorf("where clause: constant %s: %v", x.desc, err)
	}
	return o, nil
}

// bind fixes an operand's kind (for an untyped literal) and domain, and
// converts a constant now, so a bad constant fails at Compile.
func (c *compiler) bind(x rawOperand, k kind, d domain) (operand, error) {
	if x.col != "" {
		return operand{col: x.col, kind: x.kind, dom: d}, nil
	}
	o := operand{kind: k, dom: d, cnull: x.null}
	if x.null {
		return o, nil
	}
	v, err := convert(x.lit, k, d)
	if err != nil {
		return operand{}, err
	}
	o.c = v
	return o, nil
}

// rawOperand is a column or a constant before its comparison domain is known.
type rawOperand struct {
	t    typ    // a column's full type
	col  string // set for a column
	kind kind   // kUnknown: a quoted literal or NULL, typed by the other side
	lit  string // a constant's text
	null bool
	desc string // for error messages: column "x" / constant 'abc'
}

func (c *compiler) operand(n *pg.Node) (rawOperand, error) {
	switch {
	case n.GetColumnRef() != nil:
		return c.column(n.GetColumnRef())
	case n.GetAConst() != nil:
		return constant(n.GetAConst())
	case n.GetTypeCast() != nil:
		return c.cast(n.GetTypeCast())
	case n.GetParamRef() != nil:
		lit, err := c.param(n.GetParamRef().Number)
		if err != nil {
			return rawOperand{}, err
		}
		return rawOperand{kind: kUnknown, lit: lit, desc: fmt.Sprintf("$%d (%s)", n.GetParamRef().Number, quote(lit))}, nil
	case n.GetAExpr() != nil:
		e := n.GetAExpr()
		if e.Kind == pg.A_Expr_Kind_AEXPR_OP && e.Lexpr == nil && opName(e) == "-" {
			x, err := c.operand(e.Rexpr)
			if err != nil {
				return rawOperand{}, err
			}
			if x.col != "" || !(isNumber(x.kind) || x.kind == kUnknown) || x.null {
				return rawOperand{}, fmt.Errorf("where clause: unary minus is supported on numeric constants only, not on %s", x.desc)
			}
			x.lit = negate(x.lit)
			x.desc = "-" + x.desc
			return x, nil
		}
		return rawOperand{}, fmt.Errorf("where clause: comparison operands must be a column or a constant; operator %q is not supported there", opName(e))
	case n.GetBoolExpr() != nil, n.GetNullTest() != nil, n.GetBooleanTest() != nil:
		return rawOperand{}, fmt.Errorf("where clause: comparison operands must be a column or a constant, not a boolean expression")
	}
	return rawOperand{}, unsupported(n)
}

func negate(lit string) string {
	lit = strings.TrimSpace(lit)
	if strings.HasPrefix(lit, "-") {
		return lit[1:]
	}
	return "-" + strings.TrimPrefix(lit, "+")
}

func (c *compiler) column(ref *pg.ColumnRef) (rawOperand, error) {
	var parts []string
	for _, f := range ref.Fields {
		if f.GetAStar() != nil {
			return rawOperand{}, fmt.Errorf("where clause: * is not a column")
		}
		parts = append(parts, f.GetString_().GetSval())
	}
	name := strings.Join(parts, ".")
	if len(parts) == 2 && c.qualifiers[parts[0]] {
		parts = parts[1:] // a subquery's column, qualified by its table or alias
		name = parts[0]
	}
	if len(parts) != 1 {
		if c.depth > 0 {
			return rawOperand{}, fmt.Errorf("where clause: column reference %s: a subquery reads only its own table's columns (a correlated subquery, reading the outer table, is not supported)", name)
		}
		return rawOperand{}, fmt.Errorf("where clause: column reference %s: write the bare column name, without a table or schema", name)
	}
	col, ok := c.cols[name]
	if !ok {
		return rawOperand{}, fmt.Errorf("where clause: column %q does not exist; the table's columns are: %s", name, strings.Join(c.names, ", "))
	}
	t, ok := typeOfColumn(col)
	if !ok {
		return rawOperand{}, fmt.Errorf("where clause: column %q has type %s, which where clauses do not support (supported: %s)", name, col.Type, supportedTypes)
	}
	c.used[name] = true
	c.refs++
	return rawOperand{t: t, col: name, kind: t.k, desc: fmt.Sprintf("column %q", name)}, nil
}

func constant(a *pg.A_Const) (rawOperand, error) {
	switch {
	case a.Isnull:
		return rawOperand{kind: kUnknown, null: true, desc: "NULL"}, nil
	case a.GetIval() != nil:
		s := strconv.FormatInt(int64(a.GetIval().Ival), 10)
		return rawOperand{kind: kInt4, lit: s, desc: s}, nil
	case a.GetFval() != nil:
		// The parser hands integers too big for int4 over as Float: Postgres
		// types them int8 when they fit, else numeric.
		s := a.GetFval().Fval
		if _, err := strconv.ParseInt(s, 10, 64); err == nil {
			return rawOperand{kind: kInt8, lit: s, desc: s}, nil
		}
		return rawOperand{kind: kNumeric, lit: s, desc: s}, nil
	case a.GetBoolval() != nil:
		s := strconv.FormatBool(a.GetBoolval().Boolval)
		return rawOperand{kind: kBool, lit: s, desc: s}, nil
	case a.GetSval() != nil:
		s := a.GetSval().Sval
		return rawOperand{kind: kUnknown, lit: s, desc: quote(s)}, nil
	}
	return rawOperand{}, fmt.Errorf("where clause: bit-string constants are not supported")
}

// cast handles constant::type; casting a column is not supported.
func (c *compiler) cast(t *pg.TypeCast) (rawOperand, error) {
	var names []string
	for _, n := range t.TypeName.GetNames() {
		names = append(names, n.GetString_().GetSval())
	}
	tname := strings.Join(names, ".")
	if len(names) > 0 {
		tname = names[len(names)-1]
	}
	if len(t.TypeName.GetTypmods()) > 0 || len(t.TypeName.GetArrayBounds()) > 0 {
		return rawOperand{}, fmt.Errorf("where clause: casts with type modifiers or arrays (::%s(...) or ::%s[]) are not supported; cast to plain %s", tname, tname, tname)
	}
	k, ok := kindOfTypeName(tname)
	if !ok {
		return rawOperand{}, fmt.Errorf("where clause: cast to type %s is not supported (supported: %s)", tname, supportedTypes)
	}
	x, err := c.operand(t.Arg)
	if err != nil {
		return rawOperand{}, err
	}
	if x.col != "" {
		return rawOperand{}, fmt.Errorf("where clause: casting %s is not supported; compare the column with a constant of its own type", x.desc)
	}
	desc := x.desc + "::" + tname
	if x.null {
		return rawOperand{kind: k, null: true, desc: desc}, nil
	}
	if _, err := convert(x.lit, k, domainOf(k)); err != nil {
		return rawOperand{}, fmt.Errorf("where clause: cannot cast %s to %s: %v", x.desc, k, err)
	}
	return rawOperand{kind: k, lit: x.lit, desc: desc}, nil
}

// domainOf is the domain a kind is compared in against its own kind.
func domainOf(k kind) domain {
	d, _ := commonDomain(k, k)
	return d
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// simple reports whether n is what the operand path compiles exactly: a
// column of a scalar type it knows, a constant, a parameter, a negated number,
// or a constant cast to such a type without modifiers.
func (c *compiler) simple(n *pg.Node) bool {
	switch {
	case n.GetColumnRef() != nil:
		ref := n.GetColumnRef()
		fields := ref.Fields
		if len(fields) == 2 && fields[0].GetString_() != nil && c.qualifiers[fields[0].GetString_().GetSval()] {
			fields = fields[1:]
		}
		if len(fields) != 1 || fields[0].GetString_() == nil {
			return true // the operand path reports the error
		}
		col, ok := c.cols[fields[0].GetString_().GetSval()]
		if !ok {
			return true
		}
		t, ok := typeOfColumn(col)
		return !ok || (!t.arr && oldKind(t.k))
	case n.GetAConst() != nil, n.GetParamRef() != nil:
		return true
	case n.GetTypeCast() != nil:
		t := n.GetTypeCast()
		names := t.TypeName.GetNames()
		if len(names) == 0 || len(t.TypeName.GetTypmods()) > 0 || len(t.TypeName.GetArrayBounds()) > 0 {
			return false
		}
		k, ok := kindOfTypeName(names[len(names)-1].GetString_().GetSval())
		if !ok || !oldKind(k) || k == kBpchar {
			return false
		}
		// The operand path reads the constant's text as the target type:
		// exact for quoted literals and NULL, and for numbers into a type
		// that reads their text unchanged (1.5::int rounds: not here).
		if a := t.Arg.GetAConst(); a != nil {
			switch {
			case a.GetSval() != nil, a.Isnull:
				return true
			case a.GetIval() != nil:
				return isNumber(k)
			case a.GetFval() != nil:
				return k == kNumeric || isFloat(k)
			}
			return false
		}
		return t.Arg.GetParamRef() != nil
	case n.GetAExpr() != nil:
		e := n.GetAExpr()
		return e.Kind == pg.A_Expr_Kind_AEXPR_OP && e.Lexpr == nil && opName(e) == "-" && e.Rexpr.GetAConst() != nil && e.Rexpr.GetAConst().GetSval() == nil
	}
	return false
}
