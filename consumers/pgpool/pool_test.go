package pgpool

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/fanout/testenv"
)

// pid is c's backend process, 0 for no connection.
func pid(c *pgx.Conn) uint32 {
	if c == nil {
		return 0
	}
	return c.PgConn().PID()
}

func TestPoolBoundsReusesAndReplaces(t *testing.T) {
	pgsrv := testenv.StartPostgres(t)
	p, err := New(Config{URL: pgsrv.URL, Size: 1, Settings: map[string]string{"DateStyle": "SQL, DMY"},
		Name: "pgpool-test", Purpose: "a test", Wait: 200 * time.Millisecond, ConnectTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var style, name string
	if err := c.QueryRow(ctx, "SELECT current_setting('DateStyle'), current_setting('application_name')").Scan(&style, &name); err != nil {
		t.Fatal(err)
	}
	if style != "SQL, DMY" || name != "pgpool-test" {
		t.Fatalf("session has DateStyle %q, application_name %q", style, name)
	}

	// The only connection is out: a second caller waits Wait, then is told.
	start := time.Now()
	if _, err := p.Acquire(ctx); err == nil || !strings.Contains(err.Error(), "all 1 connections for a test stayed busy for 200ms") {
		t.Fatalf("second Acquire: %v", err)
	} else if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Fatalf("second Acquire gave up after %s, before Wait", waited)
	}

	// Released clean, the same session comes back.
	first := pid(c)
	p.Release(c)
	if c, err = p.Acquire(ctx); err != nil || pid(c) != first {
		t.Fatalf("Acquire after Release: %v, backend %d, want %d", err, pid(c), first)
	}

	// Released inside a transaction, it is closed and another is opened.
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	p.Release(c)
	if !c.IsClosed() {
		t.Fatal("a connection released inside a transaction was kept")
	}
	if c, err = p.Acquire(ctx); err != nil || pid(c) == first {
		t.Fatalf("Acquire after a dirty Release: %v, backend %d (the old one was %d)", err, pid(c), first)
	}

	// Closed by its user, it gives its slot back.
	c.Close(ctx)
	p.Release(c)
	if c, err = p.Acquire(ctx); err != nil {
		t.Fatalf("Acquire after releasing a closed connection: %v", err)
	}
	p.Release(c)
}

func TestPoolWithoutWaitWaitsForTheContext(t *testing.T) {
	pgsrv := testenv.StartPostgres(t)
	p, err := New(Config{URL: pgsrv.URL, Size: 1, Name: "pgpool-test", Purpose: "a test"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(c)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire with the pool full: %v, want the context's deadline", err)
	}
}

func TestPoolErrorsSayWhatToCheck(t *testing.T) {
	if _, err := New(Config{URL: "postgres://x:%zz@h/db", Size: 1}); err == nil || !strings.HasPrefix(err.Error(), "config key postgres.url: ") {
		t.Fatalf("bad URL: %v", err)
	}
	if _, err := New(Config{URL: "postgres://127.0.0.1/db", Size: 0, Purpose: "a test"}); err == nil {
		t.Fatal("size 0 accepted")
	}
	port := testenv.FreePort(t) // nothing listens there
	p, err := New(Config{URL: "postgres://postgres@127.0.0.1:" + strconv.Itoa(port) + "/db", Size: 1, Purpose: "a test", ConnectTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Acquire(context.Background()); err == nil || !strings.Contains(err.Error(), "connect to Postgres for a test") || !strings.HasSuffix(err.Error(), "(check postgres.url)") {
		t.Fatalf("Acquire with no server: %v", err)
	}
	// The failed connect gave its slot back: the next one tries again
	// rather than waiting for a slot.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.Acquire(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Acquire with no server: %v", err)
	}
}
