// Package testenv starts the real components tests run against: a private
// PostgreSQL cluster, an embedded NATS JetStream server, and the project's
// binaries as OS processes. Everything is stopped and removed when the test
// ends, whether it passed or not.
package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a private cluster with wal_level=logical.
type Postgres struct {
	URL     string
	Port    int
	DataDir string
	logFile string
	owner   *user.User // nil when the test does not run as root
}

// PostgresOption changes a server setting (-c name=value) before start.
type PostgresOption func(settings map[string]string)

// WithSetting sets one postgresql.conf parameter.
func WithSetting(name, value string) PostgresOption {
	return func(s map[string]string) { s[name] = value }
}

// StartPostgres initdbs and starts a cluster on a free port. It skips the
// test when the PostgreSQL server binaries are not installed.
func StartPostgres(t testing.TB, opts ...PostgresOption) *Postgres {
	t.Helper()
	initdb, err := exec.LookPath("initdb")
	if err != nil {
		t.Fatalf("initdb not found on PATH: install the PostgreSQL 15 server binaries (Debian: apt-get install postgresql-15, then add /usr/lib/postgresql/15/bin to PATH)")
	}
	root, err := os.MkdirTemp("", "fanout-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p := &Postgres{DataDir: filepath.Join(root, "data"), logFile: filepath.Join(root, "postgres.log")}
	if os.Geteuid() == 0 {
		// The server refuses to run as root: run it as the postgres user,
		// in a folder that user owns.
		if p.owner, err = user.Lookup("postgres"); err != nil {
			t.Fatalf("running as root but there is no postgres system user to run the server as: %v", err)
		}
		if err := os.Chmod(root, 0o755); err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(p.owner.Uid)
		gid, _ := strconv.Atoi(p.owner.Gid)
		if err := os.Chown(root, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { p.stop(t); os.RemoveAll(root) })

	if out, err := p.command(initdb, "-D", p.DataDir, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.Port = FreePort(t)
	settings := map[string]string{
		"wal_level":               "logical",
		"max_wal_senders":         "10",
		"max_replication_slots":   "10",
		"fsync":                   "off",
		"synchronous_commit":      "off",
		"full_page_writes":        "off",
		"listen_addresses":        "127.0.0.1",
		"unix_socket_directories": root,
		"port":                    strconv.Itoa(p.Port),
		"wal_sender_timeout":      "60s",
	}
	for _, o := range opts {
		o(settings)
	}
	var conf strings.Builder
	for k, v := range settings {
		fmt.Fprintf(&conf, "%s = '%s'\n", k, v)
	}
	if err := os.WriteFile(filepath.Join(p.DataDir, "postgresql.auto.conf"), []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	p.chown(filepath.Join(p.DataDir, "postgresql.auto.conf"))
	p.Start(t)
	p.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
	return p
}

// Start starts (or restarts after Stop) the server and waits until it accepts connections.
func (p *Postgres) Start(t testing.TB) {
	t.Helper()
	pgctl, err := exec.LookPath("pg_ctl")
	if err != nil {
		t.Fatal("pg_ctl not found on PATH")
	}
	if out, err := p.command(pgctl, "-D", p.DataDir, "-l", p.logFile, "-w", "-t", "60", "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(p.logFile)
		t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
}

// Stop stops the server at once (immediate mode, like a crash).
func (p *Postgres) Stop(t testing.TB) {
	t.Helper()
	p.stop(t)
}

func (p *Postgres) stop(t testing.TB) {
	pgctl, err := exec.LookPath("pg_ctl")
	if err != nil {
		return
	}
	if _, err := os.Stat(filepath.Join(p.DataDir, "postmaster.pid")); err != nil {
		return
	}
	if out, err := p.command(pgctl, "-D", p.DataDir, "-m", "immediate", "-w", "stop").CombinedOutput(); err != nil {
		t.Logf("pg_ctl stop: %v\n%s", err, out)
	}
}

// Log returns the server log so far.
func (p *Postgres) Log() string {
	b, _ := os.ReadFile(p.logFile)
	return string(b)
}

func (p *Postgres) command(name string, args ...string) *exec.Cmd {
	if p.owner == nil {
		return exec.Command(name, args...)
	}
	return exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
}

func (p *Postgres) chown(path string) {
	if p.owner == nil {
		return
	}
	uid, _ := strconv.Atoi(p.owner.Uid)
	gid, _ := strconv.Atoi(p.owner.Gid)
	os.Chown(path, uid, gid)
}

// Connect opens a plain connection, closed when the test ends.
func (p *Postgres) Connect(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.URL)
	if err != nil {
		t.Fatalf("connect to test postgres: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Exec runs SQL statements and fails the test on error.
func (p *Postgres) Exec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("exec %q: %v", truncate(sql, 200), err)
	}
}

// FreePort returns a TCP port that was free a moment ago on 127.0.0.1.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
