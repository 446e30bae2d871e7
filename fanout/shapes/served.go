package shapes

import (
	"context"
	"errors"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// ServedKey is the key, in the HTTP API's definitions bucket
// (fanout.APIDefinitionsBucket), under which the API records the snapshot
// generation it serves handle at (consumers/shapeapi/generation.go). It
// lives here so that Remove, which every removal goes through (fanoutctl
// shape rm, DELETE /v1/shape, the API's rotations), deletes it too.
func ServedKey(handle string) string { return servedPrefix + handle }

const servedPrefix = "served."

// RemoveOption configures Remove.
type RemoveOption func(*removeConfig)

type removeConfig struct {
	log *slog.Logger
}

// WithRemoveLog sends Remove's warnings to log (default slog.Default()).
func WithRemoveLog(log *slog.Logger) RemoveOption {
	return func(c *removeConfig) { c.log = log }
}

// forgetServed deletes the removed shape's served-generation record. It is
// best effort: a leftover record is a few bytes and must never keep a shape
// from being removed, so a failure is logged, not returned. The record is
// read first, so a shape the API never served leaves no delete marker.
func forgetServed(ctx context.Context, bus *fanout.Bus, handle string, log *slog.Logger) {
	kv, err := bus.JS.KeyValue(ctx, fanout.APIDefinitionsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return // no HTTP API ever ran against this bus: nothing was recorded
	}
	key := ServedKey(handle)
	if err == nil {
		_, err = kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return
		}
		if err == nil {
			err = kv.Delete(ctx, key)
		}
	}
	if err != nil {
		log.Warn("shape removed, but its served-generation record was left in the HTTP API's bucket (harmless, a few bytes); delete it with `nats kv del "+fanout.APIDefinitionsBucket+" "+key+"`",
			"shape", handle, "bucket", fanout.APIDefinitionsBucket, "key", key, "err", err)
	}
}
