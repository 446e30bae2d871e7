package shapelog

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

func sv(s string) *string { return &s }

// A half-written generation is never found; a complete one is read back
// exactly, and the log's transactions it saw are skipped by Materialize.
func TestSnapshotWriteReadAndHandOff(t *testing.T) {
	dir := t.TempDir()
	cols := []string{"id", "title"}
	w, err := NewSnapshotWriter(dir, "sa", 1, "public.items", cols, []string{"id"}, 2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i, title := range []string{"a", "b \"quoted\"\n", "c"} {
		if err := w.Add(fanout.Row{"id": sv(string(rune('1' + i))), "title": sv(title)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Add(fanout.Row{"id": sv("4")}); err != nil { // title NULL
		t.Fatal(err)
	}
	if s, err := CurrentSnapshot(dir, "sa"); err != nil || s != nil {
		t.Fatalf("incomplete generation served: %v %v", s, err)
	}
	snap, _ := visibility.Parse("100:110:105")
	if _, err := w.Complete(snap); err != nil {
		t.Fatal(err)
	}
	s, err := CurrentSnapshot(dir, "sa")
	if err != nil || s == nil || s.Generation != 1 || s.Rows != 4 || len(s.Chunks) != 2 {
		t.Fatalf("CurrentSnapshot = %+v, %v", s, err)
	}
	var got []fanout.Row
	if err := s.EachRow(func(r fanout.Row) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || *got[1]["title"] != "b \"quoted\"\n" || got[3]["title"] != nil {
		t.Fatalf("rows read back: %v", got)
	}

	// The log: xid 104 was seen (skip), 105 was in progress (apply), 111 is later (apply).
	st, err := NewFileStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	wr, err := st.Take(context.Background(), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	frag := func(lsn uint64, xid uint32, ch fanout.Change) *fanout.Fragment {
		return &fanout.Fragment{Version: fanout.WireVersion, Shape: "sa", Xid: xid, CommitLSN: pglogrepl.LSN(lsn), Last: true, Changes: []fanout.Change{ch}}
	}
	if _, err := wr.Append(context.Background(), []*fanout.Fragment{
		frag(10, 104, fanout.Change{Op: fanout.OpDelete, Old: fanout.Row{"id": sv("1")}}),
		frag(20, 105, fanout.Change{Op: fanout.OpInsert, Row: fanout.Row{"id": sv("5"), "title": sv("e")}}),
		frag(30, 111, fanout.Change{Op: fanout.OpDelete, Old: fanout.Row{"id": sv("2")}}),
	}); err != nil {
		t.Fatal(err)
	}
	wr.Close()
	rows, err := Materialize(dir, "sa", []string{"id"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range rows {
		ids = append(ids, *r["id"])
	}
	if want := "1 3 4 5"; join(ids) != want {
		t.Fatalf("materialized ids %q, want %q", join(ids), want)
	}

	// A newer generation replaces it; leftovers of a crashed one are removed.
	w3, _ := NewSnapshotWriter(dir, "sa", 3, "public.items", cols, []string{"id"}, 10, 1<<20)
	w3.Add(fanout.Row{"id": sv("9")}) // never completed: a crash
	w4, err := NewSnapshotWriter(dir, "sa", 4, "public.items", cols, []string{"id"}, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if gens, _ := snapshotGenerations(dir, "sa"); len(gens) != 2 {
		t.Fatalf("generations after a restart: %v, want [1 4]", gens)
	}
	if _, err := w4.Complete(visibility.Snapshot{Xmin: 200, Xmax: 200}); err != nil {
		t.Fatal(err)
	}
	if s, _ := CurrentSnapshot(dir, "sa"); s == nil || s.Generation != 4 || s.Rows != 0 {
		t.Fatalf("after generation 4: %+v", s)
	}
	if ok, err := HasData(dir, "sb"); ok || err != nil {
		t.Fatalf("HasData of an unknown shape: %v %v", ok, err)
	}
	if ok, err := HasData(dir, "sa"); !ok || err != nil {
		t.Fatalf("HasData: %v %v", ok, err)
	}
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out
}

// Version 2 chunks hold the Electric messages: "[" + chunk + "]" is the
// JSON array the API serves, keys escaped as Electric keys rows.
func TestSnapshotChunksAreMessages(t *testing.T) {
	dir := t.TempDir()
	w, err := NewSnapshotWriter(dir, "sm", 1, `public.it"ems`, []string{"id", "title"}, []string{"id"}, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	w.Add(fanout.Row{"id": sv("a/b"), "title": sv("x\"\n\u2028")})
	w.Add(fanout.Row{"id": sv("2")})
	s, err := w.Complete(visibility.Snapshot{Xmin: 1, Xmax: 1})
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != SnapshotVersion || !s.Messages() {
		t.Fatalf("version %d", s.Version)
	}
	f, err := s.OpenChunk(0)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(f)
	f.Close()
	var msgs []struct {
		Key     string             `json:"key"`
		Value   map[string]*string `json:"value"`
		Headers map[string]any     `json:"headers"`
	}
	if err := json.Unmarshal([]byte("["+string(data)+"]"), &msgs); err != nil {
		t.Fatalf("chunk is not an array's inside: %v\n%s", err, data)
	}
	if len(msgs) != 2 || msgs[0].Key != `"public"."it""ems"/"a//b"` || *msgs[0].Value["title"] != "x\"\n\u2028" ||
		msgs[1].Value["title"] != nil || msgs[1].Headers["operation"] != "insert" || fmt.Sprint(msgs[1].Headers["relation"]) != `[public it"ems]` {
		t.Fatalf("messages: %+v\n%s", msgs, data)
	}
	want := `{"key":"\"public\".\"it\"\"ems\"/\"2\"","value":{"id":"2","title":null},"headers":{"operation":"insert","relation":["public","it\"ems"]}}`
	if !strings.Contains(string(data), "\n,"+want+"\n") {
		t.Fatalf("second message is not exactly %s:\n%s", want, data)
	}
	var rows []fanout.Row
	if err := s.EachRow(func(r fanout.Row) error { rows = append(rows, r); return nil }); err != nil || len(rows) != 2 || *rows[0]["id"] != "a/b" {
		t.Fatalf("rows %v %v", rows, err)
	}

	// A generation number is never reused; the latest is known.
	if _, err := NewSnapshotWriter(dir, "sm", 1, "public.items", []string{"id"}, []string{"id"}, 10, 1<<20); err == nil {
		t.Fatal("a complete generation was written again")
	}
	if g, err := LatestGeneration(dir, "sm"); g != 1 || err != nil {
		t.Fatalf("LatestGeneration = %d %v", g, err)
	}
	w2, err := NewSnapshotWriter(dir, "sm", 2, "public.items", []string{"id"}, []string{"id"}, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if s.Replaced() {
		t.Fatal("replaced before the next generation completed")
	}
	if _, err := w2.Complete(visibility.Snapshot{Xmin: 1, Xmax: 1}); err != nil {
		t.Fatal(err)
	}
	if !s.Replaced() {
		t.Fatal("generation 1 not replaced by 2")
	}
}

// A version 1 snapshot (rows as arrays, no version in the manifest) is
// still read; an unknown version is refused with a clear error.
func TestSnapshotVersions(t *testing.T) {
	dir := t.TempDir()
	gdir := generationDir(dir, "sv", 1)
	os.MkdirAll(gdir, 0o755)
	chunk := "[\"1\",\"a\"]\n[\"2\",null]\n"
	os.WriteFile(filepath.Join(gdir, chunkName(0)), []byte(chunk), 0o644)
	manifest := fmt.Sprintf(`{"handle":"sv","generation":1,"snapshot":{"xmin":1,"xmax":1},"columns":["id","title"],"primary_key":["id"],"rows":2,"bytes":%d,"chunks":[{"rows":2,"bytes":%d}]}`, len(chunk), len(chunk))
	os.WriteFile(filepath.Join(gdir, manifestName), []byte(manifest), 0o644)
	s, err := CurrentSnapshot(dir, "sv")
	if err != nil || s == nil || s.Version != 1 || s.Messages() {
		t.Fatalf("version 1 snapshot: %+v %v", s, err)
	}
	var rows []fanout.Row
	if err := s.EachRow(func(r fanout.Row) error { rows = append(rows, r); return nil }); err != nil || len(rows) != 2 || rows[1]["title"] != nil {
		t.Fatalf("version 1 rows %v %v", rows, err)
	}
	if _, err := s.OpenChunk(0); err == nil {
		t.Fatal("OpenChunk served a version 1 chunk as messages")
	}
	os.WriteFile(filepath.Join(gdir, manifestName), []byte(strings.Replace(manifest, `{"handle"`, `{"version":9,"handle"`, 1)), 0o644)
	if _, err := CurrentSnapshot(dir, "sv"); err == nil || !strings.Contains(err.Error(), "version 9") {
		t.Fatalf("unknown version: %v", err)
	}
}

// A snapshot's new directories are durable in their parents: a new shape's
// folder in shapes/ too (before, only snapshot/ and the shape's folder were
// synced, whichever were new). A later generation syncs only snapshot/.
func TestSnapshotDirectoriesAreDurable(t *testing.T) {
	d := watchDisk(t)
	dir := t.TempDir()
	for gen := uint64(1); gen <= 2; gen++ {
		d.mu.Lock()
		d.log = nil
		d.mu.Unlock()
		w, err := NewSnapshotWriter(dir, "sd", gen, "public.items", []string{"id"}, []string{"id"}, 10, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Add(fanout.Row{"id": sv("1")}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Complete(visibility.Snapshot{Xmin: 1, Xmax: 1}); err != nil {
			t.Fatal(err)
		}
		root := snapshotRoot(dir, "sd")
		shape := filepath.Dir(root)
		for p, want := range map[string]bool{filepath.Dir(shape): gen == 1, shape: gen == 1, root: true, generationDir(dir, "sd", gen): true} {
			if got := d.fsynced(p); got != want {
				t.Errorf("generation %d: %s fsynced %v, want %v", gen, p, got, want)
			}
		}
	}
}

// A completed snapshot survives a power loss: every chunk and the manifest
// were fsynced whole, and the generation's folder was synced after them and
// before the manifest took its name (Complete now syncs the chunks, the
// manifest and the new directories' names at once).
func TestCompletedSnapshotIsDurableBeforeItIsNamed(t *testing.T) {
	d := watchDisk(t)
	dir := t.TempDir()
	w, err := NewSnapshotWriter(dir, "sp", 1, "public.items", []string{"id"}, []string{"id"}, 3, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	gdir := generationDir(dir, "sp", 1)
	var renamedAt int // d.log's length when the folder's first sync began
	d.onSync = func(path string) {
		if path == gdir && renamedAt == 0 {
			d.mu.Lock()
			renamedAt = len(d.log)
			d.mu.Unlock()
			if _, err := os.Stat(filepath.Join(gdir, manifestName)); err == nil {
				t.Error("the manifest had its name before the folder was synced")
			}
		}
	}
	for i := range 10 {
		if err := w.Add(fanout.Row{"id": sv(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Complete(visibility.Snapshot{Xmin: 1, Xmax: 1}); err != nil {
		t.Fatal(err)
	}
	chunks, _ := filepath.Glob(filepath.Join(gdir, "chunk-*"))
	manifest, _ := os.Stat(filepath.Join(gdir, manifestName))
	d.mu.Lock()
	defer d.mu.Unlock()
	before := map[string]bool{}
	for _, p := range d.log[:renamedAt] {
		before[p] = true
	}
	for _, c := range chunks {
		fi, _ := os.Stat(c)
		if d.synced[c] != fi.Size() || !before[c] {
			t.Errorf("chunk %s: %d of %d bytes synced, before the folder's sync: %v", c, d.synced[c], fi.Size(), before[c])
		}
	}
	tmp := filepath.Join(gdir, manifestName+".tmp")
	if d.synced[tmp] != manifest.Size() || !before[tmp] {
		t.Errorf("manifest: %d of %d bytes synced, before the folder's sync: %v", d.synced[tmp], manifest.Size(), before[tmp])
	}
	if len(chunks) != 4 {
		t.Errorf("%d chunks, want 4", len(chunks))
	}
}
