package pgpool

import (
	"context"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout/testenv"
)

// A function another role planted in public with the exact argument types
// (public.lower(varchar)) wins over pg_catalog.lower(text) on the default
// search_path; a pool connection never resolves to it.
func TestPoolSessionsResolveOnlyPgCatalog(t *testing.T) {
	pgsrv := testenv.StartPostgres(t)
	conn := pgsrv.Connect(t)
	pgsrv.Exec(t, conn, `CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS $$ SELECT 'planted' $$`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var got string
	if err := conn.QueryRow(ctx, "SELECT lower('ABC'::varchar)").Scan(&got); err != nil || got != "planted" {
		t.Fatalf("the planted function is not what the default search_path finds (%q, %v): the test proves nothing", got, err)
	}
	p, err := New(Config{URL: pgsrv.URL, Size: 1, Name: "pgpool-test", Purpose: "a test", ConnectTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(c)
	var path string
	if err := c.QueryRow(ctx, "SELECT lower('ABC'::varchar), current_setting('search_path')").Scan(&got, &path); err != nil {
		t.Fatal(err)
	}
	if got != "abc" || path != SearchPath {
		t.Fatalf("pool session: lower() = %q with search_path %q, want pg_catalog's lower and %q", got, path, SearchPath)
	}
}
