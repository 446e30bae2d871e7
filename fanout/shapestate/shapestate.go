// Package shapestate is the lifecycle of a shape's initial snapshot, kept in
// the KV bucket StateBucket (fanout_shape_state):
//
//	creating -> snapshotting -> ready
//	                  |  ^
//	                  v  | (crash or retry: a new generation)
//	               failed
//
// Key <handle>: the shape's State, written by fanoutctl (creating) and by the
// snapshot runner that holds its lease (snapshotting, ready, failed), always
// with compare-and-set. A shape with no State yet counts as creating.
//
// Key RoutingKey: what ingest has applied, written by ingest only (Routing).
// A runner takes a shape's snapshot only once ingest routes the shape, so
// every transaction the snapshot does not see is in the shape's log.
package shapestate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout/visibility"
)

// Bucket is the KV bucket of shape states (inspect: nats kv ls fanout_shape_state).
const Bucket = "fanout_shape_state"

// RoutingKey holds ingest's Routing.
const RoutingKey = "ingest.routing"

// Phase is where a shape is in its life.
type Phase string

const (
	// Creating: registered; its snapshot has not started.
	Creating Phase = "creating"
	// Snapshotting: a runner is taking generation Generation.
	Snapshotting Phase = "snapshotting"
	// Ready: generation Generation is complete; the shape can be served.
	Ready Phase = "ready"
	// Failed: the snapshot could not be taken; Error says why.
	Failed Phase = "failed"
)

// State is a shape's snapshot state (value of key <handle>).
type State struct {
	Handle string `json:"handle"`
	Phase  Phase  `json:"state"`
	// Generation numbers the snapshot attempts; a reader serves only the
	// generation of a Ready state (the files of others are never complete
	// or no longer current).
	Generation uint64 `json:"generation"`
	// Owner is the consumer id running the snapshot, LeaseUntil when another
	// runner may take it over (the owner renews it while it works).
	Owner      string    `json:"owner,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitzero"`
	// Snapshot is the pg_snapshot the rows were read at (set once known).
	Snapshot *visibility.Snapshot `json:"snapshot,omitempty"`
	// Progress of the current generation.
	Rows    int64 `json:"rows"`
	Bytes   int64 `json:"bytes"`
	Chunks  int   `json:"chunks"`
	Retakes int   `json:"retakes,omitempty"` // snapshots retaken for the commit-visibility race
	// Attempts counts generations that failed; Error is the last failure.
	Attempts int    `json:"attempts,omitempty"`
	Error    string `json:"error,omitempty"`
	// Refused is the SQLSTATE of a data error Postgres raised on the
	// table's rows under the shape's where clause (22012: division by
	// zero, 22P02: a value a cast cannot read): the shape is Failed at the
	// first attempt, and the HTTP API answers its definition with a 400.
	Refused string    `json:"refused,omitempty"`
	Started time.Time `json:"started,omitzero"`
	Updated time.Time `json:"updated"`
}

// Routing is what ingest has applied (value of RoutingKey).
type Routing struct {
	// Revision is the shapes-bucket revision up to which every shape
	// definition is applied by ingest's router, at a transaction boundary.
	Revision uint64 `json:"revision"`
	// Decoded lists 64-bit xids that ingest decoded (their commit is in the
	// WAL and was routed without the shapes added since) but that were still
	// in progress in a pg_current_snapshot() taken after the boundary: a
	// shape snapshot that does not see one of them must be retaken.
	Decoded []uint64  `json:"decoded_in_progress,omitempty"`
	At      time.Time `json:"at"`
}

// Ensure creates (or opens) the bucket.
func Ensure(ctx context.Context, js jetstream.JetStream, replicas int, memory bool) (jetstream.KeyValue, error) {
	if replicas < 1 {
		replicas = 1
	}
	st := jetstream.FileStorage
	if memory {
		st = jetstream.MemoryStorage
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: Bucket, Description: "shape handle -> snapshot state; ingest.routing -> what ingest routes",
		History: 1, Storage: st, Replicas: replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("create KV bucket %s: %w (is JetStream enabled on the NATS server?)", Bucket, err)
	}
	return kv, nil
}

// Encode is the KV value of s.
func (s *State) Encode() []byte {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return b
}

// Decode reads a State value.
func Decode(data []byte) (*State, error) {
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("shape state in KV bucket %s is not valid JSON: %w", Bucket, err)
	}
	switch s.Phase {
	case Creating, Snapshotting, Ready, Failed:
	default:
		return nil, fmt.Errorf("shape state of %s in KV bucket %s: unknown state %q", s.Handle, Bucket, s.Phase)
	}
	return &s, nil
}

// Get reads the state of handle and its KV revision; a shape without one is
// Creating at revision 0.
func Get(ctx context.Context, kv jetstream.KeyValue, handle string) (*State, uint64, error) {
	e, err := kv.Get(ctx, handle)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return &State{Handle: handle, Phase: Creating}, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read the state of shape %s from KV bucket %s: %w", handle, Bucket, err)
	}
	s, err := Decode(e.Value())
	if err != nil {
		return nil, 0, err
	}
	return s, e.Revision(), nil
}

// Swap writes s if the key is still at revision rev (0: the key must not
// exist) and returns the new revision; jetstream.ErrKeyExists or a revision
// mismatch means another writer won.
func Swap(ctx context.Context, kv jetstream.KeyValue, s *State, rev uint64) (uint64, error) {
	s.Updated = time.Now().UTC()
	if rev == 0 {
		return kv.Create(ctx, s.Handle, s.Encode())
	}
	return kv.Update(ctx, s.Handle, s.Encode(), rev)
}

// Lost reports whether a Swap failed because another writer changed the key.
func Lost(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || isWrongLastSequence(err)
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// List reads every shape state, by handle.
func List(ctx context.Context, kv jetstream.KeyValue) (map[string]*State, error) {
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list KV bucket %s: %w", Bucket, err)
	}
	defer w.Stop()
	out := map[string]*State{}
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("list KV bucket %s: %w", Bucket, ctx.Err())
		case e := <-w.Updates():
			if e == nil {
				return out, nil
			}
			if e.Key() == RoutingKey {
				continue
			}
			if s, err := Decode(e.Value()); err == nil {
				out[e.Key()] = s
			}
		}
	}
}

// GetRouting reads ingest's Routing; none yet is the zero Routing.
func GetRouting(ctx context.Context, kv jetstream.KeyValue) (Routing, error) {
	e, err := kv.Get(ctx, RoutingKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Routing{}, nil
	}
	if err != nil {
		return Routing{}, fmt.Errorf("read %s from KV bucket %s: %w", RoutingKey, Bucket, err)
	}
	return DecodeRouting(e.Value())
}

// DecodeRouting reads a RoutingKey value.
func DecodeRouting(data []byte) (Routing, error) {
	var r Routing
	if err := json.Unmarshal(data, &r); err != nil {
		return Routing{}, fmt.Errorf("%s in KV bucket %s is not valid JSON: %w", RoutingKey, Bucket, err)
	}
	return r, nil
}

// PutRouting writes ingest's Routing.
func PutRouting(ctx context.Context, kv jetstream.KeyValue, r Routing) error {
	b, _ := json.Marshal(r)
	if _, err := kv.Put(ctx, RoutingKey, b); err != nil {
		return fmt.Errorf("write %s to KV bucket %s: %w", RoutingKey, Bucket, err)
	}
	return nil
}

// Open returns the bucket, creating it (with the replicas of the shapes
// bucket) if no service has yet.
func Open(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("open KV bucket %s: %w", Bucket, err)
	}
	replicas := 1
	if st, err := js.Stream(ctx, "KV_fanout_shapes"); err == nil {
		replicas = st.CachedInfo().Config.Replicas
	}
	return Ensure(ctx, js, replicas, false)
}
