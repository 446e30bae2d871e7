// Package shapelog persists shape logs: one append-only log per shape, holding
// the fragments a consumer accepted, in position order, each exactly once.
//
// Storage sits behind Store so that other backends can follow; FileStore (a
// directory, possibly a shared volume) is the default and only one now.
//
// LAYOUT.md in this folder describes what is on disk: the record format,
// the rule of what a reader may see (whole transactions only, applied in
// one place: ReadLog), the offsets clients hold and the generations of
// compaction. In short:
//
//	shapes/<handle>/log               framed records, append-only
//	shapes/<handle>/snapshot/g<N>/    the initial snapshot
//	shapes/<handle>/compact/c<K>/     a compacted generation: base and log (compact.go)
//	partitions/<p>/epoch              epoch of the partition's current owner
//	partitions/<p>/journal-<epoch>    redo log of that owner's batches (journal.go)
//
// Two rules keep a log exact whatever the writers do (see accept.go): a record
// whose epoch is lower than one seen earlier in the same log is a zombie's and
// is ignored, and a record whose position is not after the last accepted one
// is a duplicate and is ignored.
package shapelog

import (
	"context"
	"errors"
	"fmt"

	"github.com/fanout/pipeline/fanout"
)

// Store is where the shape logs of a deployment live.
type Store interface {
	// Take makes epoch the owner epoch of partition, fencing every writer of
	// an older epoch, and returns the writer of that partition. It fails with
	// ErrFenced when a newer epoch already owns the partition.
	Take(ctx context.Context, partition int, epoch uint64) (Writer, error)
	// Materialize replays a shape's log into its current rows, sorted by key.
	Materialize(ctx context.Context, handle string, pk []string) ([]fanout.Row, error)
	// Handles lists the shapes that have a log.
	Handles(ctx context.Context) ([]string, error)
	// Remove deletes a shape's log; removing a missing log is not an error.
	Remove(ctx context.Context, handle string) error
}

// Writer appends to the logs of one partition's shapes at one epoch. It is
// used by one goroutine at a time; FileStore.Compact, from another, takes
// its lock only to switch a shape to a new generation's log.
type Writer interface {
	// Append adds frags (in stream order) to their shapes' logs and returns
	// only when the batch is durable (FileStore: in the partition's journal). Fragments whose position is not
	// after their log's last one are skipped. It writes nothing and returns
	// ErrFenced when a newer epoch owns the partition; any other error is a
	// storage failure (nothing of the batch may be assumed durable).
	Append(ctx context.Context, frags []*fanout.Fragment) (Stats, error)
	// Remove deletes a shape's log and forgets its state.
	Remove(ctx context.Context, handle string) error
	// Close releases open files.
	Close() error
}

// Stats counts what one Append did.
type Stats struct {
	Appended int // fragments written
	Changes  int // changes in the written fragments
	Skipped  int // duplicates or older positions, not written
	Orphans  int // Seq > 0 fragments without the earlier part of their transaction
	Logs     int // logs written
	// Reopened counts the logs this batch opened again after the writer
	// had closed them as idle (it keeps a bounded number open): one open(2) each.
	Reopened int
}

// ErrFenced means a newer owner epoch holds the partition: the writer is a
// zombie and must stop writing and acking.
var ErrFenced = errors.New("partition is owned by a newer epoch")

// FencedError says which epochs met. errors.Is(err, ErrFenced) holds.
type FencedError struct {
	Partition int
	Mine      uint64
	Current   uint64
}

func (e *FencedError) Error() string {
	return fmt.Sprintf("partition %d: writer epoch %d is fenced by epoch %d (the partition was rebound; this writer must stop)",
		e.Partition, e.Mine, e.Current)
}

// Is makes errors.Is(err, ErrFenced) true.
func (e *FencedError) Is(target error) bool { return target == ErrFenced }

// ShapeError is a storage failure confined to one shape's log: a record that
// passes its checksum but does not decode, damage in the middle of the file,
// a fragment too large for a record. Retrying cannot help and the other
// shapes are not affected, so the caller sets that shape aside (quarantine)
// and goes on with the rest. Append writes nothing when it returns one.
type ShapeError struct {
	Shape string
	Err   error
}

func (e *ShapeError) Error() string { return fmt.Sprintf("log of shape %s: %v", e.Shape, e.Err) }

func (e *ShapeError) Unwrap() error { return e.Err }
