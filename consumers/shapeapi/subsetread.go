package shapeapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/consumers/pgpool"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/visibility"
)

// Subset reads are bounded: at most api.max_subset_requests are admitted
// (admission.go), which wait up to subsetWait for one of the
// api.subset_connections connections (then 503 with retry-after); each
// statement runs at most api.subset_timeout.
const (
	subsetWait = 10 * time.Second
	// subsetBuffered bytes are gathered before the response starts: a
	// smaller answer has its length and a failure is still a clean error.
	subsetBuffered = 1 << 20
)

// subsetConns are the connections of subset reads, with the snapshot
// reads' text settings (fanout.TextSettings), so a value prints as it does
// in the shape's log, and pgpool's fixed search_path; apart from the API's
// other connection, so a long read delays no shape registration.
type subsetConns struct {
	pool    *pgpool.Pool
	err     error // postgres.url does not parse: every read fails with it
	size    int
	timeout time.Duration // api.subset_timeout
	retry   time.Duration // api.retry_after
}

func newSubsetConns(url string, size int, timeout, retry time.Duration) *subsetConns {
	pool, err := pgpool.New(pgpool.Config{URL: url, Size: size, Settings: fanout.TextSettings,
		Name: "fanout-shapeapi-subset", Purpose: "a subset snapshot", ConnectTimeout: 10 * time.Second})
	return &subsetConns{pool: pool, err: err, size: size, timeout: timeout, retry: retry}
}

// acquire returns a connection; when all stay busy for subsetWait, an
// overloaded error (503 with retry-after); when Postgres cannot be
// reached, errNotReady (503).
func (p *subsetConns) acquire(ctx context.Context) (*pgx.Conn, error) {
	if p.err != nil {
		return nil, p.err
	}
	wctx, cancel := context.WithTimeout(ctx, subsetWait)
	defer cancel()
	c, err := p.pool.Acquire(wctx)
	switch {
	case err == nil:
		return c, nil
	case ctx.Err() == nil && wctx.Err() != nil:
		return nil, &overloaded{what: "subset reads waiting for a Postgres connection", limit: p.size, key: "api.subset_connections", retryAfter: p.retry}
	}
	return nil, fmt.Errorf("%w: %v", errNotReady, err)
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

// begin acquires a connection (acquire) and begins the read's
// transaction; a connection that breaks as it begins (Postgres restarted:
// pgpool.IsConnectionError) is replaced, with backoff, for up to subsetWait.
func (p *subsetConns) begin(ctx context.Context) (*pgx.Conn, pgx.Tx, error) {
	deadline := time.Now().Add(subsetWait)
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		conn, err := p.acquire(ctx)
		if err != nil {
			return nil, nil, err
		}
		tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err == nil {
			return conn, tx, nil
		}
		p.pool.Release(conn)
		if !pgpool.IsConnectionError(err) || time.Now().Add(backoff).After(deadline) {
			return nil, nil, fmt.Errorf("%w: begin the subset transaction: %v", errNotReady, err)
		}
		if !sleep(ctx, backoff) {
			return nil, nil, ctx.Err()
		}
	}
}

// read runs q in one REPEATABLE READ READ ONLY transaction whose first
// statement reads pg_current_snapshot() and pg_current_wal_lsn(), so the
// metadata is that of the rows; meta is called before the first row, then
// prepare (if not nil) in the same transaction. When row fails (the client
// went away or stopped reading: a write passed its deadline), the query is
// cancelled and its connection closed, so the backend does not wait in
// ClientWrite holding its snapshot.
func (p *subsetConns) read(ctx context.Context, q string, params [][]byte, meta func(visibility.Snapshot, pglogrepl.LSN) error, prepare func(conn *pgconn.PgConn) error, row func([][]byte) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conn, tx, err := p.begin(ctx)
	if err != nil {
		return err
	}
	defer p.pool.Release(conn)
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", p.timeout.Milliseconds()), pgx.QueryExecModeSimpleProtocol); err != nil {
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
	if prepare != nil {
		if err := prepare(conn.PgConn()); err != nil {
			return err
		}
	}
	rr := conn.PgConn().ExecParams(ctx, q, params, nil, nil, nil)
	for rr.NextRow() {
		if err := row(rr.Values()); err != nil {
			cancel() // closes the connection rather than read the rest
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
// subset's where) when Postgres says the data or the statement is wrong. A
// data error (class 22) is named by its SQLSTATE only: its message may
// quote a value of a row the client is not served.
func subsetQueryError(err error) error {
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22"):
		bad := &BadRequest{}
		bad.addSubset("where", dataErrorMessage(pgErr.Code))
		return bad
	case errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "42"):
		bad := &BadRequest{}
		bad.addSubset("where", pgErr.Message)
		return bad
	}
	return fmt.Errorf("subset query: %w", err)
}

// dataErrorMessage is the 400 text of a data error Postgres raised on a
// row of the table (SQLSTATE class 22), without its message.
func dataErrorMessage(code string) string {
	return fmt.Sprintf("Postgres cannot evaluate this where clause on a row of the table (SQLSTATE %s, e.g. a division by zero or a value a cast cannot read)", code)
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
	if err := s.vetWhere(sub.Where, sub.Params); err != nil {
		bad.addSubset("where", err.Error())
	} else if _, err := match.CompileParams(sub.Where, sub.Params, sh.Schema); err != nil {
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
	pred, err := match.CompileShape(sh)
	if err != nil {
		s.fail(w, fmt.Errorf("shape %s: %w", sh.Handle, err))
		return
	}
	types, err := s.enumTypes(ctx, sh)
	if err != nil {
		s.fail(w, err)
		return
	}
	q, cols, params, err := subsetSQL(sh, sub, orderBy, types)
	if err != nil {
		s.fail(w, err)
		return
	}
	off := req.Offset
	if req.Offset.Start || req.Now {
		end, err := s.index(sh.Handle).extend(v.chain, v.rel, v.seen())
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
	// A shape with subqueries: their results as of the subset's snapshot,
	// read in its transaction.
	var res match.Results
	var prepare func(conn *pgconn.PgConn) error
	if pred.HasSubqueries() {
		prepare = func(conn *pgconn.PgConn) error {
			var err error
			res, err = match.BuildResults(pred, func(sq *match.Subquery) ([]fanout.Row, error) {
				return pgpool.TextRows(ctx, conn, sq.LoadSQL())
			})
			return err
		}
	}
	err = s.subsets.read(ctx, q, params, func(snap visibility.Snapshot, lsn pglogrepl.LSN) error {
		m := subsetMeta{Xmin: strconv.FormatUint(snap.Xmin, 10), Xmax: strconv.FormatUint(snap.Xmax, 10), XipList: []string{},
			SnapshotMark: mark, DatabaseLSN: strconv.FormatUint(uint64(lsn), 10)}
		for _, x := range snap.Xip {
			m.XipList = append(m.XipList, strconv.FormatUint(x, 10))
		}
		b, _ := json.Marshal(m)
		buf = append(append(append(buf, `{"metadata":`...), b...), `,"data":[`...)
		return nil
	}, prepare, func(vals [][]byte) error {
		for i, c := range cols {
			if vals[i] == nil {
				full[c] = nil
			} else {
				s := string(vals[i])
				full[c] = &s
			}
		}
		if ok, _ := pred.EvalWith(full, res); !ok {
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
		if res != nil { // a shape with subqueries: tags and active conditions per row
			buf = appendMessage(buf, v.rel, out, withRowMeta(append([]byte(nil), headers...),
				&fanout.Change{Tags: pred.Tags(sh.Handle, full), Active: pred.Active(full, res)}))
		} else {
			buf = appendMessage(buf, v.rel, out, headers)
		}
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
