package shapes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapestate"
)

// DefinitionValue is the value of a definition's key in the HTTP API's
// definitions bucket (fanout.APIDefinitionsBucket): the handle serving it,
// or none while one replica registers it.
type DefinitionValue struct {
	Handle  string    `json:"handle,omitempty"`
	Pending time.Time `json:"pending,omitzero"`
}

// Replaced is one shape Replace replaced.
type Replaced struct {
	Old, New string
	// Revision is the new shape's shapes-bucket revision.
	Revision uint64
}

// replaceWorkers bounds the replacements in flight: each is a few KV
// round trips, and a reset may replace every shape.
const replaceWorkers = 16

// Replace replaces every shape on tables (every shape when tables is
// empty) by a new shape with the same definition and a new handle: its
// log starts empty and its snapshot is taken anew, once ingest routes it.
// It is how a shape is resynced after its changes were lost (a break of
// replication continuity): a handle is served at one snapshot and one log
// only, so clients of the old handle get 409 and the new one. A definition
// of the HTTP API served by an old handle is pointed at the new one first,
// so those clients are sent straight to it; then the old shape is removed
// (Remove). Shapes an operator added keep their definition, not their
// handle: the replacements are logged, and returned.
func Replace(ctx context.Context, bus *fanout.Bus, tables []string, log *slog.Logger) ([]Replaced, error) {
	olds, err := listValid(ctx, bus, log)
	if err != nil {
		return nil, err
	}
	olds = slices.DeleteFunc(olds, func(s *fanout.Shape) bool { return len(tables) > 0 && !slices.Contains(tables, s.Table) })
	defs, err := definitionsByHandle(ctx, bus)
	if err != nil {
		return nil, err
	}
	state, _ := shapestate.Open(ctx, bus.JS) // nil: a missing state means creating anyway

	out := make([]Replaced, len(olds))
	errs := make([]error, len(olds))
	sem := make(chan struct{}, replaceWorkers)
	var wg sync.WaitGroup
	for i, old := range olds {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			out[i], errs[i] = replaceOne(ctx, bus, state, defs[old.Handle], old, log)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("replace shapes: %w", err)
	}
	return out, nil
}

// listValid reads every shape; an invalid definition (which no service
// serves nor routes) is logged and left alone, so one cannot stop a reset.
func listValid(ctx context.Context, bus *fanout.Bus, log *slog.Logger) ([]*fanout.Shape, error) {
	var out []*fanout.Shape
	err := eachEntry(ctx, bus.Shapes, fanout.ShapesBucket, func(e jetstream.KeyValueEntry) error {
		s, err := decode(e)
		if err != nil {
			log.Error("invalid shape definition not resynced", "key", e.Key(), "err", err)
			return nil
		}
		out = append(out, s)
		return nil
	})
	return out, err
}

// definition is one key of the definitions bucket and its revision.
type definition struct {
	key string
	rev uint64
}

func replaceOne(ctx context.Context, bus *fanout.Bus, state jetstream.KeyValue, def *definition, old *fanout.Shape, log *slog.Logger) (Replaced, error) {
	s := *old
	s.Handle, s.CreatedAt = fanout.NewHandle(), time.Now().UTC()
	rev, err := bus.Shapes.Create(ctx, s.Handle, s.Encode())
	if err != nil {
		return Replaced{}, fmt.Errorf("store shape %s (replacing %s) in KV bucket %s: %w", s.Handle, old.Handle, fanout.ShapesBucket, err)
	}
	if state != nil {
		shapestate.Swap(ctx, state, &shapestate.State{Handle: s.Handle, Phase: shapestate.Creating}, 0)
	}
	if def != nil {
		if err := repoint(ctx, bus, def, s.Handle); err != nil {
			// The API registers the definition again when asked: one
			// more new shape, never a stale one.
			log.Warn("the HTTP API's definition of a replaced shape still names the old handle; the API makes a new shape for it on the next request",
				"shape", old.Handle, "replacement", s.Handle, "key", def.key, "err", err)
		}
	}
	if err := Remove(ctx, bus, old.Handle, WithRemoveLog(log)); err != nil && !errors.Is(err, ErrUnknownShape) {
		return Replaced{}, fmt.Errorf("remove shape %s (replaced by %s): %w", old.Handle, s.Handle, err)
	}
	return Replaced{Old: old.Handle, New: s.Handle, Revision: rev}, nil
}

// repoint makes a definition name handle, if it still names what it did.
func repoint(ctx context.Context, bus *fanout.Bus, def *definition, handle string) error {
	kv, err := bus.JS.KeyValue(ctx, fanout.APIDefinitionsBucket)
	if err != nil {
		return err
	}
	v, _ := json.Marshal(DefinitionValue{Handle: handle})
	_, err = kv.Update(ctx, def.key, v, def.rev)
	return err
}

// definitionsByHandle maps each handle the HTTP API serves a definition
// with to that definition's key (none when no API ever ran on the bus).
func definitionsByHandle(ctx context.Context, bus *fanout.Bus) (map[string]*definition, error) {
	out := map[string]*definition{}
	kv, err := bus.JS.KeyValue(ctx, fanout.APIDefinitionsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open KV bucket %s: %w", fanout.APIDefinitionsBucket, err)
	}
	err = eachEntry(ctx, kv, fanout.APIDefinitionsBucket, func(e jetstream.KeyValueEntry) error {
		if strings.HasPrefix(e.Key(), servedPrefix) {
			return nil // a served generation (ServedKey), not a definition
		}
		var v DefinitionValue
		if json.Unmarshal(e.Value(), &v) == nil && v.Handle != "" {
			out[v.Handle] = &definition{key: e.Key(), rev: e.Revision()}
		}
		return nil
	})
	return out, err
}
