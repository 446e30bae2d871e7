package shapeapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapestate"
	"github.com/fanout/pipeline/fanout/testenv"
	"github.com/fanout/pipeline/fanout/visibility"
)

func TestGenerationVerdict(t *testing.T) {
	for _, tc := range []struct {
		recorded, current uint64
		has               bool
		record, retire    bool
	}{
		{current: 1, record: true},                         // first served: recorded
		{recorded: 1, has: true, current: 1},               // the same: served
		{recorded: 1, has: true, current: 2, retire: true}, // retaken: retired
		{recorded: 3, has: true, current: 1, retire: true}, // renumbered (state lost): retired
	} {
		record, retire := generationVerdict(tc.recorded, tc.has, tc.current)
		if record != tc.record || retire != tc.retire {
			t.Errorf("generationVerdict(%d, %v, %d) = %v %v, want %v %v", tc.recorded, tc.has, tc.current, record, retire, tc.record, tc.retire)
		}
	}
}

// A handle served at one generation is retired (the shape removed, so its
// definition gets a new handle and its clients 409) when its snapshot is
// retaken as another generation, on the replica that served it (its cached
// snapshot was replaced) and on one that never did.
func TestHandleRetiredWhenItsSnapshotGenerationChanges(t *testing.T) {
	ctx := context.Background()
	ns := testenv.StartNATS(t)
	dir := t.TempDir()
	var cfg Config
	cfg.NATS.URL = ns.URL
	cfg.Bus.Replicas = 1
	cfg.Storage.Dir = dir
	cfg.API.ReadyTimeout = 2 * time.Second
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	newServer := func() *Server {
		s, err := New(ctx, cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.nc.Close() })
		return s
	}
	a, b := newServer(), newServer()

	sh := &fanout.Shape{Handle: "sgen", Table: "public.items", PrimaryKey: []string{"id"}, Schema: []fanout.Column{{Name: "id", Type: "integer"}}}
	if _, err := a.bus.Shapes.Put(ctx, sh.Handle, sh.Encode()); err != nil {
		t.Fatal(err)
	}
	states, err := shapestate.Open(ctx, a.bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	ready := func(gen uint64) {
		t.Helper()
		w, err := shapelog.NewSnapshotWriter(dir, sh.Handle, gen, sh.Table, []string{"id"}, sh.PrimaryKey, 10, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		w.Add(fanout.Row{"id": str("1")})
		if _, err := w.Complete(visibility.Snapshot{Xmin: 10, Xmax: 10}); err != nil {
			t.Fatal(err)
		}
		_, rev, _ := shapestate.Get(ctx, states, sh.Handle)
		if _, err := shapestate.Swap(ctx, states, &shapestate.State{Handle: sh.Handle, Phase: shapestate.Ready, Generation: gen}, rev); err != nil {
			t.Fatal(err)
		}
	}

	ready(1)
	v, err := a.awaitReady(ctx, sh.Handle)
	if err != nil || v.snap.Generation != 1 {
		t.Fatalf("generation 1: %v %v", v, err)
	}
	if v2, err := a.awaitReady(ctx, sh.Handle); err != nil || v2 != v {
		t.Fatalf("served again: %v %v", v2, err)
	}

	// Retaken as generation 2 (its state was lost, say): the replica that
	// served generation 1 retires the handle.
	ready(2)
	_, err = a.awaitReady(ctx, sh.Handle)
	if !errors.Is(err, errNotReady) {
		t.Fatalf("after generation 2: %v, want not ready (the handle retired)", err)
	}
	if _, err := a.bus.Shapes.Get(ctx, sh.Handle); err == nil {
		t.Fatal("the shape of the retired handle still exists")
	}
	if a.shapes.exists(ctx, sh.Handle) {
		t.Fatal("replica a still knows the retired shape")
	}

	// Another replica, which never served it, agrees from the record.
	sh.Handle = "sgen2"
	if _, err := a.bus.Shapes.Put(ctx, sh.Handle, sh.Encode()); err != nil {
		t.Fatal(err)
	}
	ready(1)
	if _, err := a.awaitReady(ctx, sh.Handle); err != nil {
		t.Fatal(err)
	}
	ready(2)
	if _, err := b.awaitReady(ctx, sh.Handle); !errors.Is(err, errNotReady) {
		t.Fatalf("replica b served generation 2 of a handle served at 1: %v", err)
	}
	if _, err := a.bus.Shapes.Get(ctx, sh.Handle); err == nil {
		t.Fatal("the shape of the retired handle still exists")
	}
}
