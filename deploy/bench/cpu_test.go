package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ---- where the CPU goes ----

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTicks = 100

// cpuSeconds is the user + system CPU time process pid has used, 0 if it
// cannot be read.
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; utime and stime are the
	// 12th and 13th fields after its closing parenthesis.
	_, rest, ok := strings.Cut(string(data), ") ")
	if !ok {
		return 0
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / clockTicks
}

// postgresPIDs lists the running postgres server processes.
func postgresPIDs() []int {
	var pids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		comm, err := os.ReadFile(filepath.Join(d, "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(d)); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cpuUse is CPU seconds used so far, by component.
type cpuUse map[string]float64

// cpuNow reads the CPU time of every pipeline process, of Postgres, and of
// this process, which runs the embedded NATS server (and the benchmark's
// own light polling).
func (p *pipe) cpuNow() cpuUse {
	u := cpuUse{"nats (+bench)": cpuSeconds(os.Getpid())}
	for name, proc := range p.procs {
		if strings.HasPrefix(name, "c") {
			u["consumers"] += cpuSeconds(proc.Pid())
		} else {
			u[name] += cpuSeconds(proc.Pid())
		}
	}
	for name, pid := range p.pids {
		u[name] += cpuSeconds(pid)
	}
	for _, pid := range postgresPIDs() {
		u["postgres"] += cpuSeconds(pid)
	}
	return u
}

// describeCPU renders the CPU used between two readings per change, busiest
// component first, and the total in cores.
func describeCPU(before, after cpuUse, changes int, elapsed time.Duration) (perChange string, note string) {
	type part struct {
		name string
		sec  float64
	}
	var parts []part
	total := 0.0
	for name, a := range after {
		d := a - before[name]
		parts = append(parts, part{name, d})
		total += d
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i].sec > parts[j].sec })
	var b strings.Builder
	for i, pt := range parts {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %.0f", pt.name, pt.sec/float64(changes)*1e6)
	}
	return fmt.Sprintf("%.0f µs", total/float64(changes)*1e6),
		fmt.Sprintf("µs of CPU per change: %s; %.2f of this machine's cores busy on average", b.String(), total/elapsed.Seconds())
}

// ---- the bus's own round trip ----

// rawCycle is what JetStream alone does of the pipeline's bus work: msgs
// messages of fragment size published async with Nats-Msg-Id into a
// work-queue stream with 64 partition consumers (filtered durable pull
// consumers, as the consumers make them), pulled by two connections (as two
// consumer processes) and acked one by one, the last of each pull with a
// confirmed ack; nothing is decoded or persisted. The rate is from the first
// publish to the last ack.
func rawCycle(ctx context.Context, url string, msgs, shapes int) (float64, error) {
	const partitions = 64
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	pub, err := nats.Connect(url)
	if err != nil {
		return 0, err
	}
	defer pub.Close()
	js, _ := jetstream.New(pub, jetstream.WithPublishAsyncMaxPending(2048))
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "CYCLE", Subjects: []string{"cycle.>"}, Storage: jetstream.FileStorage,
		Retention: jetstream.WorkQueuePolicy, Duplicates: 2 * time.Minute})
	if err != nil {
		return 0, err
	}
	defer js.DeleteStream(context.Background(), "CYCLE")
	var conns [2]*nats.Conn
	for i := range conns {
		if conns[i], err = nats.Connect(url); err != nil {
			return 0, err
		}
		defer conns[i].Close()
	}
	var cons [partitions]jetstream.Consumer
	for p := range partitions {
		cjs, _ := jetstream.New(conns[p%2])
		s, err := cjs.Stream(ctx, "CYCLE")
		if err != nil {
			return 0, err
		}
		if cons[p], err = s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: fmt.Sprintf("p%d", p), FilterSubject: fmt.Sprintf("cycle.%d.*", p),
			AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1024, MemoryStorage: true}); err != nil {
			return 0, err
		}
	}
	var acked atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for p := range partitions {
		wg.Go(func() { drainPartition(ctx, cons[p], &acked, int64(msgs), done) })
	}
	body := []byte(strings.Repeat("x", 180))
	for i := 0; i < msgs; i++ {
		shape := i % shapes
		if _, err := js.PublishAsync(fmt.Sprintf("cycle.%d.bench%06d", shape%partitions, shape), body, jetstream.WithMsgID(strconv.Itoa(i)), jetstream.WithStallWait(time.Minute)); err != nil {
			close(done)
			wg.Wait()
			return 0, err
		}
	}
	wg.Wait()
	if n := acked.Load(); n < int64(msgs) {
		return 0, fmt.Errorf("bus cycle: %d of %d messages acked before the deadline", n, msgs)
	}
	return rate(msgs, time.Since(start)), nil
}

// drainPartition pulls and acks until every message of the run is acked.
func drainPartition(ctx context.Context, c jetstream.Consumer, acked *atomic.Int64, total int64, done <-chan struct{}) {
	for acked.Load() < total && ctx.Err() == nil {
		select {
		case <-done:
			return
		default:
		}
		batch, err := c.FetchNoWait(256)
		if err != nil {
			continue
		}
		var got []jetstream.Msg
		for m := range batch.Messages() {
			got = append(got, m)
		}
		if len(got) == 0 {
			if batch, err = c.Fetch(1, jetstream.FetchMaxWait(200*time.Millisecond)); err != nil {
				continue
			}
			for m := range batch.Messages() {
				got = append(got, m)
			}
		}
		for i, m := range got {
			if i == len(got)-1 {
				m.DoubleAck(ctx)
			} else {
				m.Ack()
			}
		}
		acked.Add(int64(len(got)))
	}
}
