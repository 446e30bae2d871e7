package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapes"
	"github.com/fanout/pipeline/fanout/shapestate"
	"github.com/fanout/pipeline/flushd"
)

// Status is what `fanoutctl status --json` prints.
type Status struct {
	SafeLSN         *fanout.SafeLSN        `json:"safe"`
	IngestPublished *fanout.IngestProgress `json:"ingest"`
	Slot            *flushd.Slot           `json:"slot,omitempty"`
	SlotError       string                 `json:"slot_error,omitempty"`
	// Continuity is ingest's report of the replication stream (continuity.go).
	Continuity   *fanout.Continuity    `json:"continuity,omitempty"`
	PendingMsgs  uint64                `json:"pending_fragments"`
	PendingBytes uint64                `json:"pending_bytes"`
	DeadLettered uint64                `json:"dead_lettered"`
	Consumers    []ConsumerStatus      `json:"consumers"`
	Bindings     []fanout.Binding      `json:"bindings"`
	Failed       []fanout.ShapeFailure `json:"failed_shapes"`
	Snapshots    SnapshotStatus        `json:"snapshots"`
}

// SnapshotStatus counts the shapes by snapshot state and lists those not
// ready: the ones being snapshotted (with progress) and the failed ones.
type SnapshotStatus struct {
	Counts  map[shapestate.Phase]int `json:"counts"`
	NotDone []*shapestate.State      `json:"not_ready"`
	Error   string                   `json:"error,omitempty"`
}

// ConsumerStatus is one consumer as its last heartbeat shows it.
type ConsumerStatus struct {
	fanout.Heartbeat
	HeartbeatAge string `json:"heartbeat_age"`
	Partitions   int    `json:"bound_partitions"`
}

func status(ctx context.Context, cfg Config, bus *fanout.Bus, cmd command) error {
	st := Status{Consumers: []ConsumerStatus{}, Bindings: []fanout.Binding{}, Failed: []fanout.ShapeFailure{}}
	if e, err := bus.State.Get(ctx, fanout.KeySafeLSN); err == nil {
		st.SafeLSN, _ = fanout.DecodeSafeLSN(e.Value())
	}
	if e, err := bus.State.Get(ctx, fanout.KeyIngestPublished); err == nil {
		st.IngestPublished, _ = fanout.DecodeIngestProgress(e.Value())
	}
	if e, err := bus.State.Get(ctx, fanout.KeyContinuity); err == nil {
		st.Continuity, _ = fanout.DecodeContinuity(e.Value())
	}
	if cfg.Postgres.URL != "" {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		slot, err := flushd.SlotLag(pctx, cfg.Postgres.URL, cfg.Postgres.Slot)
		cancel()
		if err != nil {
			st.SlotError = slotError(err, st.IngestPublished != nil, st.Continuity)
		}
		st.Slot = slot
	}
	if info, err := bus.Stream.Info(ctx); err == nil {
		st.PendingMsgs, st.PendingBytes = info.State.Msgs, info.State.Bytes
	}
	if info, err := bus.DeadLetter.Info(ctx); err == nil {
		st.DeadLettered = info.State.Msgs
	}
	owned := map[string]int{}
	if err := eachValue(ctx, bus.Bindings, func(_ string, v []byte) {
		if b, err := fanout.DecodeBinding(v); err == nil {
			st.Bindings = append(st.Bindings, *b)
			owned[b.Consumer]++
		}
	}); err != nil {
		return err
	}
	sort.Slice(st.Bindings, func(i, j int) bool { return st.Bindings[i].Partition < st.Bindings[j].Partition })
	if err := eachValue(ctx, bus.Consumers, func(_ string, v []byte) {
		if h, err := fanout.DecodeHeartbeat(v); err == nil {
			st.Consumers = append(st.Consumers, ConsumerStatus{Heartbeat: *h,
				HeartbeatAge: time.Since(h.Sent).Round(100 * time.Millisecond).String(), Partitions: owned[h.Consumer]})
		}
	}); err != nil {
		return err
	}
	if err := eachValue(ctx, bus.Failed, func(_ string, v []byte) {
		var f fanout.ShapeFailure
		if jsonUnmarshal(v, &f) == nil {
			st.Failed = append(st.Failed, f)
		}
	}); err != nil {
		return err
	}
	st.Snapshots = snapshotStatus(ctx, bus)
	if cmd.json {
		return printJSON(st)
	}
	printStatus(st)
	return nil
}

func printStatus(st Status) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	defer w.Flush()
	if st.SafeLSN != nil {
		fmt.Fprintf(w, "safe LSN\t%s\t(computed %s ago by flushd)\n", st.SafeLSN.LSN, time.Since(st.SafeLSN.Computed).Round(100*time.Millisecond))
	} else {
		fmt.Fprintf(w, "safe LSN\tnone yet\t(is flushd running?)\n")
	}
	if st.IngestPublished != nil {
		fmt.Fprintf(w, "ingest published\t%s\t(updated %s ago)\n", st.IngestPublished.PublishedLSN, time.Since(st.IngestPublished.Updated).Round(100*time.Millisecond))
	} else {
		fmt.Fprintf(w, "ingest published\tnone yet\t(is ingest running?)\n")
	}
	if st.Slot != nil {
		fmt.Fprintf(w, "slot %s\tconfirmed %s\tlag %d bytes, wal_status %s, active %v\n", st.Slot.Name, st.Slot.ConfirmedFlushLSN, st.Slot.LagBytes, st.Slot.WALStatus, st.Slot.Active)
	} else if st.SlotError != "" {
		fmt.Fprintf(w, "slot\tunknown\t%s\n", st.SlotError)
	}
	printContinuity(w, st.Continuity)
	fmt.Fprintf(w, "stream %s\t%d pending fragments\t%d bytes\n", fanout.StreamName, st.PendingMsgs, st.PendingBytes)
	fmt.Fprintf(w, "stream %s\t%d dead-lettered\t\n", fanout.DeadLetterStream, st.DeadLettered)
	if st.SafeLSN != nil && st.SafeLSN.Blocking != nil {
		b := st.SafeLSN.Blocking
		fmt.Fprintf(w, "blocked by\tshape %s\tpartition %d, consumer %q epoch %d, commit %s\n", b.Shape, b.Partition, b.Consumer, b.Epoch, b.CommitLSN)
	} else {
		fmt.Fprintf(w, "blocked by\tnothing\t\n")
	}
	for _, c := range st.Consumers {
		state := "live"
		if c.Draining {
			state = "draining"
		}
		fmt.Fprintf(w, "consumer %s\t%s\theartbeat %s ago, %d partitions bound\n", c.Consumer, state, c.HeartbeatAge, c.Partitions)
		printCompaction(w, c)
	}
	var parts []string
	for _, b := range st.Bindings {
		parts = append(parts, fmt.Sprintf("%d:%s@%d", b.Partition, b.Consumer, b.Epoch))
	}
	fmt.Fprintf(w, "bindings\t%d\t%s\n", len(st.Bindings), strings.Join(parts, " "))
	for _, f := range st.Failed {
		fmt.Fprintf(w, "failed shape %s\tpartition %d\t%s (commit %s)\n", f.Shape, f.Partition, f.Reason, f.CommitLSN)
	}
	sn := st.Snapshots
	if sn.Error != "" {
		fmt.Fprintf(w, "snapshots\tunknown\t%s\n", sn.Error)
	} else {
		fmt.Fprintf(w, "snapshots\t%d ready\t%d creating, %d snapshotting, %d failed\n",
			sn.Counts[shapestate.Ready], sn.Counts[shapestate.Creating], sn.Counts[shapestate.Snapshotting], sn.Counts[shapestate.Failed])
	}
	for _, x := range sn.NotDone {
		switch x.Phase {
		case shapestate.Snapshotting:
			fmt.Fprintf(w, "snapshotting %s\tgeneration %d on %s\t%d rows, %d bytes, %d chunks, started %s ago\n",
				x.Handle, x.Generation, x.Owner, x.Rows, x.Bytes, x.Chunks, time.Since(x.Started).Round(100*time.Millisecond))
		case shapestate.Failed:
			fmt.Fprintf(w, "snapshot failed %s\tgeneration %d\t%s\n", x.Handle, x.Generation, x.Error)
		default:
			fmt.Fprintf(w, "snapshot due %s\t%s\t\n", x.Handle, x.Phase)
		}
	}
}

// snapshotStatus reads every registered shape's snapshot state.
func snapshotStatus(ctx context.Context, bus *fanout.Bus) SnapshotStatus {
	out := SnapshotStatus{Counts: map[shapestate.Phase]int{}, NotDone: []*shapestate.State{}}
	list, err := shapes.List(ctx, bus)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	kv, err := shapestate.Open(ctx, bus.JS)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	states, err := shapestate.List(ctx, kv)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	for _, s := range list {
		st := states[s.Handle]
		if st == nil {
			st = &shapestate.State{Handle: s.Handle, Phase: shapestate.Creating}
		}
		out.Counts[st.Phase]++
		if st.Phase != shapestate.Ready {
			out.NotDone = append(out.NotDone, st)
		}
	}
	return out
}

// eachValue calls f for every key of a bucket.
func eachValue(ctx context.Context, kv jetstream.KeyValue, f func(key string, value []byte)) error {
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return err
	}
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		f(k, e.Value())
	}
	return nil
}

// printCompaction prints what a consumer's shape log compaction did, as
// its heartbeat reports it.
func printCompaction(w io.Writer, c ConsumerStatus) {
	cs := c.Compaction
	if cs == nil {
		return
	}
	now := "idle"
	if cs.Current != "" {
		now = "compacting " + cs.Current
	}
	fmt.Fprintf(w, "  compaction %s\t%d done, %d failed, %d running, %d queued\t%.1f MB replaced, %.1f MB freed; %s\n",
		c.Consumer, cs.Done, cs.Failed, cs.Running, cs.Queued, float64(cs.SavedBytes)/1e6, float64(cs.FreedBytes)/1e6, now)
	if cs.LastError != "" {
		fmt.Fprintf(w, "  compaction %s\tlast failure %s ago\t%s\n", c.Consumer, time.Since(cs.LastAt).Round(time.Second), cs.LastError)
	}
}
