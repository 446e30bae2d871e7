package shapeapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	pg "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"

	"github.com/fanout/pipeline/consumers/pgpool"
	"github.com/fanout/pipeline/consumers/wheresql"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/visibility"
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
		default:
			if err := whereSyntax(s); err != nil {
				add("where", err.Error())
			}
			sub.Where = strings.TrimSpace(s)
		}
	}
	if v, ok := raw["params"]; ok && v != nil {
		p, err := subsetParams(v)
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
func subsetSQL(sh *fanout.Shape, sub *Subset, orderBy string) (q string, cols []string, params [][]byte, err error) {
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
		w, err := deparseWhere(sh.Where)
		if err != nil {
			return "", nil, nil, fmt.Errorf("the shape's where clause: %w", err)
		}
		conds = append(conds, "("+w+")")
	}
	if sub.Where != "" {
		w, err := deparseWhere(sub.Where)
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
func deparseWhere(where string) (string, error) {
	out, err := wheresql.Deparse(where)
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

// Subset reads are bounded: at most subsetConnections at once (others wait
// up to subsetWait, then 503), each statement at most subsetTimeout.
const (
	subsetConnections = 4
	subsetWait        = 10 * time.Second
	subsetTimeout     = 60 * time.Second
	// subsetBuffered bytes are gathered before the response starts: a
	// smaller answer has its length and a failure is still a clean error.
	subsetBuffered = 1 << 20
)

// subsetConns are the connections of subset reads, with the snapshot
// reads' text settings (fanout.TextSettings), so a value prints as it does
// in the shape's log; apart from the API's other connection, so a long
// read delays no shape registration.
type subsetConns struct {
	pool *pgpool.Pool
	err  error // postgres.url does not parse: every read fails with it
}

func newSubsetConns(url string) *subsetConns {
	pool, err := pgpool.New(pgpool.Config{URL: url, Size: subsetConnections, Settings: fanout.TextSettings,
		Name: "fanout-shapeapi-subset", Purpose: "a subset snapshot", Wait: subsetWait, ConnectTimeout: 10 * time.Second,
		// A restarting Postgres is waited for (then 503: the client retries).
		Reconnect: subsetWait, ReconnectKey: "a subset read's fixed bound"})
	return &subsetConns{pool: pool, err: err}
}

func (p *subsetConns) close() {
	if p.pool != nil {
		p.pool.Close()
	}
}

// subsetMeta is the metadata of a subset response: the snapshot of the
// read and the WAL position then, by which the client drops the streamed
// changes the rows already hold.
type subsetMeta struct {
	Xmin         string   `json:"xmin"`
	Xmax         string   `json:"xmax"`
	XipList      []string `json:"xip_list"`
	SnapshotMark int32    `json:"snapshot_mark"`
	DatabaseLSN  string   `json:"database_lsn"`
}

// read runs q in one REPEATABLE READ READ ONLY transaction whose first
// statement reads pg_current_snapshot() and pg_current_wal_lsn(), so the
// metadata is that of the rows; meta is called before the first row.
func (p *subsetConns) read(ctx context.Context, q string, params [][]byte, meta func(visibility.Snapshot, pglogrepl.LSN) error, row func([][]byte) error) error {
	if p.err != nil {
		return p.err
	}
	conn, tx, err := p.pool.Begin(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("%w: begin the subset transaction: %v", errNotReady, err)
	}
	defer p.pool.Release(conn)
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", subsetTimeout.Milliseconds()), pgx.QueryExecModeSimpleProtocol); err != nil {
		return fmt.Errorf("%w: %v", errNotReady, err)
	}
	var snapText, lsnText string
	if err := tx.QueryRow(ctx, "SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text").Scan(&snapText, &lsnText); err != nil {
		return fmt.Errorf("%w: read pg_current_snapshot() and pg_current_wal_lsn(): %v", errNotReady, err)
	}
	snap, err := visibility.Parse(snapText)
	if err != nil {
		return err
	}
	lsn, err := pglogrepl.ParseLSN(lsnText)
	if err != nil {
		return fmt.Errorf("pg_current_wal_lsn() %q: %w", lsnText, err)
	}
	if err := meta(snap, lsn); err != nil {
		return err
	}
	rr := conn.PgConn().ExecParams(ctx, q, params, nil, nil, nil)
	for rr.NextRow() {
		if err := row(rr.Values()); err != nil {
			rr.Close()
			return err
		}
	}
	if _, err := rr.Close(); err != nil {
		return subsetQueryError(err)
	}
	return tx.Commit(ctx)
}

// subsetQueryError makes a query failure the request's fault (400 on the
// subset's where) when Postgres says the data or the statement is wrong.
func subsetQueryError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "42")) {
		bad := &BadRequest{}
		bad.addSubset("where", pgErr.Message)
		return bad
	}
	return fmt.Errorf("subset query: %w", err)
}

// serveSubset answers a subset request of shape v:
// {"metadata":{...},"data":[rows]} with electric-snapshot: true. A row is
// in the answer when the shape holds it (its where, by the matcher, as the
// log decides) and it matches the subset's where; its values are the
// shape's columns. electric-offset is the request's offset, so the client
// resumes its stream where it was; for a request from -1 (or now), the end
// of the log as it was before the read, so nothing committed after the
// snapshot is skipped.
func (s *Server) serveSubset(ctx context.Context, w http.ResponseWriter, req *Request, v *shapeView) {
	sh, sub := v.shape, req.Subset
	bad := &BadRequest{}
	if _, err := match.CompileParams(sub.Where, sub.Params, sh.Schema); err != nil {
		bad.addSubset("where", err.Error())
	}
	terms, err := parseOrderBy(sub.OrderBy)
	if err != nil {
		bad.addSubset("order_by", err.Error())
	}
	orderBy, err := orderBySQL(terms, sh.Schema, sh.PrimaryKey)
	if err != nil {
		bad.addSubset("order_by", err.Error())
	}
	if bad.Subset != nil {
		s.badRequest(w, bad)
		return
	}
	pred, err := match.CompileParams(sh.Where, sh.Params, sh.Schema)
	if err != nil {
		s.fail(w, fmt.Errorf("shape %s: %w", sh.Handle, err))
		return
	}
	q, cols, params, err := subsetSQL(sh, sub, orderBy)
	if err != nil {
		s.fail(w, err)
		return
	}
	off := req.Offset
	if req.Offset.Start || req.Now {
		end, err := s.index(sh.Handle).extend(s.cfg.Storage.Dir, sh.Handle, v.rel, v.seen())
		if err != nil {
			s.fail(w, err)
			return
		}
		off = Offset{}
		if last, ok := end.Last(); ok {
			off = LastOp(last)
		}
	}
	mark := rand.Int32N(math.MaxInt32)
	headers := subsetHeaders(v.rel, mark)
	h := w.Header()
	h.Set("electric-snapshot", "true")
	h.Set("electric-offset", off.String())
	h.Set("electric-schema", v.schema)
	h.Set("cache-control", "no-cache")

	var buf []byte
	started := false
	flush := func() error {
		if !started {
			h.Set("content-type", "application/json")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		_, err := w.Write(buf)
		buf = buf[:0]
		return err
	}
	full := make(fanout.Row, len(cols))
	out := make(fanout.Row, len(v.rel.Columns))
	n := 0
	err = s.subsets.read(ctx, q, params, func(snap visibility.Snapshot, lsn pglogrepl.LSN) error {
		m := subsetMeta{Xmin: strconv.FormatUint(snap.Xmin, 10), Xmax: strconv.FormatUint(snap.Xmax, 10), XipList: []string{},
			SnapshotMark: mark, DatabaseLSN: strconv.FormatUint(uint64(lsn), 10)}
		for _, x := range snap.Xip {
			m.XipList = append(m.XipList, strconv.FormatUint(x, 10))
		}
		b, _ := json.Marshal(m)
		buf = append(append(append(buf, `{"metadata":`...), b...), `,"data":[`...)
		return nil
	}, func(vals [][]byte) error {
		for i, c := range cols {
			if vals[i] == nil {
				full[c] = nil
			} else {
				s := string(vals[i])
				full[c] = &s
			}
		}
		if !pred.Eval(full) {
			return nil // the shape's membership is the matcher's, as in its log
		}
		clear(out)
		for _, c := range v.rel.Columns {
			out[c] = full[c]
		}
		if n > 0 {
			buf = append(buf, ',')
		}
		n++
		buf = appendMessage(buf, v.rel, out, headers)
		if len(buf) >= subsetBuffered {
			return flush()
		}
		return nil
	})
	if err != nil {
		if !started {
			h.Del("electric-snapshot")
			h.Del("electric-offset")
			h.Del("electric-schema")
			s.fail(w, err)
			return
		}
		// The status is sent: cut the connection, so the client sees a
		// failed request rather than a short answer.
		s.log.Error("subset snapshot failed while streaming", "shape", sh.Handle, "err", err)
		panic(http.ErrAbortHandler)
	}
	buf = append(buf, "]}"...)
	if !started {
		writeJSON(w, http.StatusOK, buf)
		return
	}
	flush()
}

// subsetHeaders is the headers object of every row of a subset response.
func subsetHeaders(rel Relation, mark int32) []byte {
	b := snapshotHeaders(rel)
	b = append(b[:len(b)-1], `,"snapshot_mark":`...)
	b = strconv.AppendInt(b, int64(mark), 10)
	return append(b, '}')
}
