package shapeapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/consumers/pgpool"
	"github.com/fanout/pipeline/consumers/wheresql"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/shapes"
)

// What a client may define: a table of the publication (shapes.CheckServed),
// a definition within api.max_definition_bytes, a where clause within the
// api.max_where_* budget, and a snapshot query Postgres accepts (prepared,
// as the snapshot runs it, before the shape is registered).

// budget is the where-clause budget of the api.max_where_* keys.
func (s *Server) budget() match.Budget {
	a := s.cfg.API
	return match.Budget{MaxNodes: a.MaxWhereNodes, MaxDepth: a.MaxWhereDepth, MaxFunctions: a.MaxWhereFunctions, MaxListItems: a.MaxWhereListItems}
}

// budgetKeys name the config key of each match.BudgetLimit.
var budgetKeys = map[match.BudgetLimit]string{
	match.LimitNodes: "api.max_where_nodes", match.LimitDepth: "api.max_where_depth",
	match.LimitFunctions: "api.max_where_functions", match.LimitListItems: "api.max_where_list_items",
}

// vetWhere checks a clause (a shape's or a subset's) against the budget and
// the schemas it may name; the error is the 400's text.
func (s *Server) vetWhere(where string, params []string) error {
	if n := len(where) + paramBytes(params); n > s.cfg.API.MaxDefinitionBytes {
		return fmt.Errorf("the where clause and its params are %d bytes, over the limit of %d (config key api.max_definition_bytes)", n, s.cfg.API.MaxDefinitionBytes)
	}
	err := match.Vet(where, params, s.budget())
	var be *match.BudgetError
	if errors.As(err, &be) {
		return fmt.Errorf("%v (config key %s)", err, budgetKeys[be.Limit])
	}
	return err
}

// vetDefinition bounds a definition's size and its clause's cost before
// anything is looked up for it.
func (s *Server) vetDefinition(def Definition) error {
	size := len(def.Schema) + len(def.Table) + len(def.Where) + paramBytes(def.Params)
	for _, c := range def.Columns {
		size += len(c)
	}
	if size > s.cfg.API.MaxDefinitionBytes {
		param := "where"
		if paramBytes(def.Params) > len(def.Where) {
			param = "params"
		}
		return Invalid(param, fmt.Sprintf("the definition (table, where, params and columns) is %d bytes, over the limit of %d (config key api.max_definition_bytes)",
			size, s.cfg.API.MaxDefinitionBytes))
	}
	if err := s.vetWhere(def.Where, def.Params); err != nil {
		return Invalid("where", err.Error())
	}
	return nil
}

func paramBytes(params []string) int {
	n := 0
	for _, p := range params {
		n += len(p)
	}
	return n
}

// validateInPostgres is the shapes.Add check of an API shape: its table is
// served, and Postgres prepares its snapshot query as the snapshot runs it
// (search_path pg_catalog, enum casts qualified), so a clause the matcher
// accepts but Postgres does not (an operator it resolves otherwise, a type
// it cannot cast) is a 400 now rather than a snapshot that fails.
func (s *Server) validateInPostgres(ctx context.Context, conn *pgx.Conn, sh *fanout.Shape) error {
	schema, table := fanout.SplitTable(sh.Table)
	if err := shapes.CheckServed(ctx, conn, s.cfg.Postgres.Publication, schema, table, s.cfg.API.Tables); err != nil {
		return err
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("%w: validate the snapshot query: %v", errNotReady, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	simple := pgx.QueryExecModeSimpleProtocol
	if _, err := tx.Exec(ctx, "SET LOCAL search_path = "+pgpool.SearchPath+"; SET LOCAL statement_timeout = 10000", simple); err != nil {
		return fmt.Errorf("%w: validate the snapshot query: %v", errNotReady, err)
	}
	// Postgres checks privileges when a query runs, not when it is
	// prepared: a table the role may not read would fail every snapshot.
	var readable bool
	if err := conn.QueryRow(ctx, "SELECT pg_catalog.has_table_privilege(pg_catalog.format('%I.%I', $1::text, $2::text), 'SELECT')", schema, table).Scan(&readable); err != nil {
		return fmt.Errorf("%w: validate the snapshot query: %v", errNotReady, err)
	}
	if !readable {
		return Invalid("table", fmt.Sprintf("the shape API's Postgres role may not read %s (GRANT SELECT on it to the role of postgres.url)", sh.Table))
	}
	types, err := wheresql.EnumTypes(ctx, conn, sh.Schema)
	if err != nil {
		return fmt.Errorf("%w: %v", errNotReady, err)
	}
	q, _, err := wheresql.Select(sh, types)
	if err != nil {
		return Invalid("where", err.Error())
	}
	if _, err := conn.Prepare(ctx, "", q); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "42") || strings.HasPrefix(pgErr.Code, "22")) {
			return Invalid("where", "Postgres refuses the shape's query: "+pgErr.Message)
		}
		return fmt.Errorf("%w: validate the snapshot query: %v", errNotReady, err)
	}
	return nil
}

// enumTypes are the qualified enum types of sh's table, for its subset
// queries (pgpool's search_path is pg_catalog only).
func (s *Server) enumTypes(ctx context.Context, sh *fanout.Shape) (wheresql.TypeNames, error) {
	enums := false
	for _, c := range sh.Schema {
		enums = enums || c.Enum != nil
	}
	if !enums {
		return nil, nil
	}
	var types wheresql.TypeNames
	err := s.pg.with(ctx, func(conn *pgx.Conn) error {
		var err error
		types, err = wheresql.EnumTypes(ctx, conn, sh.Schema)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotReady, err)
	}
	return types, nil
}

// servedTables caches, per table, whether it may be served, so that the
// rule is applied to every request (a shape registered before a table left
// the publication or api.tables) at one query per table per servedTTL.
type servedTables struct {
	mu   sync.Mutex
	seen map[string]servedEntry
}

type servedEntry struct {
	err error // nil: served
	at  time.Time
}

// servedTTL is how long a table's answer is reused.
const servedTTL = 30 * time.Second

// servedTablesKept bounds the cache; past it, it starts again.
const servedTablesKept = 10_000

// checkTable applies the table rule to def's table: a BadRequest on
// "table" when it may not be served.
func (s *Server) checkTable(ctx context.Context, def Definition) error {
	if err := shapes.TableAllowed(def.Schema, def.Table, s.cfg.API.Tables); err != nil {
		return Invalid("table", err.Error())
	}
	key := def.Qualified()
	st := s.served
	st.mu.Lock()
	e, ok := st.seen[key]
	st.mu.Unlock()
	if !ok || time.Since(e.at) > servedTTL {
		err := s.pg.with(ctx, func(conn *pgx.Conn) error {
			return shapes.CheckServed(ctx, conn, s.cfg.Postgres.Publication, def.Schema, def.Table, s.cfg.API.Tables)
		})
		if err != nil && !errors.Is(err, shapes.ErrTableNotServed) {
			return fmt.Errorf("%w: %v", errNotReady, err) // not cached: Postgres or the publication is not there yet
		}
		e = servedEntry{err: err, at: time.Now()}
		st.mu.Lock()
		if len(st.seen) >= servedTablesKept {
			clear(st.seen)
		}
		st.seen[key] = e
		st.mu.Unlock()
	}
	if e.err != nil {
		return Invalid("table", e.err.Error())
	}
	return nil
}

// admitNewShape is the admission of a request that registers a new shape:
// its definition within its bounds, a slot among api.max_new_shape_requests,
// fewer than api.max_pending_snapshots snapshots pending, and room under
// api.max_shapes (the least recently read API shape expires to make it).
// done(handle) frees the slot once the shape is registered (handle) or not
// ("").
func (s *Server) admitNewShape(ctx context.Context, def Definition) (done func(handle string), err error) {
	if err := s.vetDefinition(def); err != nil {
		return nil, err
	}
	release, refused := s.admit.newShapes.enter()
	if refused != nil {
		return nil, refused
	}
	// Reserved with the check: concurrent registrations cannot all pass it.
	registered, ok := s.snapWatch.reserve(s.cfg.API.MaxPendingSnapshots)
	if !ok {
		release()
		return nil, &overloaded{what: "shapes waiting for their initial snapshot", limit: s.cfg.API.MaxPendingSnapshots,
			key: "api.max_pending_snapshots", retryAfter: s.cfg.API.RetryAfter}
	}
	if !s.life.makeRoom(ctx) {
		registered("")
		release()
		return nil, &overloaded{what: "API shapes, every one being read,", limit: s.cfg.API.MaxShapes, key: "api.max_shapes", retryAfter: s.cfg.API.RetryAfter}
	}
	return func(handle string) {
		registered(handle)
		release()
	}, nil
}

// refusedByPostgres answers a definition whose snapshot Postgres refused on
// the table's rows (a data error): its shape and definition are removed,
// so the definition can be tried again once the rows change, and the
// client gets a 400 naming the SQLSTATE (not the message: it may quote a
// row's value).
func (s *Server) refusedByPostgres(ctx context.Context, handle, code string) error {
	if s.shapes.exists(ctx, handle) {
		if err := shapes.Remove(ctx, s.bus, handle, shapes.WithRemoveLog(s.log)); err != nil && !errors.Is(err, shapes.ErrUnknownShape) {
			return fmt.Errorf("%w: remove shape %s, whose snapshot Postgres refused: %v", errNotReady, handle, err)
		}
		s.shapes.remove(handle)
		s.log.Info("shape removed: Postgres refused its snapshot query on a row of the table", "shape", handle, "sqlstate", code)
	}
	return Invalid("where", dataErrorMessage(code))
}
