package consumers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
)

// ackWait is how long JetStream waits for an ack before redelivering.
const ackWait = 30 * time.Second

// fetchWait bounds one pull, so a worker notices a stop or drain quickly.
const fetchWait = time.Second

// errAckFailed means a persisted batch may not be fully acked.
var errAckFailed = errors.New("ack failed")

// errLost means the partition's durable consumer was deleted and the binding
// no longer names this worker: a newer owner took over.
var errLost = errors.New("partition taken over by another owner")

// worker owns one partition at one epoch: it pulls the partition's fragments
// in stream order, persists them and acks them.
type worker struct {
	s         *Service
	partition int
	epoch     uint64
	name      string // the durable JetStream consumer
	log       *slog.Logger

	stopCtx context.Context // ends when the partition moves away: no more writes or acks
	stop    context.CancelFunc
	done    chan struct{}

	mu       sync.Mutex
	removals []string // shapes deleted from KV whose logs go between two batches

	quarantined map[string]error // shapes whose log is unusable (batch.go); worker goroutine only
}

func newWorker(s *Service, partition int, epoch uint64, parent context.Context) *worker {
	ctx, cancel := context.WithCancel(parent)
	return &worker{
		s: s, partition: partition, epoch: epoch, name: fanout.ConsumerGroupName(partition, epoch),
		log:     s.log.With("partition", partition, "epoch", epoch),
		stopCtx: ctx, stop: cancel, done: make(chan struct{}),
	}
}

func (w *worker) finished() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

func (w *worker) queueRemoval(handle string) {
	w.mu.Lock()
	w.removals = append(w.removals, handle)
	w.mu.Unlock()
}

// run works until the partition moves away (stop), the service drains
// (drain: the batch in flight is finished and acked), or a fatal error,
// which it reports to the service.
func (w *worker) run(drain context.Context) {
	defer close(w.done)
	defer w.stop()
	w.log.Info("taking partition")
	err := w.loop(drain)
	switch {
	case err == nil:
		w.log.Info("partition released")
	case errors.Is(err, shapelog.ErrFenced), errors.Is(err, errLost):
		w.log.Warn("partition is owned by a newer epoch; this worker stopped writing and acking", "err", err)
	case w.stopCtx.Err() != nil:
		w.log.Info("partition released", "err", err)
	default:
		w.s.fail(fmt.Errorf("partition %d (epoch %d): %w", w.partition, w.epoch, err))
	}
}

func (w *worker) loop(drain context.Context) error {
	// Waiting on NATS ends on a drain as well as on a stop; a batch in
	// flight (handle) ends only on a stop.
	idle, cancel := context.WithCancel(w.stopCtx)
	defer cancel()
	defer context.AfterFunc(drain, cancel)()
	// The older owners' durable consumers go first, storage second: once
	// they are deleted, nothing an older owner still writes can be acked,
	// so whatever storage recovery finds half-written was never acked.
	cons, err := w.takeConsumer(idle)
	if err != nil {
		if idle.Err() != nil && !errors.Is(err, shapelog.ErrFenced) {
			return nil // drained or stopped before the partition was taken
		}
		return err
	}
	writer, err := w.s.store.Take(w.stopCtx, w.partition, w.epoch)
	if err != nil {
		return fmt.Errorf("take partition in storage: %w", err)
	}
	defer writer.Close()
	if c := w.s.compactor; c != nil {
		c.attach(w.partition, writer)
		defer c.detach(w.partition, writer) // before the writer closes
	}
	w.removeGoneShapes(writer)
	var failingSince time.Time
	var delivered uint64 // delivery sequence of the last message handled; 0 after (re)creating the durable
	for drain.Err() == nil && w.stopCtx.Err() == nil {
		w.applyRemovals(writer)
		msgs, ferr := w.fetch(cons, drain)
		// The durable is recreated, which delivers every unacked fragment
		// again at once and in stream order (the shape logs skip what they
		// hold), when
		//   - a delivery was lost on the way (a pull abandoned while
		//     messages were in flight): persisting what came after it would
		//     make the lost fragments look like duplicates when JetStream
		//     redelivers them, and they would be skipped: data loss;
		//   - an ack may not have reached JetStream, or JetStream counts
		//     deliveries this worker never got (in flight when a NATS node
		//     failed): either would hold the safe LSN back until the ack
		//     wait (30s) redelivers them.
		renew := ""
		switch next, ok := inSequence(msgs, delivered); {
		case !ok:
			renew = fmt.Sprintf("delivery %d was lost on the way (got %d)", delivered+1, next)
		case len(msgs) > 0:
			if err := w.handle(writer, msgs); errors.Is(err, errAckFailed) {
				renew = err.Error()
			} else if err != nil {
				return err
			}
			delivered = next
		case ferr == nil && w.deliveriesLost(cons):
			renew = "JetStream awaits acks for deliveries this worker never received"
		}
		if renew != "" {
			w.log.Warn("recreating the partition's consumer to get every unacked fragment again at once, in order", "consumer", w.name, "why", renew)
			if cons, err = w.takeConsumer(idle); err != nil {
				if idle.Err() != nil {
					return nil
				}
				return err
			}
			delivered = 0
			continue
		}
		if ferr == nil {
			failingSince = time.Time{}
			continue
		}
		if w.stopCtx.Err() != nil || drain.Err() != nil {
			break
		}
		if cons, err = w.recoverFetch(idle, ferr, &failingSince); err != nil {
			if idle.Err() != nil {
				return nil
			}
			return err
		}
	}
	return nil
}

// takeConsumer deletes every older consumer of the partition (a zombie must
// not keep pulling, and a work-queue stream allows one consumer per subject)
// and creates this epoch's durable consumer. Deleting a consumer returns its
// unacked messages to the stream, so the new one gets them at once.
func (w *worker) takeConsumer(idle context.Context) (jetstream.Consumer, error) {
	var cons jetstream.Consumer
	err := w.s.retryBus(idle, "take partition "+strconv.Itoa(w.partition), func(ctx context.Context) error {
		prefix := fanout.ConsumerGroupPrefix(w.partition)
		names := w.s.bus.Stream.ConsumerNames(ctx)
		var old []string
		for n := range names.Name() {
			rest, ok := strings.CutPrefix(n, prefix)
			if !ok {
				continue
			}
			if e, err := strconv.ParseUint(rest, 10, 64); err == nil && e > w.epoch {
				return &shapelog.FencedError{Partition: w.partition, Mine: w.epoch, Current: e}
			}
			old = append(old, n)
		}
		if err := names.Err(); err != nil {
			return fmt.Errorf("list consumers of stream %s: %w", fanout.StreamName, err)
		}
		for _, n := range old {
			if err := w.s.bus.Stream.DeleteConsumer(ctx, n); err != nil && !isNotFound(err) {
				return fmt.Errorf("delete older consumer %s: %w", n, err)
			}
			w.log.Info("deleted an older consumer of the partition", "consumer", n)
		}
		var err error
		cons, err = w.s.bus.Stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable:       w.name,
			Description:   "partition " + strconv.Itoa(w.partition) + " owned by " + w.s.id,
			FilterSubject: fanout.PartitionFilter(w.partition),
			DeliverPolicy: jetstream.DeliverAllPolicy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       ackWait,
			MaxAckPending: w.s.cfg.Consumer.Batch * 4,
			MaxDeliver:    -1, // the bound is ours (max_deliver): JetStream's would leave a message stuck in the work queue
			// The consumer's state (delivered and acked sequences) stays in
			// server memory: written to disk it costs a file rewrite per
			// state change, the largest single cost of the server under
			// load. Nothing depends on it surviving a NATS restart: acked
			// fragments have left the work-queue stream, a lost consumer is
			// recreated by the worker (recoverFetch), and a restarted one
			// redelivers every unacked fragment, which the shape logs skip
			// when they hold it already.
			MemoryStorage: true,
		})
		if err != nil {
			return fmt.Errorf("create consumer %s: %w", w.name, err)
		}
		return nil
	})
	return cons, err
}

// fetch pulls up to one batch: what is waiting in the partition right now,
// or, when nothing is, the first fragment to arrive within fetchWait. A pull
// that waited for a full batch would hold fragments back for up to fetchWait
// whenever a partition gets less than a batch per fetchWait: latency at low
// load, and a throughput cap under load spread over many partitions.
func (w *worker) fetch(cons jetstream.Consumer, drain context.Context) ([]jetstream.Msg, error) {
	if w.stopCtx.Err() != nil || drain.Err() != nil {
		return nil, nil
	}
	msgs, err := pull(cons.FetchNoWait(w.s.cfg.Consumer.Batch))
	if len(msgs) > 0 || err != nil {
		return msgs, err
	}
	// The pull ends by the server's expiry, whose notice reaches us after
	// every message of the pull. Ending it from our side (a context) drops
	// the messages still in flight; they come back only after the ack wait,
	// and out of order. So a stop or drain waits for the pull (fetchWait).
	return pull(cons.Fetch(1, jetstream.FetchMaxWait(fetchWait)))
}

// deliveriesLost reports, after an empty pull, whether the durable awaits
// acks anyway: a worker acks each batch before it pulls again, so those
// deliveries never reached it.
func (w *worker) deliveriesLost(cons jetstream.Consumer) bool {
	if w.stopCtx.Err() != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(w.stopCtx, 2*time.Second)
	defer cancel()
	info, err := cons.Info(ctx)
	return err == nil && info.NumAckPending > 0
}

// pull collects the messages of one pull request; the end of the request
// (expiry, or no messages for a no-wait pull) is not an error.
func pull(batch jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
	if err != nil {
		return nil, err
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
		return msgs, err
	}
	return msgs, nil
}

// inSequence checks that msgs are the durable consumer's next deliveries
// after the one numbered last (deliveries of a new durable are numbered
// from 1), and returns the number of the last of them; when one is
// missing, it returns the number found in its place and false.
func inSequence(msgs []jetstream.Msg, last uint64) (uint64, bool) {
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			continue // not a JetStream delivery: classify dead-letters it
		}
		if meta.Sequence.Consumer != last+1 {
			return meta.Sequence.Consumer, false
		}
		last = meta.Sequence.Consumer
	}
	return last, true
}

// recoverFetch handles a failed pull: a deleted consumer means another owner
// took the partition, or NATS restarted (consumer state is kept in memory)
// or an operator deleted it: then it is recreated while the binding still
// names this worker. Anything else is retried until the pulls have failed
// for bus_retry_timeout.
func (w *worker) recoverFetch(idle context.Context, ferr error, failingSince *time.Time) (jetstream.Consumer, error) {
	if errors.Is(ferr, jetstream.ErrConsumerDeleted) {
		return w.retake(idle)
	}
	if failingSince.IsZero() {
		*failingSince = time.Now()
	}
	for {
		ctx, cancel := context.WithTimeout(idle, busAttemptTimeout)
		cons, err := w.s.bus.Stream.Consumer(ctx, w.name)
		cancel()
		switch {
		case isNotFound(err):
			return w.retake(idle)
		case idle.Err() != nil:
			return nil, idle.Err()
		case time.Since(*failingSince) > w.s.cfg.Consumer.BusRetryTimeout:
			return nil, fmt.Errorf("fetch from consumer %s failing for over %s (consumer.bus_retry_timeout): %w; check that NATS is reachable",
				w.name, w.s.cfg.Consumer.BusRetryTimeout, ferr)
		}
		w.log.Warn("fetch failed; retrying", "err", ferr, "lookup_err", err)
		sleep(idle, time.Second)
		if err == nil {
			return cons, nil // the consumer is there: pull again
		}
	}
}

// retake recreates the partition's durable consumer, which was deleted,
// if the binding still names this worker.
func (w *worker) retake(idle context.Context) (jetstream.Consumer, error) {
	var e jetstream.KeyValueEntry
	err := w.s.retryBus(idle, "read the binding of partition "+strconv.Itoa(w.partition), func(ctx context.Context) (err error) {
		e, err = w.s.bus.Bindings.Get(ctx, fanout.BindingKey(w.partition))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil // unbound: e stays nil
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if e == nil {
		return nil, fmt.Errorf("%w: consumer %s was deleted and the partition is unbound", errLost, w.name)
	}
	b, err := fanout.DecodeBinding(e.Value())
	if err != nil || b.Consumer != w.s.id || b.Epoch != w.epoch {
		return nil, fmt.Errorf("%w: consumer %s was deleted", errLost, w.name)
	}
	w.log.Warn("the partition's durable consumer is gone (NATS restarted, or it was deleted) but the binding is still ours; recreating it", "consumer", w.name)
	return w.takeConsumer(idle)
}

// applyRemovals deletes the logs of shapes removed from KV.
func (w *worker) applyRemovals(writer shapelog.Writer) {
	w.mu.Lock()
	hs := w.removals
	w.removals = nil
	w.mu.Unlock()
	for _, h := range hs {
		if err := writer.Remove(w.stopCtx, h); err != nil {
			w.log.Error("could not remove the log of a removed shape; remove it by hand", "shape", h, "err", err)
			continue
		}
		if c := w.s.compactor; c != nil {
			c.forget(h)
		}
		w.log.Info("removed the log of a removed shape", "shape", h)
	}
}

// removeGoneShapes deletes logs of this partition's shapes that were removed
// while nobody owned the partition.
func (w *worker) removeGoneShapes(writer shapelog.Writer) {
	hs, err := w.s.store.Handles(w.stopCtx)
	if err != nil {
		w.log.Warn("cannot list shape logs to clean up removed shapes", "err", err)
		return
	}
	for _, h := range hs {
		if fanout.Partition(h, w.s.cfg.Bus.Partitions) == w.partition && !w.s.shapes.exists(w.stopCtx, h) {
			w.queueRemoval(h)
		}
	}
	w.applyRemovals(writer)
}
