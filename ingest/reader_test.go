package ingest

import (
	"context"
	"strings"
	"testing"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// The replication connection prints values with fanout.TextSettings, the
// settings of the snapshot reads, whatever the server's defaults: set a
// server TimeZone and IntervalStyle that differ, and the walsender's are
// still the fixed ones.
func TestReplicationConnectionUsesTheFixedTextSettings(t *testing.T) {
	pg := testenv.StartPostgres(t)
	conn := pg.Connect(t)
	pg.Exec(t, conn, "ALTER SYSTEM SET TimeZone = 'Asia/Tokyo'")
	pg.Exec(t, conn, "ALTER SYSTEM SET IntervalStyle = 'sql_standard'")
	pg.Exec(t, conn, "SELECT pg_reload_conf()")
	ctx := context.Background()
	repl, err := connectReplication(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close(ctx)
	for name, want := range fanout.TextSettings {
		res, err := repl.Exec(ctx, "SHOW "+name).ReadAll()
		if err != nil {
			t.Fatalf("SHOW %s on the replication connection: %v", name, err)
		}
		got := string(res[0].Rows[0][0])
		if name == "DateStyle" {
			got, _, _ = strings.Cut(got, ",") // "ISO, MDY": the output style is what counts
		}
		if got != want {
			t.Errorf("replication connection %s = %q, want %q", name, got, want)
		}
	}
}
