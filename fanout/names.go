package fanout

import (
	"fmt"
	"strconv"
	"strings"
)

// Stream, subject and bucket names. They are part of the public interface:
// operators inspect them with the NATS CLI (`nats stream info FANOUT`).
const (
	// StreamName holds every routed transaction fragment until a consumer has
	// persisted it, in messages of one partition each (see Message). It is a
	// work-queue stream: an acked message leaves it, so the stream's oldest
	// message holds the oldest unpersisted fragment.
	StreamName    = "FANOUT"
	SubjectPrefix = "fanout"

	// DeadLetterStream keeps fragments a consumer could not process, with the
	// reason in a header, so that they never block WAL release and are never
	// silently dropped.
	DeadLetterStream        = "FANOUT_DLQ"
	DeadLetterSubjectPrefix = "fanout_dlq"

	// ShapesBucket maps shape handle -> Shape (JSON).
	ShapesBucket = "fanout_shapes"
	// BindingsBucket maps "p.<partition>" -> Binding (JSON). Only flushd writes it.
	BindingsBucket = "fanout_bindings"
	// ConsumersBucket maps consumer id -> Heartbeat (JSON). Each consumer
	// writes its own key every heartbeat interval.
	ConsumersBucket = "fanout_consumers"
	// StateBucket holds the LSNs the services exchange (keys below).
	StateBucket = "fanout_state"
	// FailedBucket maps shape handle -> ShapeFailure for shapes whose
	// fragments went to the dead-letter stream.
	FailedBucket = "fanout_failed"

	// KeyIngestPublished: IngestProgress, written by ingest.
	KeyIngestPublished = "ingest_published"
	// KeySafeLSN: SafeLSN, written by flushd, read by ingest.
	KeySafeLSN = "safe_lsn"
)

// Message headers set on every message. They duplicate fields of the body so
// that flushd and the NATS CLI can read positions without decoding JSON.
const (
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderCommitLSN is the commit LSN of the message's first fragment,
	// the lowest it holds: what flushd reads from the oldest message.
	HeaderCommitLSN = "Fanout-Commit-Lsn"
	// HeaderXid is the xid of the first fragment's transaction.
	HeaderXid = "Fanout-Xid"
	// HeaderShape is the shape of the first fragment: the shape that holds
	// the safe LSN back while the message waits (fanoutctl status).
	HeaderShape = "Fanout-Shape"
	// HeaderFragments is how many fragments the message holds.
	HeaderFragments = "Fanout-Fragments"
	// HeaderDeadReason is set on dead-lettered messages.
	HeaderDeadReason = "Fanout-Dead-Reason"
	// HeaderDeadSubject keeps the original subject of a dead-lettered message.
	HeaderDeadSubject = "Fanout-Dead-Subject"
)

// Subject is the subject of a partition's messages. One literal subject per
// partition, not one per shape: a partition's durable consumer filters on it
// exactly, and the stream's subject index holds P entries, not one per shape.
func Subject(partition int) string {
	return SubjectPrefix + "." + strconv.Itoa(partition)
}

// PartitionFilter is the filter subject of a partition's durable consumer.
func PartitionFilter(partition int) string { return Subject(partition) }

// ParseSubject reads the partition of "fanout.<partition>".
func ParseSubject(subject string) (partition int, err error) {
	rest, ok := strings.CutPrefix(subject, SubjectPrefix+".")
	if !ok {
		return 0, fmt.Errorf("subject %q is not %s.<partition>", subject, SubjectPrefix)
	}
	partition, err = strconv.Atoi(rest)
	if err != nil || partition < 0 || strconv.Itoa(partition) != rest {
		return 0, fmt.Errorf("subject %q: partition %q is not a non-negative number", subject, rest)
	}
	return partition, nil
}

// NoticeSubjectPrefix starts the core NATS subjects (not a stream) on which a
// consumer announces, after each durable append, that a shape's log grew. The
// HTTP API holds live requests and wakes them on these notices; one
// subscription to NoticeSubjectPrefix+".>" covers every shape.
const NoticeSubjectPrefix = "fanout_notice"

// NoticeSubject is where a consumer announces that the log of shape grew. The
// message body is the log's last persisted position, "0/16B3748#3"
// (Position.String); a notice is a hint: a reader re-reads the log.
func NoticeSubject(shape string) string { return NoticeSubjectPrefix + "." + shape }

// DeadLetterSubject is where a shape's unprocessable fragments go.
func DeadLetterSubject(partition int, shape string) string {
	return DeadLetterSubjectPrefix + "." + strconv.Itoa(partition) + "." + shape
}

// BindingKey is the BindingsBucket key of a partition.
func BindingKey(partition int) string { return "p." + strconv.Itoa(partition) }

// ParseBindingKey is the inverse of BindingKey.
func ParseBindingKey(key string) (int, error) {
	rest, ok := strings.CutPrefix(key, "p.")
	if !ok {
		return 0, fmt.Errorf("binding key %q does not start with p.", key)
	}
	return strconv.Atoi(rest)
}

// ConsumerGroupName is the durable JetStream consumer that one owner, at one
// epoch, pulls a partition through. The epoch is in the name so that a zombie
// owner's pull requests reach nothing once the partition was rebound.
func ConsumerGroupName(partition int, epoch uint64) string {
	return fmt.Sprintf("part-%d-e%d", partition, epoch)
}

// ConsumerGroupPrefix matches every durable consumer of a partition, whatever its epoch.
func ConsumerGroupPrefix(partition int) string {
	return fmt.Sprintf("part-%d-e", partition)
}

// MsgID is the Nats-Msg-Id of a message holding frags, a run of one
// partition's fragments in the order ingest cuts them. It names the first
// and the last fragment, which depend only on what Postgres sent: a message
// published again after an ingest restart with the same first and last
// fragment holds no fragment the first one lacked for a shape routed both
// times (see ingest.Batcher), so the stream's duplicate window may drop it.
func MsgID(partition int, frags []*Fragment) string {
	first, last := frags[0], frags[len(frags)-1]
	return fmt.Sprintf("%d/%s:%s:%d/%s:%s:%d", partition, first.Shape, first.CommitLSN, first.Seq, last.Shape, last.CommitLSN, last.Seq)
}
