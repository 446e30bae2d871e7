package consumers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// startConsumerProcess runs bin/consumer with the env's settings.
func (e *env) startConsumerProcess(id string, extra ...string) *testenv.Process {
	e.t.Helper()
	args := []string{
		"--consumer.id", id, "--nats.url", e.ns.URL, "--storage.dir", e.dir, "--http.addr", "",
		"--consumer.heartbeat_interval", "100ms", "--bus.partitions", fmt.Sprint(testPartitions), "--consumer.batch", "16",
	}
	args = append(args, extra...)
	return testenv.StartProcess(e.t, "consumer "+id, "consumer", args)
}

func logSize(t *testing.T, e *env, handle string) int64 {
	t.Helper()
	fi, err := os.Stat(filepath.Join(e.dir, "shapes", handle, "log"))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// A SIGKILLed consumer loses nothing: after rebinding, the log is exact.
func TestProcessKilledMidLoadThenRebound(t *testing.T) {
	e := newEnv(t)
	e.addShape("sa")
	p := e.startConsumerProcess("c1")
	e.bindAll("c1", 1)
	const n = 300
	want := map[int]string{}
	for i := 1; i <= n; i++ {
		want[i] = "w"
		e.publish(frag("sa", uint64(i*100), 0, true, ins(fmt.Sprint(i), "v"), upd("", fmt.Sprint(i), "w")), "")
		if i == n/3 {
			testenv.Eventually(t, 20*time.Second, "the process to persist something", func() bool { return len(e.rows("sa")) > 0 })
			p.Kill()
		}
	}
	e.start("c2")
	e.bindAll("c2", 2)
	e.awaitStreamEmpty()
	e.awaitRows("sa", expected(want)...)
}

// A zombie (SIGSTOP past its replacement, then SIGCONT) cannot change the
// materialized log, even when it was frozen holding fetched fragments.
func TestProcessZombieWritesNothingAfterReplacement(t *testing.T) {
	e := newEnv(t)
	e.addShape("sa")
	p := part("sa")
	z := e.startConsumerProcess("zombie", "--consumer.batch", "4")
	e.bind(p, "zombie", 1)
	ctx := context.Background()
	testenv.Eventually(t, 20*time.Second, "the first owner to create its durable consumer", func() bool {
		_, err := e.bus.Stream.Consumer(ctx, fanout.ConsumerGroupName(p, 1))
		return err == nil
	})
	want := map[int]string{}
	next := 1
	publish := func(n int, v string) {
		for ; n > 0; n-- {
			e.publish(frag("sa", uint64(next*100), 0, true, ins(fmt.Sprint(next), v)), "")
			want[next] = v
			next++
		}
	}
	// Freeze the zombie while it holds delivered, unacked fragments; try a
	// bounded number of times.
	held := false
	for attempt := 0; attempt < 20 && !held; attempt++ {
		publish(40, "z")
		z.Signal(syscall.SIGSTOP)
		c, err := e.bus.Stream.Consumer(ctx, fanout.ConsumerGroupName(p, 1))
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if held = info.NumAckPending > 0; !held {
			z.Signal(syscall.SIGCONT)
			e.awaitStreamEmpty()
		}
	}
	if !held {
		t.Log("could not freeze the zombie holding fragments; testing a frozen idle zombie")
	}
	e.start("c2")
	e.bind(p, "c2", 2)
	publish(10, "c2")
	e.awaitStreamEmpty()
	e.awaitRows("sa", expected(want)...)

	z.Signal(syscall.SIGCONT)
	testenv.Eventually(t, 20*time.Second, "the zombie to notice it lost the partition", func() bool {
		hb := e.heartbeat("zombie")
		if hb == nil || hb.Sent.Before(time.Now().Add(-time.Second)) {
			return false
		}
		_, owned := hb.Owned[p]
		return !owned
	})
	e.publish(frag("sa", uint64(next*100), 0, true, del("1")), "")
	delete(want, 1)
	e.awaitStreamEmpty()
	e.awaitRows("sa", expected(want)...)
	if err := z.Stop(20 * time.Second); err != nil {
		t.Fatalf("zombie did not drain cleanly on SIGTERM: %v\n%s", err, z.Output())
	}
	if held && !strings.Contains(z.Output(), "newer epoch") && !strings.Contains(z.Output(), "moved away") {
		t.Fatalf("the zombie did not report losing the partition:\n%s", z.Output())
	}
}

// expected renders want as sorted "id=v" rows.
func expected(want map[int]string) []string {
	ids := make([]int, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = fmt.Sprintf("%d=%s", id, want[id])
	}
	return out
}

// A bad config is one line on stderr and exit status 2.
func TestProcessBadConfigExits2(t *testing.T) {
	cmd := exec.Command(testenv.Binary(t, "consumer"), "--storage.dir", t.TempDir())
	cmd.Env = append(os.Environ(), "FANOUT_CONSUMER_ID=")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want status 2; output %s", err, out)
	}
	if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "consumer.id") {
		t.Fatalf("want one line naming consumer.id, got %q", out)
	}
}
