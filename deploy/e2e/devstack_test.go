package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/fanout/pipeline/fanout/testenv"
)

// devstackTimeout bounds how long make run may take to be up (initdb,
// the services, the demo shapes) and to stop after a signal.
const devstackTimeout = 90 * time.Second

// A new user's make run: every command it prints runs as printed and shows
// the demo shape's rows, and closing the terminal stops every process it
// started, Postgres included, with exit status 0. So does SIGTERM, and
// Ctrl-C under make on a terminal ends make with status 0 and no error line.
func TestDevstackPrintsWorkingCommandsAndStopsEverything(t *testing.T) {
	root := devstackRoot(t)
	t.Run("SIGHUP", func(t *testing.T) {
		d := startDevstack(t, root)
		d.checkPrintedCommands()
		d.stopWith(syscall.SIGHUP)
	})
	t.Run("SIGTERM", func(t *testing.T) {
		d := startDevstack(t, root)
		d.stopWith(syscall.SIGTERM)
	})
	t.Run("Ctrl-C under make", func(t *testing.T) {
		makeRunCtrlC(t, root)
	})
}

// devstackRoot is a folder laid out as a checkout after make build: bin/
// holds the services, fanoutctl, devstack and, when the Makefile builds it,
// shapeapi. make run runs in it.
func devstackRoot(t *testing.T) string {
	t.Helper()
	built := testenv.Binaries(t)
	root := t.TempDir()
	bin := filepath.Join(root, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ingest", "flushd", "consumer", "fanoutctl"} {
		if err := os.Symlink(filepath.Join(built, name), filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	goBuild(t, filepath.Join(bin, "devstack"), "./deploy/devstack")
	if pkg := makefileBuilds(t, "shapeapi"); pkg != "" {
		goBuild(t, filepath.Join(bin, "shapeapi"), pkg)
	}
	return root
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func goBuild(t *testing.T, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = moduleRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// makefileBuilds is the package make build builds into bin/name, or "".
func makefileBuilds(t *testing.T, name string) string {
	t.Helper()
	mk, err := os.ReadFile(filepath.Join(moduleRoot(), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`-o bin/` + name + `\s+(\S+)`).FindSubmatch(mk)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// devstack is one run of bin/devstack as make run starts it.
type devstack struct {
	t    *testing.T
	root string
	cmd  *exec.Cmd
	out  *sharedOutput
	done chan struct{}
	err  error
	// pgData is the private cluster's data folder, as printed.
	pgData string
	// started are the processes running from root/bin (services, shapeapi).
	started []int
}

func startDevstack(t *testing.T, root string) *devstack {
	t.Helper()
	d := &devstack{t: t, root: root, out: &sharedOutput{}, done: make(chan struct{})}
	d.cmd = exec.Command(filepath.Join(root, "bin", "devstack"))
	d.cmd.Dir = root
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.Env = withoutEnv(os.Environ(), "FANOUT_POSTGRES_URL")
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
		for _, pid := range append(d.started, d.pgPids()...) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("---- make run output ----\n%s", d.out.String())
		}
	})
	testenv.Eventually(t, devstackTimeout, "make run to print that it is running", func() bool {
		select {
		case <-d.done:
			t.Fatalf("make run exited before it was running (%v):\n%s", d.err, d.out.String())
		default:
		}
		return strings.Contains(d.out.String(), "\nrunning;")
	})
	m := regexp.MustCompile(`\(data in (\S+)\)`).FindStringSubmatch(d.out.String())
	if m == nil {
		t.Fatalf("make run did not print where its Postgres keeps its data:\n%s", d.out.String())
	}
	d.pgData = m[1]
	d.started = processesUnder(filepath.Join(root, "bin"))
	if len(d.started) < 4 {
		t.Fatalf("make run runs %d processes from bin/ (%v), want flushd, 2 consumers and ingest", len(d.started), d.started)
	}
	if len(d.pgPids()) == 0 {
		t.Fatalf("no postgres process runs on %s", d.pgData)
	}
	return d
}

// printed are the command lines make run printed after prefix.
func (d *devstack) printed(prefix string) []string {
	var out []string
	for _, line := range strings.Split(d.out.String(), "\n") {
		if s, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			out = append(out, strings.TrimSpace(s))
		}
	}
	return out
}

// checkPrintedCommands runs every printed command in a shell, from another
// directory, as a user pastes it, and checks that rows come out.
func (d *devstack) checkPrintedCommands() {
	t := d.t
	rows := d.printed("rows:")
	if len(rows) < 4 {
		t.Fatalf("make run printed %d rows commands, want one or more per demo shape:\n%s", len(rows), d.out.String())
	}
	elsewhere := t.TempDir()
	for _, line := range rows {
		var out string
		testenv.EventuallyErr(t, 60*time.Second, "rows from `"+line+"`", func() error {
			stdout, stderr, err := shell(elsewhere, line)
			out = stdout
			if err != nil {
				return fmt.Errorf("%v: %s%s", err, stdout, stderr)
			}
			if n := countRows(stdout); n == 0 {
				return fmt.Errorf("no rows in its output %q", truncateText(stdout, 300))
			}
			return nil
		})
		t.Logf("`%s` printed %d rows", truncateText(line, 120), countRows(out))
	}

	lines := strings.Split(d.out.String(), "\n")
	live := ""
	for i, line := range lines {
		if strings.HasPrefix(line, "watch ") && i+1 < len(lines) {
			live = strings.TrimSpace(lines[i+1])
		}
	}
	if live == "" {
		t.Fatalf("make run printed no command to watch a shape change live:\n%s", d.out.String())
	}
	d.watchLive(elsewhere, live)
}

// watchLive runs the printed live command and waits until it has shown
// the shape change: two outputs with different rows (polling fanoutctl) or
// a batch of changes (a live curl).
func (d *devstack) watchLive(dir, line string) {
	t := d.t
	cmd := exec.Command("sh", "-c", line)
	cmd.Dir = dir
	out := &sharedOutput{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the shell and its curl or fanoutctl
		cmd.Wait()
	}()
	testenv.Eventually(t, 60*time.Second, "the live command `"+line+"` to show the shape change", func() bool {
		o := out.String()
		if strings.Contains(line, "curl") {
			return strings.Contains(o, `"operation"`)
		}
		batches := strings.Split(strings.TrimSpace(o), "\n\n")
		return len(batches) >= 2 && countRows(batches[0]) > 0 && countRows(batches[len(batches)-1]) > 0 && batches[0] != batches[len(batches)-1]
	})
	t.Logf("`%s` showed the shape change:\n%s", truncateText(line, 120), truncateText(out.String(), 600))
}

// stopWith sends sig to make run's process group, as a closed terminal or
// kill does, and checks that it exits 0 and leaves nothing running.
func (d *devstack) stopWith(sig syscall.Signal) {
	t := d.t
	syscall.Kill(-d.cmd.Process.Pid, sig)
	select {
	case <-d.done:
	case <-time.After(devstackTimeout):
		t.Fatalf("make run still runs %s after %s", devstackTimeout, sig)
	}
	if d.err != nil {
		t.Errorf("make run ended with %v after %s, want exit status 0", d.err, sig)
	}
	for _, pid := range d.started {
		if alive(pid) {
			t.Errorf("process %d (%s) started by make run still runs after make run ended on %s", pid, cmdline(pid), sig)
		}
	}
	if pids := d.pgPids(); len(pids) > 0 {
		t.Errorf("Postgres (pids %v on %s) still runs after make run ended on %s", pids, d.pgData, sig)
	}
	if _, err := os.Stat(d.pgData); err == nil {
		t.Errorf("the private Postgres folder %s is left behind after %s", d.pgData, sig)
	}
	if !strings.Contains(d.out.String(), "stopped all services") {
		t.Errorf("make run did not say it stopped the services after %s", sig)
	}
}

func (d *devstack) pgPids() []int {
	if d.pgData == "" {
		return nil
	}
	return processesWith("-D " + d.pgData)
}

// makeRunCtrlC runs the Makefile's run target (with build and go build
// skipped: GO=true, -o build) on a terminal and types Ctrl-C once it runs.
func makeRunCtrlC(t *testing.T, root string) {
	master, slave := openPTY(t)
	cmd := exec.Command("make", "--no-print-directory", "-f", filepath.Join(moduleRoot(), "Makefile"), "-o", "build", "GO=true", "run")
	cmd.Dir = root
	cmd.Env = withoutEnv(os.Environ(), "FANOUT_POSTGRES_URL")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	out := &sharedOutput{}
	copied := make(chan struct{})
	go func() { readAll(master, out); close(copied) }()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("---- make run on a terminal ----\n%s", out.String())
		}
	})
	testenv.Eventually(t, devstackTimeout, "make run on a terminal to print that it is running", func() bool {
		return strings.Contains(out.String(), "\nrunning;")
	})
	m := regexp.MustCompile(`\(data in (\S+)\)`).FindStringSubmatch(out.String())
	started := processesUnder(filepath.Join(root, "bin"))
	master.Write([]byte{3}) // Ctrl-C
	var err error
	select {
	case err = <-done:
	case <-time.After(devstackTimeout):
		t.Fatalf("make run still runs %s after Ctrl-C", devstackTimeout)
	}
	master.Close()
	<-copied
	if err != nil {
		t.Errorf("make run ended with %v after Ctrl-C, want exit status 0", err)
	}
	if strings.Contains(out.String(), "make: ***") {
		t.Errorf("make printed an error line after Ctrl-C:\n%s", out.String())
	}
	for _, pid := range started {
		if alive(pid) {
			t.Errorf("process %d (%s) still runs after Ctrl-C", pid, cmdline(pid))
		}
	}
	if m != nil && len(processesWith("-D "+m[1])) > 0 {
		t.Errorf("Postgres on %s still runs after Ctrl-C", m[1])
	}
}

// openPTY opens a pseudo-terminal pair (posix_openpt, unlockpt, ptsname).
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	var unlock int32
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, master.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Fatalf("unlock pty: %v", e)
	}
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, master.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Fatalf("pty number: %v", e)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close() })
	return master, slave
}

// readAll copies r into w until r fails (a pty's master reads EIO once
// every slave is closed).
func readAll(r *os.File, w *sharedOutput) {
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		w.Write(buf[:n])
		if err != nil {
			return
		}
	}
}

// shell runs line with sh -c in dir, bounded to 30 s.
func shell(dir, line string) (stdout, stderr string, err error) {
	cmd := exec.Command("sh", "-c", line)
	cmd.Dir = dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", "", err
	}
	timer := time.AfterFunc(30*time.Second, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	defer timer.Stop()
	err = cmd.Wait()
	return o.String(), e.String(), err
}

// countRows counts the rows in a command's output: JSON objects one per
// line (fanoutctl shape rows) or the row messages of a JSON array
// (GET /v1/shape).
func countRows(out string) int {
	out = strings.TrimSpace(out)
	if strings.HasPrefix(out, "[") {
		var msgs []map[string]any
		if json.Unmarshal([]byte(out), &msgs) != nil {
			return 0
		}
		n := 0
		for _, m := range msgs {
			if _, ok := m["value"]; ok {
				n++
			}
		}
		return n
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		var r map[string]any
		if json.Unmarshal([]byte(line), &r) == nil && len(r) > 0 {
			n++
		}
	}
	return n
}

// processesUnder are the pids whose executable path starts with dir.
func processesUnder(dir string) []int {
	return processesWhere(func(argv []string) bool { return len(argv) > 0 && strings.HasPrefix(argv[0], dir+"/") })
}

// processesWith are the pids whose command line contains s.
func processesWith(s string) []int {
	return processesWhere(func(argv []string) bool { return strings.Contains(strings.Join(argv, " "), s) })
}

func processesWhere(match func(argv []string) bool) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"); match(argv) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// alive is true for a process that exists and is not a zombie.
func alive(pid int) bool {
	st := processState(pid)
	return st != 0 && st != 'Z'
}

// processState is the state letter of /proc/PID/stat (R, S, T, Z...), or 0
// when there is no such process.
func processState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) state ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return 0
	}
	return s[i+2]
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
}

func withoutEnv(env []string, key string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// sharedOutput is an io.Writer that several goroutines write and read.
type sharedOutput struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *sharedOutput) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *sharedOutput) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
