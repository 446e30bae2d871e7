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
	// persisted it. It is a work-queue stream: an acked fragment leaves it, so
	// the stream's oldest message is exactly the oldest unpersisted fragment.
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

// Message headers set on every fragment. They duplicate fields of the body so
// that flushd and the NATS CLI can read positions without decoding JSON.
const (
	HeaderMsgID     = "Nats-Msg-Id"
	HeaderCommitLSN = "Fanout-Commit-Lsn"
	HeaderXid       = "Fanout-Xid"
	// HeaderDeadReason is set on dead-lettered messages.
	HeaderDeadReason = "Fanout-Dead-Reason"
	// HeaderDeadSubject keeps the original subject of a dead-lettered message.
	HeaderDeadSubject = "Fanout-Dead-Subject"
)

// Subject is the subject a shape's fragments are published on.
func Subject(partition int, shape string) string {
	return SubjectPrefix + "." + strconv.Itoa(partition) + "." + shape
}

// PartitionFilter matches every shape subject of one partition.
func PartitionFilter(partition int) string {
	return SubjectPrefix + "." + strconv.Itoa(partition) + ".>"
}

// ShapeFilter matches one shape's subject in whatever partition it is.
func ShapeFilter(shape string) string {
	return SubjectPrefix + ".*." + shape
}

// ParseSubject splits "fanout.<partition>.<shape>".
func ParseSubject(subject string) (partition int, shape string, err error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 3 || parts[0] != SubjectPrefix {
		return 0, "", fmt.Errorf("subject %q is not fanout.<partition>.<shape>", subject)
	}
	partition, err = strconv.Atoi(parts[1])
	if err != nil || partition < 0 {
		return 0, "", fmt.Errorf("subject %q: partition %q is not a non-negative number", subject, parts[1])
	}
	if err := ValidateHandle(parts[2]); err != nil {
		return 0, "", fmt.Errorf("subject %q: %w", subject, err)
	}
	return partition, parts[2], nil
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

// MsgID is the Nats-Msg-Id of a fragment. It depends only on what Postgres
// sent, so a fragment published again after an ingest restart is dropped by
// the stream's duplicate window.
func MsgID(shape string, f *Fragment) string {
	return fmt.Sprintf("%s:%s:%d", shape, f.CommitLSN, f.Seq)
}
