// Package testenv starts the real components tests run against: a private
// PostgreSQL cluster, an embedded NATS JetStream server or a JetStream
// cluster of nats-server processes, and the project's binaries as OS
// processes. Everything is stopped and removed when the test
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
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a private cluster with wal_level=logical.
type Postgres struct {
	URL     string
	Port    int
	DataDir string
	root    string
	logFile string
	owner   *user.User // nil when the test does not run as root
}

// PostgresOption changes a server setting (-c name=value) before start.
type PostgresOption func(settings map[string]string)

// WithSetting sets one postgresql.conf parameter.
func WithSetting(name, value string) PostgresOption {
	return func(s map[string]string) { s[name] = value }
}

// StartPostgres initdbs and starts a cluster on a free port, stopped and
// removed when the test ends.
func StartPostgres(t testing.TB, opts ...PostgresOption) *Postgres {
	t.Helper()
	p, err := NewPostgres(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// NewPostgres initdbs and starts a cluster on a free port in a new scratch
// folder. Close stops it and removes the folder.
func NewPostgres(opts ...PostgresOption) (*Postgres, error) {
	initdb, err := exec.LookPath("initdb")
	if err != nil {
		return nil, fmt.Errorf("initdb not found on PATH: install the PostgreSQL 15 server binaries (Debian: apt-get install postgresql-15, then add /usr/lib/postgresql/15/bin to PATH)")
	}
	root, err := os.MkdirTemp("", "fanout-pg-")
	if err != nil {
		return nil, err
	}
	p := &Postgres{root: root, DataDir: filepath.Join(root, "data"), logFile: filepath.Join(root, "postgres.log")}
	if os.Geteuid() == 0 {
		// The server refuses to run as root: run it as the postgres user,
		// in a folder that user owns.
		if p.owner, err = user.Lookup("postgres"); err != nil {
			os.RemoveAll(root)
			return nil, fmt.Errorf("running as root but there is no postgres system user to run the server as: %v", err)
		}
		if err := os.Chmod(root, 0o755); err != nil {
			return nil, err
		}
		p.chown(root)
	}
	if out, err := p.command(initdb, "-D", p.DataDir, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		p.Close()
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	if p.Port, err = freePort(); err != nil {
		p.Close()
		return nil, err
	}
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
	confFile := filepath.Join(p.DataDir, "postgresql.auto.conf")
	if err := os.WriteFile(confFile, []byte(conf.String()), 0o600); err != nil {
		p.Close()
		return nil, err
	}
	p.chown(confFile)
	if err := p.start(); err != nil {
		p.Close()
		return nil, err
	}
	p.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
	return p, nil
}

// StartStandby makes a streaming standby of p (pg_basebackup, with
// standby.signal and primary_conninfo) and starts it on a free port; it is
// stopped and removed when the test ends. Promote makes it a primary.
func (p *Postgres) StartStandby(t testing.TB) *Postgres {
	t.Helper()
	root, err := os.MkdirTemp("", "fanout-pg-standby-")
	if err != nil {
		t.Fatal(err)
	}
	sb := &Postgres{root: root, DataDir: filepath.Join(root, "data"), logFile: filepath.Join(root, "postgres.log"), owner: p.owner}
	t.Cleanup(sb.Close)
	if sb.owner != nil {
		os.Chmod(root, 0o755)
		sb.chown(root)
	}
	basebackup, err := exec.LookPath("pg_basebackup")
	if err != nil {
		t.Fatal("pg_basebackup not found on PATH: install the PostgreSQL server binaries")
	}
	if out, err := sb.command(basebackup, "-D", sb.DataDir, "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port), "-U", "postgres",
		"-X", "stream", "-R", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	if sb.Port, err = freePort(); err != nil {
		t.Fatal(err)
	}
	// postgresql.auto.conf came with the backup: the later lines win.
	conf := filepath.Join(sb.DataDir, "postgresql.auto.conf")
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "port = '%d'\nunix_socket_directories = '%s'\nhot_standby = 'on'\n", sb.Port, root)
	f.Close()
	if err := sb.start(); err != nil {
		t.Fatal(err)
	}
	sb.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", sb.Port)
	return sb
}

// Promote ends a standby's recovery: it becomes a primary on a new timeline.
func (p *Postgres) Promote(t testing.TB) {
	t.Helper()
	pgctl, err := exec.LookPath("pg_ctl")
	if err != nil {
		t.Fatal("pg_ctl not found on PATH")
	}
	if out, err := p.command(pgctl, "-D", p.DataDir, "-w", "-t", "60", "promote").CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl promote: %v\n%s\n%s", err, out, p.Log())
	}
}

// Close stops the server and removes its folder.
func (p *Postgres) Close() {
	p.stop()
	os.RemoveAll(p.root)
}

// Start starts the server again after Stop.
func (p *Postgres) Start(t testing.TB) {
	t.Helper()
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
}

func (p *Postgres) start() error {
	pgctl, err := exec.LookPath("pg_ctl")
	if err != nil {
		return fmt.Errorf("pg_ctl not found on PATH")
	}
	if out, err := p.command(pgctl, "-D", p.DataDir, "-l", p.logFile, "-w", "-t", "60", "start").CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, p.Log())
	}
	return nil
}

// Stop stops the server at once (immediate mode, like a crash).
func (p *Postgres) Stop(t testing.TB) {
	t.Helper()
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
}

func (p *Postgres) stop() error {
	pgctl, err := exec.LookPath("pg_ctl")
	if err != nil {
		return nil
	}
	if _, err := os.Stat(filepath.Join(p.DataDir, "postmaster.pid")); err != nil {
		return nil
	}
	if out, err := p.command(pgctl, "-D", p.DataDir, "-m", "immediate", "-w", "stop").CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return nil
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

// FreePort returns a TCP port that was free a moment ago on 127.0.0.1 and
// that no earlier call in this process returned.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// handedOut is every port freePort returned. The kernel may give a port
// back as soon as its probe listener closes, so without it two callers
// setting up one cluster could be given the same port (a chaos run failed
// on "Duplicate route entry detected" when two nodes got one route port).
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

func freePort() (int, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	const attempts = 100
	for range attempts {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free TCP port on 127.0.0.1 that this process has not used already, after %d tries", attempts)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
