// Package shapes registers shape definitions: it checks them against the
// live table schema and stores them in the shapes KV bucket, which every
// service watches.
package shapes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/shapestate"
)

// ErrUnknownShape is wrapped by the errors of Get and Remove for a handle
// that is not registered.
var ErrUnknownShape = errors.New("unknown shape")

// AddOption configures Add.
type AddOption func(*addConfig)

type addConfig struct {
	budget match.Budget
	checks []func(context.Context, *pgx.Conn, *fanout.Shape) error
}

// WithBudget bounds the cost of the where clause (match.Vet); without it
// only the schemas the clause names are checked.
func WithBudget(b match.Budget) AddOption { return func(c *addConfig) { c.budget = b } }

// WithCheck runs check on the new shape, after every other validation and
// before it is stored; its error fails Add.
func WithCheck(check func(context.Context, *pgx.Conn, *fanout.Shape) error) AddOption {
	return func(c *addConfig) { c.checks = append(c.checks, check) }
}

// Add validates a new shape against the live schema of table (it exists, has
// a primary key, the columns exist and include the key, the where clause
// parses, names no schema but pg_catalog and type-checks) and stores it
// under a fresh handle. Nothing is written when anything fails.
func Add(ctx context.Context, bus *fanout.Bus, conn *pgx.Conn, table, where string, params, columns []string, opts ...AddOption) (*fanout.Shape, error) {
	var cfg addConfig
	for _, o := range opts {
		o(&cfg)
	}
	if err := match.Vet(where, params, cfg.budget); err != nil {
		return nil, err
	}
	table = fanout.QualifiedTable(table)
	schema, pk, err := LoadSchema(ctx, conn, table)
	if err != nil {
		return nil, err
	}
	var cols []string
	for _, c := range columns {
		c = strings.TrimSpace(c)
		if c == "" || contains(cols, c) {
			continue
		}
		if !hasColumn(schema, c) {
			return nil, fmt.Errorf("table %s has no column %q; its columns are: %s", table, c, columnNames(schema))
		}
		cols = append(cols, c)
	}
	s := &fanout.Shape{
		Handle:     fanout.NewHandle(),
		Table:      table,
		Where:      strings.TrimSpace(where),
		Params:     params,
		Columns:    cols,
		PrimaryKey: pk,
		Schema:     schema,
		CreatedAt:  time.Now().UTC(),
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if _, err := match.CompileParams(s.Where, s.Params, schema); err != nil {
		return nil, fmt.Errorf("table %s: %w", table, err)
	}
	for _, check := range cfg.checks {
		if err := check(ctx, conn, s); err != nil {
			return nil, err
		}
	}
	if _, err := bus.Shapes.Create(ctx, s.Handle, s.Encode()); err != nil {
		return nil, fmt.Errorf("store shape %s in KV bucket %s: %w", s.Handle, fanout.ShapesBucket, err)
	}
	// The shape starts creating: a snapshot runner takes its initial
	// snapshot once ingest routes it. A missing state means the same, so
	// this write may fail without harm.
	if kv, err := shapestate.Open(ctx, bus.JS); err == nil {
		shapestate.Swap(ctx, kv, &shapestate.State{Handle: s.Handle, Phase: shapestate.Creating}, 0)
	}
	return s, nil
}

// Remove deletes a shape, its snapshot state and the generation the HTTP
// API recorded serving it at (ServedKey). Its fragments still in the
// stream share messages with other shapes of its partition, so they are
// not purged: the partition's consumer drops them (it acks fragments of
// unknown shapes), and a removed shape never holds the safe LSN back for
// longer than its partition's consumer takes to reach them.
func Remove(ctx context.Context, bus *fanout.Bus, handle string, opts ...RemoveOption) error {
	cfg := removeConfig{log: slog.Default()}
	for _, o := range opts {
		o(&cfg)
	}
	if _, err := Get(ctx, bus, handle); err != nil {
		return err
	}
	if err := bus.Shapes.Delete(ctx, handle); err != nil {
		return fmt.Errorf("delete shape %s from KV bucket %s: %w", handle, fanout.ShapesBucket, err)
	}
	if kv, err := shapestate.Open(ctx, bus.JS); err == nil {
		kv.Delete(ctx, handle) // snapshot runners clear it too
	}
	forgetServed(ctx, bus, handle, cfg.log)
	return nil
}

// Get reads one shape.
func Get(ctx context.Context, bus *fanout.Bus, handle string) (*fanout.Shape, error) {
	if err := fanout.ValidateHandle(handle); err != nil {
		return nil, err
	}
	e, err := bus.Shapes.Get(ctx, handle)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, fmt.Errorf("shape %s: %w (fanoutctl shape ls lists the shapes)", handle, ErrUnknownShape)
	}
	if err != nil {
		return nil, fmt.Errorf("read shape %s from KV bucket %s: %w", handle, fanout.ShapesBucket, err)
	}
	s, err := decode(e)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// List reads every shape, sorted by table, then handle. An invalid stored
// definition is an error naming its key.
func List(ctx context.Context, bus *fanout.Bus) ([]*fanout.Shape, error) {
	var out []*fanout.Shape
	err := eachEntry(ctx, bus.Shapes, fanout.ShapesBucket, func(e jetstream.KeyValueEntry) error {
		s, err := decode(e)
		if err != nil {
			return err
		}
		out = append(out, s)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Table != out[j].Table {
			return out[i].Table < out[j].Table
		}
		return out[i].Handle < out[j].Handle
	})
	return out, nil
}

// eachEntry calls f with every current value of a bucket (named in
// errors) until f fails.
func eachEntry(ctx context.Context, kv jetstream.KeyValue, bucket string, f func(jetstream.KeyValueEntry) error) error {
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("list KV bucket %s: %w", bucket, err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("list KV bucket %s: %w", bucket, ctx.Err())
		case e := <-w.Updates():
			if e == nil { // every current value has been delivered
				return nil
			}
			if err := f(e); err != nil {
				return err
			}
		}
	}
}

// decode reads a bucket entry; the key must be the shape's handle.
func decode(e jetstream.KeyValueEntry) (*fanout.Shape, error) {
	s, err := fanout.DecodeShape(e.Value())
	if err != nil {
		return nil, fmt.Errorf("KV bucket %s key %s: %w (remove it with: nats kv del %s %s)", fanout.ShapesBucket, e.Key(), err, fanout.ShapesBucket, e.Key())
	}
	if s.Handle != e.Key() {
		return nil, fmt.Errorf("KV bucket %s key %s holds shape %s: a shape must be stored under its own handle", fanout.ShapesBucket, e.Key(), s.Handle)
	}
	return s, nil
}

func hasColumn(schema []fanout.Column, name string) bool {
	for _, c := range schema {
		if c.Name == name {
			return true
		}
	}
	return false
}

func columnNames(schema []fanout.Column) string {
	names := make([]string, len(schema))
	for i, c := range schema {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
