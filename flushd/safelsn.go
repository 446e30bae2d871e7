// Package flushd decides the LSN that ingest may confirm to Postgres and keeps
// every partition bound to a live consumer.
//
// The safe LSN is decided in one place, SafeLSN below. Its inputs are read
// from JetStream, not from a second bookkeeping of acks that could drift from
// it: FANOUT is a work-queue stream, so a message (one partition's fragments)
// leaves it exactly when a consumer acked it after persisting its fragments
// (dropping those of removed shapes, dead-lettering unreadable ones), or when
// flushd deleted it because all its shapes were removed. The oldest message
// in the stream therefore holds the oldest fragment that some shape has not
// persisted, and it is the first fragment of that message.
package flushd

import "github.com/jackc/pglogrepl"

// Oldest is the first fragment of the oldest message still in the stream:
// what holds the safe LSN back.
type Oldest struct {
	CommitLSN pglogrepl.LSN
	Shape     string
	Partition int
	StreamSeq uint64
	// Pending is the number of messages in the stream.
	Pending uint64
}

// SafeLSN is the highest LSN that may be confirmed to Postgres.
//
// published is ingest's published LSN: every transaction that commits below
// it has been accepted by JetStream (or touched no shape). oldest is the
// oldest unpersisted fragment, nil when the stream is empty. published must
// be read before oldest: a fragment published after the read of published
// carries a commit LSN at or above published, so it cannot be missed.
//
// Confirming L tells Postgres that every transaction whose commit record
// starts below L is done; a transaction committing at L itself is sent again
// after a restart. So the commit LSN of the oldest pending fragment is
// itself safe to confirm.
func SafeLSN(published pglogrepl.LSN, oldest *Oldest) pglogrepl.LSN {
	if oldest == nil || oldest.CommitLSN > published {
		return published
	}
	return oldest.CommitLSN
}
