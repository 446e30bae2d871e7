package flushd

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// maxForeignSkipped bounds how many messages without a fragment header are
// passed over when looking for the oldest fragment. Such messages were not
// published by ingest; a consumer dead-letters them.
const maxForeignSkipped = 100

// OldestPending reads the oldest fragment in the FANOUT stream, or nil when
// the stream holds no fragment.
func OldestPending(ctx context.Context, stream jetstream.Stream) (*Oldest, error) {
	return oldestPending(ctx, stream, nil)
}

// oldestPending is OldestPending; evict, when set, is given each message
// looked at and reports whether it is one that no partition's consumer will
// ever pull (see unroutable): such a message is skipped, and evict moves it
// out of the work-queue stream so that it does not stay there for ever.
func oldestPending(ctx context.Context, stream jetstream.Stream, evict func(*jetstream.RawStreamMsg) bool) (*Oldest, error) {
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read stream %s info: %w", fanout.StreamName, err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	seq := info.State.FirstSeq
	for skipped := 0; skipped <= maxForeignSkipped; skipped++ {
		msg, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(fanout.SubjectPrefix+".>"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil // everything at or after seq was acked meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("read oldest message of stream %s at sequence %d: %w", fanout.StreamName, seq, err)
		}
		partition, perr := fanout.ParseSubject(msg.Subject)
		lsn, lerr := pglogrepl.ParseLSN(msg.Header.Get(fanout.HeaderCommitLSN))
		// The message's first fragment is its oldest: its shape is the one
		// that holds the safe LSN back (a message is persisted as a unit,
		// so the other shapes in it wait on the same thing).
		shape := msg.Header.Get(fanout.HeaderShape)
		if (evict != nil && evict(msg)) || perr != nil || lerr != nil {
			seq = msg.Sequence + 1
			continue
		}
		return &Oldest{CommitLSN: lsn, Shape: shape, Partition: partition, StreamSeq: msg.Sequence, Pending: info.State.Msgs}, nil
	}
	return nil, fmt.Errorf("the first %d messages of stream %s are not fragments (no %s header): a consumer dead-letters them; check `nats stream view %s`",
		maxForeignSkipped, fanout.StreamName, fanout.HeaderCommitLSN, fanout.StreamName)
}

// unroutable reports whether no partition's consumer pulls subject
// (consumers filter on fanout.<partition>, partition below partitions).
// Messages on other subjects of the stream were not published by ingest.
func unroutable(subject string, partitions int) bool {
	p, err := fanout.ParseSubject(subject)
	return err != nil || p >= partitions
}
