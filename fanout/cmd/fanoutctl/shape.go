package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapes"
	"github.com/fanout/pipeline/fanout/shapestate"
)

func shapeAdd(ctx context.Context, cfg Config, bus *fanout.Bus, cmd command) error {
	if cmd.table == "" {
		return fmt.Errorf("shape add needs --table SCHEMA.TABLE")
	}
	conn, err := pgx.Connect(ctx, cfg.Postgres.URL)
	if err != nil {
		return fmt.Errorf("connect to Postgres to check the table's schema: %w (set --postgres.url or FANOUT_POSTGRES_URL)", err)
	}
	defer conn.Close(context.Background())
	s, err := shapes.Add(ctx, bus, conn, cmd.table, cmd.where, cmd.params, cmd.columns)
	if err != nil {
		return err
	}
	if cmd.json {
		return printJSON(s)
	}
	fmt.Println(s.Handle)
	return nil
}

func shapeRm(ctx context.Context, bus *fanout.Bus, cmd command) error {
	if len(cmd.args) != 1 {
		return fmt.Errorf("shape rm needs exactly one HANDLE")
	}
	if err := shapes.Remove(ctx, bus, cmd.args[0]); err != nil {
		return err
	}
	if cmd.json {
		return printJSON(map[string]string{"removed": cmd.args[0]})
	}
	fmt.Println("removed", cmd.args[0])
	return nil
}

// listedShape is a shape as `shape ls --json` prints it: its definition,
// its partition (its pending fragments are in the messages on
// fanout.<partition>) and its snapshot state.
type listedShape struct {
	*fanout.Shape
	Partition int               `json:"partition"`
	State     *shapestate.State `json:"state"`
	// Storage is what the shape holds in storage.dir (absent when this
	// host cannot read it).
	Storage *shapelog.Sizes `json:"storage,omitempty"`
}

// storedSizes is what shape handle holds under dir, nil when dir does not
// hold it (fanoutctl runs where storage.dir is not mounted).
func storedSizes(dir, handle string) *shapelog.Sizes {
	if has, err := shapelog.HasData(dir, handle); err != nil || !has {
		return nil
	}
	sz, err := shapelog.ShapeSizes(dir, handle, true)
	if err != nil {
		return nil
	}
	return &sz
}

func shapeLs(ctx context.Context, bus *fanout.Bus, cmd command, partitions int, dir string) error {
	list, err := shapes.List(ctx, bus)
	if err != nil {
		return err
	}
	states := map[string]*shapestate.State{}
	if kv, err := shapestate.Open(ctx, bus.JS); err == nil {
		if states, err = shapestate.List(ctx, kv); err != nil {
			return err
		}
	}
	stateOf := func(h string) *shapestate.State {
		if st := states[h]; st != nil {
			return st
		}
		return &shapestate.State{Handle: h, Phase: shapestate.Creating}
	}
	if cmd.json {
		out := []listedShape{}
		for _, s := range list {
			out = append(out, listedShape{s, fanout.Partition(s.Handle, partitions), stateOf(s.Handle), storedSizes(dir, s.Handle)})
		}
		return printJSON(out)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	// ROWS: of the current generation's base (the snapshot, or the last
	// compaction's); LOG: the log after it; DISK: every generation kept.
	fmt.Fprintln(w, "HANDLE\tPARTITION\tTABLE\tWHERE\tCOLUMNS\tSTATE\tROWS\tGEN\tLOG\tDISK")
	for _, s := range list {
		cols := "*"
		if len(s.Columns) > 0 {
			cols = strings.Join(s.Columns, ",")
		}
		st := stateOf(s.Handle)
		rows, gen, logBytes, disk := fmt.Sprint(st.Rows), "-", "-", "-"
		if sz := storedSizes(dir, s.Handle); sz != nil {
			rows, gen, logBytes, disk = fmt.Sprint(sz.BaseRows), fmt.Sprint(sz.Generation), byteSize(sz.LogBytes), byteSize(sz.DiskBytes)
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Handle, fanout.Partition(s.Handle, partitions), s.Table, s.Where, cols, st.Phase, rows, gen, logBytes, disk)
	}
	return w.Flush()
}

// byteSize prints n bytes for people: 812 B, 64.0 KiB, 3.2 MiB.
func byteSize(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

// shapeRowsWait prints the materialized rows, one JSON object per line,
// sorted by primary key (values in Postgres text format, as in the shape
// log), after waiting up to wait for the shape to be ready (wait 0: a shape
// that is not ready is an error).
func shapeRowsWait(ctx context.Context, cfg Config, bus *fanout.Bus, cmd command, wait time.Duration) error {
	if len(cmd.args) != 1 {
		return fmt.Errorf("shape rows needs exactly one HANDLE")
	}
	s, err := shapes.Get(ctx, bus, cmd.args[0])
	if err != nil {
		return err
	}
	st, err := awaitReady(ctx, bus, s.Handle, wait)
	if err != nil {
		return err
	}
	dir, _ := filepath.Abs(cfg.Storage.Dir)
	has, err := shapelog.HasData(cfg.Storage.Dir, s.Handle)
	if err != nil {
		return err
	}
	if !has {
		return fmt.Errorf("shape %s is registered, but storage directory %s holds no log and no snapshot of it: the consumers keep their shape logs elsewhere (pass their directory with --storage.dir or FANOUT_STORAGE_DIR)", s.Handle, dir)
	}
	if snap, err := shapelog.CurrentSnapshot(cfg.Storage.Dir, s.Handle); err != nil {
		return err
	} else if st != nil && (snap == nil || snap.Generation != st.Generation) {
		return fmt.Errorf("shape %s is ready at snapshot generation %d, but storage directory %s does not hold that generation (wrong --storage.dir?)", s.Handle, st.Generation, dir)
	}
	rows, err := shapelog.Materialize(cfg.Storage.Dir, s.Handle, s.PrimaryKey)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	for _, r := range rows {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

// awaitReady returns the shape's state once ready, waiting up to wait. A
// shape from before snapshots existed has no state and is read as it is:
// nil state, no error... except that every shape added now has one.
func awaitReady(ctx context.Context, bus *fanout.Bus, handle string, wait time.Duration) (*shapestate.State, error) {
	kv, err := shapestate.Open(ctx, bus.JS)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		st, _, err := shapestate.Get(ctx, kv, handle)
		if err != nil {
			return nil, err
		}
		switch st.Phase {
		case shapestate.Ready:
			return st, nil
		case shapestate.Failed:
			return nil, fmt.Errorf("shape %s failed its initial snapshot (generation %d, %d attempts): %s", handle, st.Generation, st.Attempts, st.Error)
		}
		if !time.Now().Before(deadline) {
			msg := fmt.Sprintf("shape %s is not ready: it is %s", handle, st.Phase)
			if st.Phase == shapestate.Snapshotting {
				msg += fmt.Sprintf(" (generation %d on %s, %d rows so far)", st.Generation, st.Owner, st.Rows)
			} else {
				msg += " (waiting for a consumer with postgres.url to take its snapshot, after ingest routes it)"
			}
			if wait > 0 {
				return nil, errors.New(msg + fmt.Sprintf("; waited %s", wait))
			}
			return nil, errors.New(msg + "; run again when `fanoutctl shape ls` shows it ready, or pass --wait 1m")
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("shape %s: %w while waiting for it to be ready", handle, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
