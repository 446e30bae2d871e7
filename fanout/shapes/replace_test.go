package shapes

import (
	"encoding/json"
	"log/slog"
	"reflect"
	"slices"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapestate"
)

// Replace resyncs shapes: each in scope gets a new handle with the same
// definition, a creating state, the HTTP API's definition pointing at it,
// and the old shape is gone (with its served record); shapes of other
// tables are left alone.
func TestReplaceGivesNewHandlesAndRepointsDefinitions(t *testing.T) {
	e := start(t)
	pg := e.conn
	if _, err := pg.Exec(e.ctx, `CREATE TABLE other (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	a := e.add(t, "owner = 1")
	b := e.add(t, "owner = 2")
	o, err := Add(e.ctx, e.bus, pg, "other", "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defs, err := e.bus.JS.CreateOrUpdateKeyValue(e.ctx, jetstream.KeyValueConfig{Bucket: fanout.APIDefinitionsBucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	v, _ := json.Marshal(DefinitionValue{Handle: a.Handle})
	if _, err := defs.Put(e.ctx, "def-a", v); err != nil {
		t.Fatal(err)
	}
	if _, err := defs.Put(e.ctx, ServedKey(a.Handle), []byte("1")); err != nil {
		t.Fatal(err)
	}

	replaced, err := Replace(e.ctx, e.bus, []string{"public.items"}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if len(replaced) != 2 {
		t.Fatalf("replaced %v, want the two shapes of public.items", replaced)
	}
	byOld := map[string]Replaced{}
	for _, r := range replaced {
		byOld[r.Old] = r
		if r.New == r.Old || r.Revision == 0 {
			t.Fatalf("replacement %+v", r)
		}
	}
	state, err := shapestate.Open(e.ctx, e.bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	for _, old := range []*fanout.Shape{a, b} {
		r, ok := byOld[old.Handle]
		if !ok {
			t.Fatalf("shape %s not replaced: %v", old.Handle, replaced)
		}
		if _, err := Get(e.ctx, e.bus, old.Handle); err == nil {
			t.Errorf("old shape %s still exists", old.Handle)
		}
		n, err := Get(e.ctx, e.bus, r.New)
		if err != nil {
			t.Fatal(err)
		}
		if n.Table != old.Table || n.Where != old.Where || !reflect.DeepEqual(n.Schema, old.Schema) || !reflect.DeepEqual(n.PrimaryKey, old.PrimaryKey) {
			t.Errorf("replacement %+v does not keep the definition of %+v", n, old)
		}
		if st, _, err := shapestate.Get(e.ctx, state, r.New); err != nil || st.Phase != shapestate.Creating {
			t.Errorf("replacement %s state %+v, %v; want creating", r.New, st, err)
		}
	}
	en, err := defs.Get(e.ctx, "def-a")
	if err != nil {
		t.Fatal(err)
	}
	var got DefinitionValue
	json.Unmarshal(en.Value(), &got)
	if got.Handle != byOld[a.Handle].New {
		t.Errorf("definition names %q, want the replacement %s", got.Handle, byOld[a.Handle].New)
	}
	if _, err := defs.Get(e.ctx, ServedKey(a.Handle)); err == nil {
		t.Error("the old handle's served record is still there")
	}
	if _, err := Get(e.ctx, e.bus, o.Handle); err != nil {
		t.Errorf("the shape of another table was touched: %v", err)
	}

	// No scope: every shape, the replacements of the first call included.
	all, err := Replace(e.ctx, e.bus, nil, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	var olds []string
	for _, r := range all {
		olds = append(olds, r.Old)
	}
	slices.Sort(olds)
	want := []string{byOld[a.Handle].New, byOld[b.Handle].New, o.Handle}
	slices.Sort(want)
	if !reflect.DeepEqual(olds, want) {
		t.Fatalf("second Replace replaced %v, want %v", olds, want)
	}
	if keys := e.keys(t); len(keys) != 3 || slices.Contains(keys, o.Handle) {
		t.Fatalf("shapes after it: %v", keys)
	}
}
