package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// packages are the commands tests run, by binary name.
var packages = map[string]string{
	"ingest":      "./ingest/cmd/ingest",
	"flushd":      "./flushd/cmd/flushd",
	"consumer":    "./consumers/cmd/consumer",
	"fanoutctl":   "./fanout/cmd/fanoutctl",
	"shapeapi":    "./consumers/cmd/shapeapi",
	"nats-server": "github.com/nats-io/nats-server/v2",
}

var (
	binMu    sync.Mutex
	binDir   string
	binBuilt = map[string]error{} // name -> build result, once per test process
)

// Binary builds one command (a name of packages) once per test process and
// returns its path. Only what a test runs is built, so a package's tests do
// not depend on every other command compiling.
func Binary(t testing.TB, name string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	pkg, ok := packages[name]
	if !ok {
		t.Fatalf("testenv: no command named %q", name)
	}
	if binDir == "" {
		dir, err := os.MkdirTemp("", "fanout-bin-")
		if err != nil {
			t.Fatal(err)
		}
		binDir = dir
	}
	err, built := binBuilt[name]
	if !built {
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, name), pkg)
		cmd.Dir = moduleRoot()
		if out, berr := cmd.CombinedOutput(); berr != nil {
			err = fmt.Errorf("go build %s: %v\n%s", pkg, berr, out)
		}
		binBuilt[name] = err
	}
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(binDir, name)
}

// Binaries builds every command and returns the folder they are in, so a
// test can pay the build time before it starts measuring anything.
func Binaries(t testing.TB) string {
	t.Helper()
	for name := range packages {
		Binary(t, name)
	}
	return binDir
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Process is a project binary running as a child process.
type Process struct {
	Name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// StartProcess runs bin (a name from Binaries) with args and extra env
// (KEY=VALUE). It is killed when the test ends; its output is logged if
// the test failed.
func StartProcess(t testing.TB, name, bin string, args []string, env ...string) *Process {
	t.Helper()
	p := &Process{Name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(Binary(t, bin), args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Signal(syscall.SIGCONT)
		p.Kill()
		if t.Failed() || os.Getenv("FANOUT_TEST_LOGS") != "" {
			t.Logf("---- %s output ----\n%s", name, p.Output())
		}
	})
	return p
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) {
	if p.cmd.Process != nil {
		p.cmd.Process.Signal(sig)
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Process) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits up to timeout for a clean exit.
func (p *Process) Stop(timeout time.Duration) error {
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("%s did not exit within %s of SIGTERM", p.Name, timeout)
	}
}

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Wait waits for the process to end by itself.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %s", p.Name, timeout)
	}
}

// Output is everything the process printed so far.
func (p *Process) Output() string { return p.out.String() }

// Run runs a project binary to completion and returns its stdout and stderr.
func Run(t testing.TB, bin string, args []string, env ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(Binary(t, bin), args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// Eventually polls cond until it returns true or the deadline passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if poll(timeout, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	}) != nil {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

var errNotYet = errors.New("not yet")

// EventuallyErr polls cond until it returns nil or the deadline passes, and
// then fails the test with the last error, so the failure says what was
// still wrong.
func EventuallyErr(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	if err := poll(timeout, cond); err != nil {
		t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
	}
}

// poll calls cond every 50 ms until it returns nil or timeout passes, and
// returns its last error.
func poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
