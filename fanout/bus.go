package fanout

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// BusConfig sizes the stream and buckets. Every service calls EnsureBus at
// start with the same values, so whichever starts first creates them.
type BusConfig struct {
	// Replicas of the stream and buckets: 1 for dev, 3 in a NATS cluster.
	Replicas int
	// DuplicateWindow is how long the stream remembers Nats-Msg-Ids.
	DuplicateWindow time.Duration
	// MaxBytes bounds the unpersisted backlog; when it is full ingest waits
	// (Postgres keeps the WAL) instead of JetStream growing without bound.
	MaxBytes int64
	// Memory puts the streams in memory (tests only).
	Memory bool
}

// DefaultBusConfig is what a single-node deployment uses.
func DefaultBusConfig() BusConfig {
	return BusConfig{Replicas: 1, DuplicateWindow: 2 * time.Minute, MaxBytes: 1 << 30}
}

// Bus is the set of handles every service uses.
type Bus struct {
	JS         jetstream.JetStream
	Stream     jetstream.Stream
	DeadLetter jetstream.Stream
	Shapes     jetstream.KeyValue
	Bindings   jetstream.KeyValue
	Consumers  jetstream.KeyValue
	State      jetstream.KeyValue
	Failed     jetstream.KeyValue
}

// EnsureBus creates (or updates to cfg) the fan-out stream, the dead-letter
// stream and the KV buckets, and returns handles to them.
func EnsureBus(ctx context.Context, js jetstream.JetStream, cfg BusConfig) (*Bus, error) {
	if cfg.Replicas < 1 {
		cfg.Replicas = 1
	}
	storage := jetstream.FileStorage
	if cfg.Memory {
		storage = jetstream.MemoryStorage
	}
	maxBytes := cfg.MaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	b := &Bus{JS: js}
	var err error
	b.Stream, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "Postgres transaction fragments per shape, until persisted by a consumer",
		Subjects:    []string{SubjectPrefix + ".>"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     storage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DuplicateWindow,
		MaxBytes:    maxBytes,
		Discard:     jetstream.DiscardNew,
	})
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w (is JetStream enabled on the NATS server?)", StreamName, err)
	}
	b.DeadLetter, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DeadLetterStream,
		Description: "fragments a consumer could not process, with the reason in " + HeaderDeadReason,
		Subjects:    []string{DeadLetterSubjectPrefix + ".>"},
		Storage:     storage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", DeadLetterStream, err)
	}
	kv := func(name, desc string, history uint8) (jetstream.KeyValue, error) {
		s := jetstream.FileStorage
		if cfg.Memory {
			s = jetstream.MemoryStorage
		}
		k, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: name, Description: desc, History: history, Storage: s, Replicas: cfg.Replicas,
		})
		if err != nil {
			return nil, fmt.Errorf("create KV bucket %s: %w", name, err)
		}
		return k, nil
	}
	if b.Shapes, err = kv(ShapesBucket, "shape handle -> definition", 1); err != nil {
		return nil, err
	}
	if b.Bindings, err = kv(BindingsBucket, "partition -> owning consumer and epoch (written by flushd)", 5); err != nil {
		return nil, err
	}
	if b.Consumers, err = kv(ConsumersBucket, "consumer id -> last heartbeat", 1); err != nil {
		return nil, err
	}
	if b.State, err = kv(StateBucket, "ingest published LSN and flushd safe LSN", 1); err != nil {
		return nil, err
	}
	if b.Failed, err = kv(FailedBucket, "shapes whose fragments were dead-lettered", 1); err != nil {
		return nil, err
	}
	return b, nil
}
