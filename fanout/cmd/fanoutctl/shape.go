package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapes"
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
	s, err := shapes.Add(ctx, bus, conn, cmd.table, cmd.where, cmd.columns)
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

func shapeLs(ctx context.Context, bus *fanout.Bus, cmd command) error {
	list, err := shapes.List(ctx, bus)
	if err != nil {
		return err
	}
	if cmd.json {
		if list == nil {
			list = []*fanout.Shape{}
		}
		return printJSON(list)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "HANDLE\tTABLE\tWHERE\tCOLUMNS")
	for _, s := range list {
		cols := "*"
		if len(s.Columns) > 0 {
			cols = strings.Join(s.Columns, ",")
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", s.Handle, s.Table, s.Where, cols)
	}
	return w.Flush()
}

// shapeRows prints the materialized rows, one JSON object per line, sorted by
// primary key. Values are in Postgres text format, as in the shape log.
func shapeRows(ctx context.Context, cfg Config, bus *fanout.Bus, cmd command) error {
	if len(cmd.args) != 1 {
		return fmt.Errorf("shape rows needs exactly one HANDLE")
	}
	s, err := shapes.Get(ctx, bus, cmd.args[0])
	if err != nil {
		return err
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

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
