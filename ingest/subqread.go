package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/visibility"
)

// subqReader runs the Postgres reads that shapes with subqueries need, off
// the router's goroutine: the results of new subqueries (match.LoadRequest)
// and the rows a move-in brings (moveInRead). subqueries.readers of them run
// at once, each on its own connection. Every read is one REPEATABLE READ
// transaction whose snapshot sees exactly a prefix of the commit order (a
// snapshot that still has a committed transaction in progress, such as one
// waiting for a synchronous standby, is retaken), with the WAL insert
// position read right after it: every transaction the snapshot saw commits
// below that position, every one it did not see after the router's last
// transaction it saw. Results go to results, which the service loop hands
// to the router. Nothing here holds WAL: a read is a plain transaction.
type subqReader struct {
	cfg     SubqueryConfig
	pgURL   string
	log     *slog.Logger
	metrics *Metrics

	mu      sync.Mutex
	queue   []subqJob
	wake    chan struct{}
	results chan subqResult
}

// subqJob is one read: a load or a move-in.
type subqJob struct {
	load   *match.LoadRequest
	moveIn *moveInRead
	gen    uint64 // subqueries.gen when asked
}

// moveInRead reads the rows a move-in window brings.
type moveInRead struct {
	w    *moveWindow
	sql  string
	args []string
}

type subqResult struct {
	job    subqJob
	load   match.DepLoad
	rows   []fanout.Row
	snap   visibility.Snapshot
	walLSN pglogrepl.LSN
	err    error
}

func newSubqReader(cfg SubqueryConfig, pgURL string, log *slog.Logger, m *Metrics) *subqReader {
	return &subqReader{cfg: cfg, pgURL: pgURL, log: log.With("component", "subqueries"), metrics: m,
		wake: make(chan struct{}, 1), results: make(chan subqResult, 256)}
}

// submit queues a read; it never blocks.
func (q *subqReader) submit(j subqJob) {
	q.mu.Lock()
	q.queue = append(q.queue, j)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// drop forgets the reads not started yet.
func (q *subqReader) drop() {
	q.mu.Lock()
	clear(q.queue)
	q.queue = q.queue[:0]
	q.mu.Unlock()
}

func (q *subqReader) next() (subqJob, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queue) == 0 {
		return subqJob{}, false
	}
	j := q.queue[0]
	q.queue[0] = subqJob{}
	q.queue = q.queue[1:]
	return j, true
}

// run runs the readers until ctx ends.
func (q *subqReader) run(ctx context.Context) error {
	var wg sync.WaitGroup
	for i := 0; i < q.cfg.Readers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.reader(ctx)
		}()
	}
	wg.Wait()
	return nil
}

func (q *subqReader) reader(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		j, ok := q.next()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
			case <-time.After(time.Second):
			}
			continue
		}
		res := q.read(ctx, &conn, j)
		select {
		case q.results <- res:
		case <-ctx.Done():
			return
		}
		// More work may wait for the next free reader.
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// errNotPrefix: the snapshot still had a committed transaction in progress.
var errNotPrefix = errors.New("the snapshot sees a commit as still in progress")

// read runs j, retrying what may pass (a lost connection, a snapshot that
// is not a prefix of the commit order) until subqueries.read_timeout.
func (q *subqReader) read(ctx context.Context, conn **pgx.Conn, j subqJob) subqResult {
	deadline := time.Now().Add(q.cfg.ReadTimeout)
	backoff := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		res, err := q.attempt(ctx, conn, j)
		if err == nil || ctx.Err() != nil {
			res.job, res.err = j, err
			return res
		}
		var permanent errPermanentRead
		if errors.As(err, &permanent) || time.Now().After(deadline) {
			return subqResult{job: j, err: fmt.Errorf("%w (after %d attempts in subqueries.read_timeout %s)", err, attempt, q.cfg.ReadTimeout)}
		}
		if !errors.Is(err, errNotPrefix) {
			q.log.Warn("subquery read failed; retrying", "attempt", attempt, "err", err, "retry_in", backoff)
			if *conn != nil {
				(*conn).Close(context.Background())
				*conn = nil
			}
		}
		select {
		case <-ctx.Done():
			return subqResult{job: j, err: ctx.Err()}
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// errPermanentRead marks a failure a retry cannot fix (a bad query, too
// many rows).
type errPermanentRead struct{ error }

func (q *subqReader) attempt(ctx context.Context, conn **pgx.Conn, j subqJob) (subqResult, error) {
	if *conn == nil || (*conn).IsClosed() {
		cfg, err := pgx.ParseConfig(q.pgURL)
		if err != nil {
			return subqResult{}, errPermanentRead{fmt.Errorf("postgres.url: %w", err)}
		}
		for k, v := range fanout.TextSettings {
			cfg.RuntimeParams[k] = v
		}
		cfg.RuntimeParams["application_name"] = "fanout-ingest subqueries"
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		c, err := pgx.ConnectConfig(cctx, cfg)
		cancel()
		if err != nil {
			return subqResult{}, fmt.Errorf("connect to Postgres: %w", err)
		}
		*conn = c
	}
	c := *conn
	tx, err := c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return subqResult{}, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if d := q.cfg.StatementTimeout; d > 0 {
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", d.Milliseconds())); err != nil {
			return subqResult{}, err
		}
	}
	var snapText, lsnText string
	// One statement: the snapshot is taken as it starts, the WAL position
	// read during it, so after.
	if err := tx.QueryRow(ctx, "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text").Scan(&snapText, &lsnText); err != nil {
		return subqResult{}, fmt.Errorf("read the snapshot: %w", err)
	}
	snap, err := visibility.Parse(snapText)
	if err != nil {
		return subqResult{}, errPermanentRead{err}
	}
	walLSN, err := pglogrepl.ParseLSN(lsnText)
	if err != nil {
		return subqResult{}, errPermanentRead{err}
	}
	if len(snap.Xip) > 0 {
		var committed int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM pg_snapshot_xip($1::text::pg_snapshot) AS x WHERE pg_xact_status(x) = 'committed'", snap.String()).Scan(&committed); err != nil {
			return subqResult{}, fmt.Errorf("check the snapshot's transactions in progress: %w", err)
		}
		if committed > 0 {
			q.metrics.SubqueryRetakes.Inc()
			return subqResult{}, errNotPrefix
		}
	}
	res := subqResult{snap: snap, walLSN: walLSN}
	switch {
	case j.load != nil:
		res.load = match.DepLoad{Subqueries: j.load.Subqueries, Rows: map[string][]fanout.Row{}, Snapshot: snap, WalLSN: uint64(walLSN)}
		for _, s := range j.load.Subqueries {
			rows, err := readTextRows(ctx, tx, s.LoadSQL(), nil, 0)
			if err != nil {
				return subqResult{}, fmt.Errorf("load subquery %s: %w", s.SQL, err)
			}
			res.load.Rows[s.ID] = rows
		}
		q.metrics.SubqueryLoads.Inc()
	case j.moveIn != nil:
		rows, err := readTextRows(ctx, tx, j.moveIn.sql, j.moveIn.args, q.cfg.MoveInMaxBytes)
		if err != nil {
			return subqResult{}, fmt.Errorf("move-in read for shape %s: %w", j.moveIn.w.handle, err)
		}
		res.rows = rows
		q.metrics.MoveInRows.Add(float64(len(rows)))
	}
	if err := tx.Commit(ctx); err != nil {
		return subqResult{}, fmt.Errorf("end the read: %w", err)
	}
	return res, nil
}

// readTextRows runs sql with text arguments and returns its rows in
// Postgres text form (as pgoutput prints them), by column name; maxBytes
// (0: none) bounds what it holds.
func readTextRows(ctx context.Context, tx pgx.Tx, sql string, args []string, maxBytes int) ([]fanout.Row, error) {
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(a)
	}
	rr := tx.Conn().PgConn().ExecParams(ctx, sql, params, nil, nil, nil)
	var out []fanout.Row
	size := 0
	for rr.NextRow() {
		fields := rr.FieldDescriptions()
		vals := rr.Values()
		row := make(fanout.Row, len(fields))
		for i, f := range fields {
			if vals[i] == nil {
				row[f.Name] = nil
				continue
			}
			v := string(vals[i])
			row[f.Name] = &v
			size += len(v) + len(f.Name)
		}
		out = append(out, row)
		if maxBytes > 0 && size > maxBytes {
			rr.Close()
			return nil, errPermanentRead{fmt.Errorf("the rows read are over subqueries.move_in_max_bytes (%d bytes); raise it for shapes that move this many rows in at once", maxBytes)}
		}
	}
	if _, err := rr.Close(); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "42") || strings.HasPrefix(pe.Code, "22")) {
			return nil, errPermanentRead{err} // the query or the data is wrong: a retry cannot help
		}
		return nil, err
	}
	return out, nil
}
