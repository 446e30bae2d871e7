// Package fanout is the bus contract shared by every service: the JetStream
// stream, subject and KV bucket names, the fragment wire format, shape
// definitions and the shape -> partition hash.
//
// Nothing here talks to Postgres; bus.go is the only file that talks to NATS
// (it creates the stream and buckets every service expects).
package fanout
