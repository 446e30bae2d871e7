package shapeapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	pg "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"

	"github.com/fanout/pipeline/consumers/wheresql"
	"github.com/fanout/pipeline/fanout"
)

// The statements a where clause and an order_by are parsed in, as Electric
// parses them (its error locations count from their start).
const (
	wherePrefix   = wheresql.Prefix
	orderByPrefix = "SELECT 1 ORDER BY "
)

// atLocation is Electric's wording of a parse error: "At location N:
// <parser message>", N the 0-based position of the error in the whole
// statement (the parser's cursor position, 1-based, minus one).
func atLocation(err error) string {
	var pe *parser.Error
	if errors.As(err, &pe) {
		return fmt.Sprintf("At location %d: %s", max(pe.Cursorpos-1, 0), pe.Message)
	}
	return err.Error()
}

// whereSyntax checks that where parses as `SELECT 1 WHERE <where>`; the
// error is Electric's wording. Type checks against the table come later
// (shapes.Add, or the subset's compile).
func whereSyntax(where string) error {
	if strings.TrimSpace(where) == "" {
		return nil
	}
	parsedWheres.mu.Lock()
	_, ok := parsedWheres.lru.get(where)
	parsedWheres.mu.Unlock()
	if ok {
		return nil
	}
	if _, err := pg.Parse(wherePrefix + where); err != nil {
		return errors.New(atLocation(err))
	}
	parsedWheres.mu.Lock()
	parsedWheres.lru.put(where, struct{}{})
	parsedWheres.mu.Unlock()
	return nil
}

// parsedWheres are where clauses that parse, lately checked: every request
// of a live client sends its clause again (once per change), and parsing
// it each time was a tenth of the API's CPU with 2,000 clients.
var parsedWheres = struct {
	mu  sync.Mutex
	lru *lru[struct{}]
}{lru: newLRU[struct{}](maxCachedShapes)}

// Subset is a subset snapshot request (requestSnapshot and fetchSnapshot in
// the 1.5 client): the shape's rows that also match Where, ordered by
// OrderBy, after skipping Offset, at most Limit, read at one snapshot.
type Subset struct {
	Where  string
	Params []string
	// OrderBy is the order_by as sent; its columns are checked against the
	// table when the shape is known.
	OrderBy string
	Limit   int64 // -1: no limit
	Offset  int64
}

// subsetFields are the fields of a subset: subset__<field> in a GET, the
// bare names (or the subset__ ones) in a POST body.
var subsetFields = []string{"where", "params", "limit", "offset", "order_by"}

const maxSubsetBody = 4 << 20

// parseShapeRequest reads GET /v1/shape, or POST /v1/shape whose JSON body
// holds the subset (the shape's parameters stay in the query string).
func parseShapeRequest(r *http.Request) (*Request, *BadRequest) {
	req, bad := ParseRequest(r.URL.Query())
	if r.Method != http.MethodPost {
		return req, bad
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxSubsetBody))
	if bad == nil {
		bad = &BadRequest{}
	}
	var sub *Subset
	if err != nil {
		bad.addSubset("body", fmt.Sprintf("could not be read (at most %d bytes): %v", maxSubsetBody, err))
	} else {
		var errs map[string][]string
		sub, errs = ParseSubsetBody(body)
		for k, msgs := range errs {
			for _, m := range msgs {
				bad.addSubset(k, m)
			}
		}
	}
	if bad.Errors != nil || bad.Subset != nil {
		return nil, bad
	}
	req.Subset = sub
	return req, nil
}

// ParseSubset reads the subset__* parameters of a GET: nil when there are
// none, else the subset or the errors by field.
func ParseSubset(q url.Values) (*Subset, map[string][]string) {
	raw := map[string]any{}
	for _, f := range subsetFields {
		if v, ok := q["subset__"+f]; ok {
			raw[f] = v[0]
		}
	}
	if len(raw) == 0 {
		return nil, nil
	}
	return newSubset(raw)
}

// ParseSubsetBody reads the JSON body of a POST: {"where":..., "params":
// {"1": ...} or [...], "limit": n, "offset": n, "order_by": ...}. Other
// fields (where_expr, order_by_expr) are ignored.
func ParseSubsetBody(body []byte) (*Subset, map[string][]string) {
	raw := map[string]any{}
	if len(bytes.TrimSpace(body)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			return nil, map[string][]string{"body": {"is not a JSON object: " + err.Error()}}
		}
		for _, f := range subsetFields {
			if v, ok := obj["subset__"+f]; ok {
				raw[f] = v
			}
			if v, ok := obj[f]; ok {
				raw[f] = v
			}
		}
	}
	sub, errs := newSubset(raw)
	if sub == nil && errs == nil {
		sub = &Subset{Limit: -1}
	}
	return sub, errs
}

// newSubset checks what can be checked without the table: the where clause
// and order_by parse, params are numbered strings, limit and offset are
// non-negative integers, and limit or offset come with an order_by.
func newSubset(raw map[string]any) (*Subset, map[string][]string) {
	errs := map[string][]string{}
	add := func(f, msg string) { errs[f] = append(errs[f], msg) }
	sub := &Subset{Limit: -1}
	if v, ok := raw["where"]; ok && v != nil {
		s, isStr := v.(string)
		switch {
		case !isStr:
			add("where", "must be a string")
		case len(s) > maxWhereBytes:
			add("where", fmt.Sprintf("is longer than %d bytes", maxWhereBytes))
		case noNUL(s) != nil:
			add("where", noNUL(s).Error())
		default:
			if err := whereSyntax(s); err != nil {
				add("where", err.Error())
			}
			sub.Where = strings.TrimSpace(s)
		}
	}
	if v, ok := raw["params"]; ok && v != nil {
		p, err := subsetParams(v)
		if err == nil {
			err = paramsText(p)
		}
		if err != nil {
			add("params", err.Error())
		}
		sub.Params = p
	}
	for _, f := range []string{"limit", "offset"} {
		v, ok := raw[f]
		if !ok || v == nil {
			continue
		}
		n, err := nonNegative(v)
		if err != nil {
			add(f, err.Error())
			continue
		}
		if f == "limit" {
			if n == 0 {
				add(f, "must be greater than 0")
				continue
			}
			sub.Limit = n
		} else {
			sub.Offset = n
		}
	}
	if v, ok := raw["order_by"]; ok && v != nil {
		s, isStr := v.(string)
		if !isStr {
			add("order_by", "must be a string")
		} else if len(s) > maxWhereBytes {
			add("order_by", fmt.Sprintf("is longer than %d bytes", maxWhereBytes))
		} else if _, err := parseOrderBy(s); err != nil {
			add("order_by", err.Error())
		} else {
			sub.OrderBy = strings.TrimSpace(s)
		}
	}
	if (raw["limit"] != nil || raw["offset"] != nil) && sub.OrderBy == "" && errs["order_by"] == nil {
		add("order_by", "order_by is required when limit or offset is present")
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return sub, nil
}

// subsetParams reads params as a JSON array or object of strings, or as
// the text of one (a GET's subset__params).
func subsetParams(v any) ([]string, error) {
	if s, ok := v.(string); ok {
		dec := json.NewDecoder(strings.NewReader(s))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("is not a JSON array or object of strings")
		}
	}
	text := func(x any) (string, error) {
		switch x := x.(type) {
		case string:
			return x, nil
		case json.Number:
			return x.String(), nil
		case bool:
			return strconv.FormatBool(x), nil
		}
		return "", fmt.Errorf("values must be strings")
	}
	var out []string
	switch v := v.(type) {
	case []any:
		if len(v) > maxParams {
			return nil, fmt.Errorf("has more than %d values", maxParams)
		}
		for _, x := range v {
			s, err := text(x)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
	case map[string]any:
		if len(v) > maxParams {
			return nil, fmt.Errorf("has more than %d values", maxParams)
		}
		out = make([]string, len(v))
		for k, x := range v {
			n, err := strconv.Atoi(k)
			if err != nil || n < 1 || n > len(v) {
				return nil, fmt.Errorf("must be numbered 1 .. %d without gaps (key %q)", len(v), k)
			}
			s, err := text(x)
			if err != nil {
				return nil, err
			}
			out[n-1] = s
		}
	default:
		return nil, fmt.Errorf("is not a JSON array or object of strings")
	}
	return out, nil
}

func nonNegative(v any) (int64, error) {
	var s string
	switch v := v.(type) {
	case string:
		s = v
	case json.Number:
		s = v.String()
	default:
		return 0, fmt.Errorf("is not an integer")
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("is not an integer")
	}
	if n < 0 {
		return 0, fmt.Errorf("must be greater than or equal to 0")
	}
	return n, nil
}

// orderTerm is one column of an order_by.
type orderTerm struct {
	col   string
	loc   int // 0-based, in SELECT 1 ORDER BY <order_by>
	desc  bool
	nulls pg.SortByNulls
}

// parseOrderBy parses `SELECT 1 ORDER BY <order_by>` and keeps only plain
// column references with ASC or DESC and NULLS FIRST or LAST: nothing of
// the user's text reaches SQL but column names, quoted again.
func parseOrderBy(orderBy string) ([]orderTerm, error) {
	if strings.TrimSpace(orderBy) == "" {
		return nil, nil
	}
	tree, err := pg.Parse(orderByPrefix + orderBy)
	if err != nil {
		return nil, errors.New(atLocation(err))
	}
	if len(tree.Stmts) != 1 {
		return nil, errors.New("Unexpected `;` in order by")
	}
	sel := tree.Stmts[0].GetStmt().GetSelectStmt()
	if sel == nil || len(sel.SortClause) == 0 || sel.WhereClause != nil || sel.Op != pg.SetOperation_SETOP_NONE ||
		len(sel.FromClause) > 0 || len(sel.GroupClause) > 0 || sel.HavingClause != nil || len(sel.WindowClause) > 0 ||
		sel.LimitCount != nil || sel.LimitOffset != nil || len(sel.LockingClause) > 0 || sel.WithClause != nil ||
		len(sel.DistinctClause) > 0 || sel.IntoClause != nil || len(sel.TargetList) != 1 {
		return nil, errors.New("order_by must be a list of columns, each with an optional ASC or DESC and NULLS FIRST or NULLS LAST, and nothing else")
	}
	terms := make([]orderTerm, 0, len(sel.SortClause))
	for _, n := range sel.SortClause {
		sb := n.GetSortBy()
		ref := sb.GetNode().GetColumnRef()
		if ref == nil || len(ref.Fields) != 1 || ref.Fields[0].GetString_() == nil {
			return nil, errors.New("order_by may hold only plain column names (an expression, a qualified name or * is not allowed)")
		}
		if sb.SortbyDir == pg.SortByDir_SORTBY_USING || len(sb.UseOp) > 0 {
			return nil, fmt.Errorf("At location %d: ORDER BY ... USING is not supported; use ASC or DESC", max(sb.Location, 0))
		}
		terms = append(terms, orderTerm{col: ref.Fields[0].GetString_().Sval, loc: int(ref.Location),
			desc: sb.SortbyDir == pg.SortByDir_SORTBY_DESC, nulls: sb.SortbyNulls})
	}
	return terms, nil
}

// orderBySQL is the ORDER BY list of terms over the table's columns, with
// the primary key columns not named appended, so that pages of a limit and
// offset are stable.
func orderBySQL(terms []orderTerm, schema []fanout.Column, pk []string) (string, error) {
	if len(terms) == 0 {
		return "", nil
	}
	names := map[string]bool{}
	for _, c := range schema {
		names[c.Name] = true
	}
	var parts []string
	used := map[string]bool{}
	for _, t := range terms {
		if !names[t.col] {
			return "", fmt.Errorf("At location %d: unknown reference %s", t.loc, quoteIdent(t.col))
		}
		p := pgx.Identifier{t.col}.Sanitize()
		if t.desc {
			p += " DESC"
		} else {
			p += " ASC"
		}
		switch t.nulls {
		case pg.SortByNulls_SORTBY_NULLS_FIRST:
			p += " NULLS FIRST"
		case pg.SortByNulls_SORTBY_NULLS_LAST:
			p += " NULLS LAST"
		}
		parts = append(parts, p)
		used[t.col] = true
	}
	for _, k := range pk {
		if !used[k] {
			parts = append(parts, pgx.Identifier{k}.Sanitize()+" ASC")
		}
	}
	return strings.Join(parts, ", "), nil
}

// subsetSQL is the query of a subset of shape sh: every column of the
// table (the shape's matcher needs them; the projection is applied in Go),
// the shape's where and the subset's both rendered again from their parse
// trees, the subset's $n renumbered after the shape's, and its parameters.
func subsetSQL(sh *fanout.Shape, sub *Subset, orderBy string, types wheresql.TypeNames) (q string, cols []string, params [][]byte, err error) {
	cols = make([]string, len(sh.Schema))
	quoted := make([]string, len(sh.Schema))
	for i, c := range sh.Schema {
		cols[i] = c.Name
		quoted[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	schema, name := fanout.SplitTable(sh.Table)
	q = "SELECT " + strings.Join(quoted, ", ") + " FROM " + pgx.Identifier{schema, name}.Sanitize()
	var conds []string
	if sh.Where != "" {
		w, err := deparseWhere(sh.Where, types)
		if err != nil {
			return "", nil, nil, fmt.Errorf("the shape's where clause: %w", err)
		}
		conds = append(conds, "("+w+")")
	}
	if sub.Where != "" {
		w, err := deparseWhere(sub.Where, types)
		if err == nil {
			w, err = shiftParams(w, len(sh.Params))
		}
		if err != nil {
			return "", nil, nil, err
		}
		conds = append(conds, "("+w+")")
	}
	if len(conds) > 0 {
		q += " WHERE " + strings.Join(conds, " AND ")
	}
	if orderBy != "" {
		q += " ORDER BY " + orderBy
	}
	if sub.Limit >= 0 {
		q += " LIMIT " + strconv.FormatInt(sub.Limit, 10)
	}
	if sub.Offset > 0 {
		q += " OFFSET " + strconv.FormatInt(sub.Offset, 10)
	}
	for _, p := range sh.Params {
		params = append(params, []byte(p))
	}
	for _, p := range sub.Params {
		params = append(params, []byte(p))
	}
	return q, cols, params, nil
}

// deparseWhere is wheresql.Deparse with a parse error in Electric's
// wording (atLocation).
func deparseWhere(where string, types wheresql.TypeNames) (string, error) {
	out, err := wheresql.Deparse(where, types)
	var pe *wheresql.ParseError
	if errors.As(err, &pe) {
		return "", fmt.Errorf("At location %d: %s", pe.Location, pe.Message)
	}
	return out, err
}

// shiftParams renumbers every $n of a printed clause to $(n+by), finding
// them with Postgres's own scanner (a "$1" inside a string literal is no
// parameter and stays).
func shiftParams(sql string, by int) (string, error) {
	if by == 0 {
		return sql, nil
	}
	scan, err := pg.Scan(sql)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	last := 0
	for _, t := range scan.Tokens {
		if t.Token != pg.Token_PARAM {
			continue
		}
		start, end := int(t.Start), int(t.End)
		n, err := strconv.Atoi(sql[start+1 : end])
		if err != nil || sql[start] != '$' {
			return "", fmt.Errorf("parameter %q is not $n", sql[start:end])
		}
		b.WriteString(sql[last:start])
		b.WriteString("$" + strconv.Itoa(n+by))
		last = end
	}
	b.WriteString(sql[last:])
	return b.String(), nil
}
