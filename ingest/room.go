package ingest

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// streamRoom keeps ingest from overfilling the FANOUT stream. With MaxBytes
// and DiscardNew a full stream refuses publishes, and a refused publish sent
// again later would land behind ones sent after it. So ingest waits for
// consumers to make room instead; Postgres keeps the WAL meanwhile.
// Used by the goroutine that publishes.
type streamRoom struct {
	stream jetstream.Stream
	log    *slog.Logger

	known    bool
	max      int64 // the stream's MaxBytes at the last look; <= 0: unlimited
	used     int64 // bytes in the stream at the last look, plus sent since
	lastLook time.Time
	warned   time.Time
}

const roomLookInterval = 100 * time.Millisecond

// wait returns once size more bytes fit under the stream's MaxBytes. When
// the stream cannot be asked (NATS down), it lets the publish go: the
// publish then fails and is retried with its own bound.
func (r *streamRoom) wait(ctx context.Context, size int) error {
	for {
		if !r.known || (r.max > 0 && r.used+int64(size) > r.max-r.headroom() && time.Since(r.lastLook) >= roomLookInterval) {
			if !r.look(ctx) {
				r.used += int64(size)
				return nil
			}
		}
		// An empty stream takes anything: a fragment larger than the
		// stream then fails with the server's own error.
		if r.max <= 0 || r.used == 0 || r.used+int64(size) <= r.max-r.headroom() {
			r.used += int64(size)
			return nil
		}
		if time.Since(r.warned) > 30*time.Second {
			r.warned = time.Now()
			r.log.Warn("the FANOUT stream is full (bus.max_bytes); waiting for consumers to persist and ack fragments (fanoutctl status shows what blocks)",
				"stream_bytes", r.used, "max_bytes", r.max)
		}
		select {
		case <-time.After(time.Until(r.lastLook.Add(roomLookInterval))):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// headroom is slack for the server's per-message overhead.
func (r *streamRoom) headroom() int64 { return min(1<<20, r.max/16) }

func (r *streamRoom) look(ctx context.Context) bool {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := r.stream.Info(ictx)
	r.lastLook = time.Now()
	if err != nil {
		r.log.Warn("cannot read the FANOUT stream's size; publishing without waiting for room", "err", err)
		return false
	}
	r.known, r.max, r.used = true, info.Config.MaxBytes, int64(info.State.Bytes)
	return true
}
