package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout/testenv"
)

// jsClient is one of the npm clients' harness scripts in
// deploy/e2e/electric (pglite.mjs, tanstack.mjs) running as a process: the
// JSON events it prints are kept in order, and commands go to its stdin.
type jsClient struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	mu     sync.Mutex
	events []map[string]any
	stderr *lockedBuffer
	done   chan struct{}
}

// startJS runs `node script '<args as JSON>'` in deploy/e2e/electric.
func (s *stack) startJS(name, script string, args any) *jsClient {
	s.t.Helper()
	arg, err := json.Marshal(args)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command("node", script, string(arg))
	cmd.Dir = electricDir(s.t)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c := &jsClient{t: s.t, name: name, cmd: cmd, stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 256<<20)
		for sc.Scan() {
			var ev map[string]any
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				c.stderr.Write([]byte("stdout: " + sc.Text() + "\n"))
				continue
			}
			c.mu.Lock()
			c.events = append(c.events, ev)
			c.mu.Unlock()
		}
		cmd.Wait()
	}()
	s.t.Cleanup(func() {
		c.stop()
		if s.t.Failed() {
			evs := c.all()
			var tail []string
			for _, ev := range evs[max(0, len(evs)-20):] {
				b, _ := json.Marshal(ev)
				tail = append(tail, string(b[:min(len(b), 500)]))
			}
			s.t.Logf("---- %s: %d events, the last %d ----\n%s\n---- %s stderr ----\n%s", name, len(evs), len(tail), strings.Join(tail, "\n"), name, c.stderr.String())
		}
	})
	return c
}

// stop ends the client with SIGTERM (a clean stop: pglite.mjs closes its
// database), killing it after 10 s.
func (c *jsClient) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// send writes a command line to the client's stdin.
func (c *jsClient) send(line string) {
	if _, err := fmt.Fprintln(c.stdin, line); err != nil {
		c.t.Fatalf("%s: write %q: %v", c.name, line, err)
	}
}

// all is a copy of the events so far.
func (c *jsClient) all() []map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]map[string]any(nil), c.events...)
}

// failOnError fails the test if the client reported an error.
func (c *jsClient) failOnError() {
	c.t.Helper()
	for _, ev := range c.all() {
		if ev["event"] == "error" {
			c.t.Fatalf("%s reported an error: %v\n%s", c.name, ev, c.stderr.String())
		}
	}
}

// await waits until fn holds for the events so far (checking for errors).
func (c *jsClient) await(timeout time.Duration, what string, fn func(evs []map[string]any) bool) {
	c.t.Helper()
	testenv.Eventually(c.t, timeout, c.name+": "+what, func() bool {
		c.failOnError()
		return fn(c.all())
	})
}

// last is the last event named name, or nil.
func last(evs []map[string]any, name string) map[string]any {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i]["event"] == name {
			return evs[i]
		}
	}
	return nil
}
