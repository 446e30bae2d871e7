package pgpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/fanout/testenv"
)

// A connection the server closed while it was idle (a restart, a
// terminated backend) is not handed out: before this, the snapshot pool
// gave it to the next snapshot, whose first statement failed.
func TestPoolReplacesConnectionsClosedWhileIdle(t *testing.T) {
	pgsrv := testenv.StartPostgres(t)
	admin := pgsrv.Connect(t)
	p, err := New(Config{URL: pgsrv.URL, Size: 1, Name: "pgpool-idle", Purpose: "a test", ConnectTimeout: 10 * time.Second})
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
	first := pid(c)
	p.Release(c)
	pgsrv.Exec(t, admin, fmt.Sprintf("SELECT pg_terminate_backend(%d)", first))
	time.Sleep(checkIdleAfter + 100*time.Millisecond) // idle long enough to be checked
	c, err = p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(c)
	if pid(c) == first {
		t.Fatal("the connection the server closed was handed out again")
	}
	if err := c.QueryRow(ctx, "SELECT 1").Scan(new(int)); err != nil {
		t.Fatalf("the new connection does not work: %v", err)
	}
}

// Begin waits out a Postgres restart (bounded by Reconnect), and gives up
// with the config key to raise once the bound passes.
func TestPoolBeginRetriesAcrossARestart(t *testing.T) {
	pgsrv := testenv.StartPostgres(t)
	p, err := New(Config{URL: pgsrv.URL, Size: 1, Name: "pgpool-restart", Purpose: "a test", ConnectTimeout: 5 * time.Second,
		Reconnect: time.Minute, ReconnectKey: "test.reconnect"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, tx, err := p.Begin(ctx, pgx.TxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	p.Release(c)

	pgsrv.Stop(t)
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		time.Sleep(2 * time.Second)
		pgsrv.Start(t)
	}()
	start := time.Now()
	c, tx, err = p.Begin(ctx, pgx.TxOptions{})
	<-restarted
	if err != nil {
		t.Fatalf("Begin across a restart: %v", err)
	}
	t.Logf("Begin waited %s for the restart", time.Since(start).Round(time.Millisecond))
	if err := tx.QueryRow(ctx, "SELECT 1").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	p.Release(c)

	short, err := New(Config{URL: pgsrv.URL, Size: 1, Purpose: "a test", ConnectTimeout: time.Second, Reconnect: 500 * time.Millisecond, ReconnectKey: "test.reconnect"})
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	pgsrv.Stop(t)
	defer pgsrv.Start(t)
	if _, _, err := short.Begin(ctx, pgx.TxOptions{}); err == nil || !IsConnectionError(err) || !containsAll(err.Error(), "retried for 500ms", "test.reconnect") {
		t.Fatalf("Begin with Postgres down for longer than Reconnect: %v", err)
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

func TestIsConnectionError(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}, true},
		{&pgconn.PgError{Code: "57P02"}, true},
		{&pgconn.PgError{Code: "57P03", Message: "the database system is starting up"}, true},
		{&pgconn.PgError{Code: "08006"}, true},
		{fmt.Errorf("begin: %w", &pgconn.PgError{Code: "08P01"}), true},
		{&pgconn.PgError{Code: "57014", Message: "canceling statement due to statement timeout"}, false},
		{&pgconn.PgError{Code: "42P01"}, false},
		{&pgconn.PgError{Code: "28P01"}, false},
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), true},
		{fmt.Errorf("x: %w", pgconn.ErrConnClosed), true},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		{context.Canceled, false},
		{fmt.Errorf("timeout: %w", context.DeadlineExceeded), false},
		{errors.New("snapshot failed"), false},
		{nil, false},
	} {
		if got := IsConnectionError(c.err); got != c.want {
			t.Errorf("IsConnectionError(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
