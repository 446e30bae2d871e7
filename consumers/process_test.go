package consumers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/pipeline/consumers/shapelog"
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
// materialized log, even when it was frozen mid-batch, holding fetched and
// unacked fragments that it goes on writing when it wakes.
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
	var published []fanout.Position
	next := 1
	// Large fragments make a batch slow to write, so the zombie is caught
	// holding one.
	pad := strings.Repeat("x", 128<<10)
	publish := func(n int, v string) {
		for ; n > 0; n-- {
			f := frag("sa", uint64(next*100), 0, true, ins(fmt.Sprint(next), v), ins(fmt.Sprint(-next), pad))
			e.publish(f, "")
			published = append(published, f.Position())
			want[next], want[-next] = v, pad
			next++
		}
	}
	ackPending := func() int {
		c, err := e.bus.Stream.Consumer(ctx, fanout.ConsumerGroupName(p, 1))
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.NumAckPending
	}
	// Freeze the zombie while it holds delivered, unacked fragments. The
	// stop is confirmed by the kernel (state T), the held fragments by
	// JetStream in three reads after it, so an ack in flight at the stop
	// does not pass for work held. Bounded: the test fails after 50 tries.
	held := 0
	for attempt := 0; attempt < 50 && held == 0; attempt++ {
		publish(40, "z")
		// The zombie may persist and ack the whole lot between two looks:
		// then publish again (the next attempt).
		fetched := false
		for deadline := time.Now().Add(3 * time.Second); !fetched && time.Now().Before(deadline); {
			fetched = ackPending() > 0
		}
		if !fetched {
			e.awaitStreamEmpty()
			continue
		}
		z.Signal(syscall.SIGSTOP)
		testenv.Eventually(t, 5*time.Second, "the zombie to be stopped", func() bool { return processState(z.Pid()) == 'T' })
		held = ackPending()
		for i := 0; i < 2 && held > 0; i++ {
			time.Sleep(50 * time.Millisecond)
			held = min(held, ackPending())
		}
		if held == 0 {
			z.Signal(syscall.SIGCONT)
			e.awaitStreamEmpty()
		}
	}
	if held == 0 {
		t.Fatal("could not freeze the zombie holding unacked fragments in 50 tries")
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
	f := frag("sa", uint64(next*100), 0, true, del("1"))
	e.publish(f, "")
	published = append(published, f.Position())
	delete(want, 1)
	e.awaitStreamEmpty()
	e.awaitRows("sa", expected(want)...)
	if err := z.Stop(20 * time.Second); err != nil {
		t.Fatalf("zombie did not drain cleanly on SIGTERM: %v\n%s", err, z.Output())
	}
	if !strings.Contains(z.Output(), "newer epoch") && !strings.Contains(z.Output(), "moved away") {
		t.Fatalf("the zombie, woken holding %d fragments, did not report losing the partition:\n%s", held, z.Output())
	}

	// Readers apply every published fragment once, in order: nothing the
	// zombie wrote after the fence counts, and nothing is missing.
	var applied []fanout.Position
	zombieFrames := 0
	err := shapelog.ScanLog(e.dir, "sa", func(r shapelog.LogRecord) error {
		if r.Accepted {
			applied = append(applied, r.Position)
		} else if r.Epoch == 1 {
			zombieFrames++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(applied, published) {
		t.Fatalf("readers apply %d fragments %v, want the %d published, once each, in order", len(applied), applied, len(published))
	}
	t.Logf("the zombie was frozen holding %d fragments; %d frames at its old epoch are in the log, skipped by readers", held, zombieFrames)
}

// processState is the state letter of /proc/PID/stat (R, S, T...), or 0.
func processState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the state follows "pid (comm)"
	if i < 0 || i+2 >= len(s) {
		return 0
	}
	return s[i+2]
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
