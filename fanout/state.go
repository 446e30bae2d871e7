package fanout

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// Binding says which consumer owns a partition, and at which epoch. The epoch
// is the fencing token of the shape logs: flushd hands every new binding an
// epoch above every epoch ever used in the deployment (any partition, any
// partition count, see flushd.Assign), because a shape's log compares the
// epochs of its writers whatever partition they came from. A consumer acting
// on an older epoch is a zombie and is fenced.
type Binding struct {
	Partition int    `json:"partition"`
	Consumer  string `json:"consumer"`
	Epoch     uint64 `json:"epoch"`
	// Partitions is the bus.partitions flushd bound it under. A binding
	// of another count is stale (shapes hash elsewhere now): flushd binds
	// the partition again, above every epoch, and consumers ignore it.
	// 0: written before the field existed.
	Partitions int `json:"partitions,omitempty"`
}

// Heartbeat is what a consumer writes under its id in ConsumersBucket.
type Heartbeat struct {
	Consumer string    `json:"consumer"`
	Started  time.Time `json:"started"`
	Sent     time.Time `json:"sent"`
	// Draining is set by a consumer that is shutting down: flushd moves its
	// partitions at once instead of waiting for the heartbeat timeout.
	Draining bool `json:"draining,omitempty"`
	// Owned lists the partitions the consumer currently pulls, at their epochs.
	Owned map[int]uint64 `json:"owned,omitempty"`
	// StorageEpoch is the highest owner epoch the consumer's storage holds
	// (read at start, raised by the epochs it takes since). flushd binds
	// above it, so epochs never restart below what the logs recorded, even
	// when the bindings bucket is lost.
	StorageEpoch uint64 `json:"storage_epoch,omitempty"`
	// Compaction is what the consumer's shape log compaction did since it
	// started (nil when storage.compaction.enabled is false).
	Compaction *CompactionStatus `json:"compaction,omitempty"`
}

// CompactionStatus is a consumer's shape log compaction as its heartbeat
// reports it (fanoutctl status).
type CompactionStatus struct {
	Running int   `json:"running"`
	Queued  int   `json:"queued"` // shapes due, waiting for a free slot
	Done    int64 `json:"done"`
	Failed  int64 `json:"failed"`
	// SavedBytes is what the compactions replaced minus the bases they
	// wrote; FreedBytes what the expiry of replaced generations removed.
	SavedBytes int64 `json:"saved_bytes"`
	FreedBytes int64 `json:"freed_bytes"`
	// Current is the compaction in progress longest, if any.
	Current   string    `json:"current,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	LastAt    time.Time `json:"last_error_at,omitzero"`
}

// IngestProgress is written by ingest: every transaction whose commit LSN is
// below PublishedLSN has been accepted by JetStream (or touched no shape).
type IngestProgress struct {
	PublishedLSN pglogrepl.LSN `json:"-"`
	Published    string        `json:"published_lsn"`
	Updated      time.Time     `json:"updated"`
}

// SafeLSN is written by flushd: the LSN ingest may confirm to Postgres, and
// what holds it back.
type SafeLSN struct {
	LSN      pglogrepl.LSN `json:"-"`
	Text     string        `json:"safe_lsn"`
	Computed time.Time     `json:"computed"`
	// Blocking names the oldest unpersisted fragment, when there is one.
	Blocking *Blocker `json:"blocking,omitempty"`
}

// Blocker is the oldest fragment not yet persisted: the shape, partition and
// owner that hold the safe LSN back.
type Blocker struct {
	Shape     string `json:"shape"`
	Partition int    `json:"partition"`
	Consumer  string `json:"consumer,omitempty"`
	Epoch     uint64 `json:"epoch,omitempty"`
	CommitLSN string `json:"commit_lsn"`
	// Pending is how many fragments wait in the stream in all.
	Pending uint64 `json:"pending"`
}

// ShapeFailure marks a shape whose fragments were dead-lettered.
type ShapeFailure struct {
	Shape     string    `json:"shape"`
	Partition int       `json:"partition"`
	Reason    string    `json:"reason"`
	CommitLSN string    `json:"commit_lsn"`
	At        time.Time `json:"at"`
}

// EncodeJSON marshals one of the state values above.
func EncodeJSON(v any) []byte {
	switch t := v.(type) {
	case *IngestProgress:
		t.Published = t.PublishedLSN.String()
	case *SafeLSN:
		t.Text = t.LSN.String()
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // state values always marshal
	}
	return b
}

// DecodeIngestProgress parses a StateBucket ingest_published value.
func DecodeIngestProgress(data []byte) (*IngestProgress, error) {
	var p IngestProgress
	if err := decodeStrict(data, &p); err != nil {
		return nil, fmt.Errorf("%s value is not valid: %w", KeyIngestPublished, err)
	}
	lsn, err := pglogrepl.ParseLSN(p.Published)
	if err != nil {
		return nil, fmt.Errorf("%s value: published_lsn %q: %w", KeyIngestPublished, p.Published, err)
	}
	p.PublishedLSN = lsn
	return &p, nil
}

// DecodeSafeLSN parses a StateBucket safe_lsn value.
func DecodeSafeLSN(data []byte) (*SafeLSN, error) {
	var s SafeLSN
	if err := decodeStrict(data, &s); err != nil {
		return nil, fmt.Errorf("%s value is not valid: %w", KeySafeLSN, err)
	}
	lsn, err := pglogrepl.ParseLSN(s.Text)
	if err != nil {
		return nil, fmt.Errorf("%s value: safe_lsn %q: %w", KeySafeLSN, s.Text, err)
	}
	s.LSN = lsn
	return &s, nil
}

// DecodeBinding parses a BindingsBucket value.
func DecodeBinding(data []byte) (*Binding, error) {
	var b Binding
	if err := decodeStrict(data, &b); err != nil {
		return nil, fmt.Errorf("binding value is not valid: %w", err)
	}
	if b.Consumer == "" || b.Epoch == 0 {
		return nil, fmt.Errorf("binding of partition %d has no consumer or epoch", b.Partition)
	}
	return &b, nil
}

// DecodeHeartbeat parses a ConsumersBucket value.
func DecodeHeartbeat(data []byte) (*Heartbeat, error) {
	var h Heartbeat
	if err := decodeStrict(data, &h); err != nil {
		return nil, fmt.Errorf("heartbeat value is not valid: %w", err)
	}
	if h.Consumer == "" {
		return nil, fmt.Errorf("heartbeat without consumer id")
	}
	return &h, nil
}
