package shapeapi

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapes"
)

// A handle is served at one snapshot generation only. Its offsets (0_i in
// the snapshot, then the log read as that generation's snapshot filters
// it) mean nothing in another generation, and Electric's clients take a
// 409 to mean a new handle (the 1.5 client marks the old one expired and
// retries responses that still carry it). So the first generation served
// for a handle is recorded in the definitions bucket (key served.<handle>),
// and a replica that finds the shape ready at another generation (its
// snapshot was retaken: a state lost or reset in KV, or a newer generation
// completed) removes the shape: every client of the old handle then gets
// 409 with the definition's new handle (a new shape, a new snapshot) and
// starts again from -1, and no response mixes two generations.

// servedKey is the definitions-bucket key of the generation handle is
// served at; shapes.Remove deletes it with the shape.
func servedKey(handle string) string { return shapes.ServedKey(handle) }

// generationVerdict decides, from the recorded generation of a handle (has
// false: none yet) and the generation about to be served, whether to
// record it and whether the handle must be retired.
func generationVerdict(recorded uint64, has bool, current uint64) (record, retire bool) {
	switch {
	case !has:
		return true, false
	case recorded == current:
		return false, false
	}
	return false, true
}

// checkGeneration records gen as handle's served generation, or retires the
// handle when it was served at another one (errNotReady: the client retries
// and gets its 409).
func (s *Server) checkGeneration(ctx context.Context, handle string, gen uint64) error {
	key := servedKey(handle)
	for attempt := 0; ; attempt++ {
		e, err := s.defs.Get(ctx, key)
		has := err == nil
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
			return fmt.Errorf("%w: read KV bucket %s: %v", errNotReady, fanout.APIDefinitionsBucket, err)
		}
		var recorded uint64
		if has {
			if recorded, err = strconv.ParseUint(string(e.Value()), 10, 64); err != nil {
				return fmt.Errorf("%w: key %s of KV bucket %s holds %q, not a generation number", errNotReady, key, fanout.APIDefinitionsBucket, e.Value())
			}
		}
		record, retire := generationVerdict(recorded, has, gen)
		switch {
		case record:
			if _, err := s.defs.Create(ctx, key, []byte(strconv.FormatUint(gen, 10))); err != nil {
				if attempt < 3 {
					continue // another replica recorded one first: compare with it
				}
				return fmt.Errorf("%w: record the generation of shape %s in KV bucket %s: %v", errNotReady, handle, fanout.APIDefinitionsBucket, err)
			}
			return nil
		case retire:
			return s.retireHandle(ctx, handle, recorded, gen)
		}
		return nil
	}
}

// retireHandle removes a shape whose snapshot generation changed under its handle.
func (s *Server) retireHandle(ctx context.Context, handle string, served, gen uint64) error {
	s.log.Warn("a shape's snapshot was retaken after its handle was served; the shape is replaced by a new one and its clients refetch",
		"shape", handle, "served_generation", served, "generation", gen)
	if err := shapes.Remove(ctx, s.bus, handle, shapes.WithRemoveLog(s.log)); err != nil && !errors.Is(err, shapes.ErrUnknownShape) {
		return fmt.Errorf("%w: remove shape %s, served at snapshot generation %d and now at %d: %v", errNotReady, handle, served, gen, err)
	}
	s.shapes.remove(handle)
	return fmt.Errorf("%w: shape %s was served at snapshot generation %d and its snapshot is now generation %d: it is replaced by a new shape (clients get 409 with its handle)", errNotReady, handle, served, gen)
}

// dropView forgets v as handle's served snapshot (if it still is).
func (s *Server) dropView(handle string, v *snapshotView) {
	s.mu.Lock()
	if cur, _ := s.snaps.get(handle); cur == v {
		s.snaps.remove(handle)
	}
	s.mu.Unlock()
}
