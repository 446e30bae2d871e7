package fanout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// MessageVersion is the version of a bus message's envelope. Version 1 was
// one fragment per message on a per-shape subject; version 2 carries a run
// of one partition's fragments, each still in the fragment format of
// WireVersion (which is also what shape logs store).
const MessageVersion = 2

// A bus message is one partition's fragments, in the order ingest cut them
// (commit order, and within a transaction the order each shape's own cut
// points give), on Subject(partition):
//
//	{"v":2,"partition":7,"fragments":[<fragment>,<fragment>,...]}
//
// JetStream's cost is per message, not per byte, so ingest packs every
// fragment that is ready for a partition into one message (ingest.Batcher).
// A consumer persists and acks a message as one unit; each fragment keeps its
// shape, so a fragment that cannot be processed is dead-lettered for its own
// shape only.
type envelope struct {
	Version   int               `json:"v"`
	Partition int               `json:"partition"`
	Fragments []json.RawMessage `json:"fragments"`
}

// EncodeMessage is the body of a message of partition holding fragments whose
// encodings (Fragment.Encode) are bodies.
func EncodeMessage(partition int, bodies [][]byte) []byte {
	n := 48
	for _, b := range bodies {
		n += len(b) + 1
	}
	out := make([]byte, 0, n)
	out = append(out, `{"v":`...)
	out = strconv.AppendInt(out, MessageVersion, 10)
	out = append(out, `,"partition":`...)
	out = strconv.AppendInt(out, int64(partition), 10)
	out = append(out, `,"fragments":[`...)
	for i, b := range bodies {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, b...)
	}
	return append(out, "]}"...)
}

// EncodeFragments is EncodeMessage of frags.
func EncodeFragments(partition int, frags ...*Fragment) ([]byte, error) {
	bodies := make([][]byte, len(frags))
	for i, f := range frags {
		b, err := f.Encode()
		if err != nil {
			return nil, fmt.Errorf("encode fragment %s %s: %w", f.Shape, f.Position(), err)
		}
		bodies[i] = b
	}
	return EncodeMessage(partition, bodies), nil
}

// Item is one fragment of a decoded message: Frag, or, when the fragment is
// not one this version understands, Err with what could be read of it (Raw,
// and Shape when its shape field is a valid handle) to dead-letter it.
type Item struct {
	Frag  *Fragment
	Raw   []byte
	Shape string
	Err   error
}

// DecodeMessage parses a message body of partition. An error means the
// envelope itself is unreadable (dead-letter the whole message); a fragment
// that is unreadable is an Item with Err, and the others are still usable.
// The items' fragments keep parts of data as their Wire bytes: the caller
// must not change data afterwards.
func DecodeMessage(partition int, data []byte) ([]Item, error) {
	if items, ok := decodeCanonicalMessage(partition, data); ok {
		return items, nil
	}
	return decodeMessageJSON(partition, data)
}

// decodeMessageJSON is DecodeMessage for any JSON encoding of a message,
// with encoding/json: it says what is wrong with a message that is not in
// the canonical form or not valid.
func decodeMessageJSON(partition int, data []byte) ([]Item, error) {
	var env envelope
	if err := decodeStrict(data, &env); err != nil {
		return nil, fmt.Errorf("message is not valid JSON of the bus format: %w", err)
	}
	if env.Version != MessageVersion {
		return nil, fmt.Errorf("message version %d, this build reads version %d", env.Version, MessageVersion)
	}
	if env.Partition != partition {
		return nil, fmt.Errorf("message of partition %d was delivered on the subject of partition %d", env.Partition, partition)
	}
	if len(env.Fragments) == 0 {
		return nil, fmt.Errorf("message holds no fragment")
	}
	items := make([]Item, len(env.Fragments))
	for i, raw := range env.Fragments {
		items[i].Raw = raw
		f, err := checkFragment(raw)
		if err != nil {
			items[i].Err = fmt.Errorf("fragment %d of the message: %w", i, err)
			items[i].Shape = shapeOf(raw)
			continue
		}
		items[i].Frag, items[i].Shape = f, f.Shape
	}
	return items, nil
}

// shapeOf reads the shape field of an undecodable fragment, if it is a
// valid handle, so that the fragment is dead-lettered under its shape.
func shapeOf(raw []byte) string {
	var s struct {
		Shape string `json:"shape"`
	}
	if json.NewDecoder(bytes.NewReader(raw)).Decode(&s) != nil || ValidateHandle(s.Shape) != nil {
		return ""
	}
	return s.Shape
}

// checkFragment validates a fragment as DecodeFragment does without
// keeping its rows: a consumer stores a fragment's bytes as they came and
// needs only its position and shape. The fragment it returns has no Changes
// (NumChanges counts them) and keeps raw as its Wire bytes, which readers
// decode in full. A fragment in the canonical form is read in one pass
// (wirecheck.go); any other is decoded by DecodeFragment, so that what a
// consumer stores, readers can decode.
func checkFragment(raw []byte) (*Fragment, error) {
	if f, ok := checkCanonicalFragment(raw); ok {
		return f, nil
	}
	f, err := DecodeFragment(raw)
	if err != nil {
		return nil, err
	}
	f.changeCount, f.truncates, f.Changes = len(f.Changes), f.HasTruncate(), nil
	return f, nil
}
