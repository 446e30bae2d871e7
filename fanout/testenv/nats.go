package testenv

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// NATS is an embedded JetStream server on a free port.
type NATS struct {
	URL      string
	Server   *server.Server
	StoreDir string
	port     int
}

// StartNATS starts an embedded JetStream server, shut down when the test ends.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	dir, err := os.MkdirTemp("", "fanout-nats-")
	if err != nil {
		t.Fatal(err)
	}
	n := &NATS{StoreDir: dir, port: FreePort(t)}
	t.Cleanup(func() { n.Shutdown(); os.RemoveAll(dir) })
	n.Start(t)
	return n
}

// Start starts (or restarts after Shutdown) the server on the same port and store.
func (n *NATS) Start(t testing.TB) {
	t.Helper()
	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      n.port,
		JetStream: true,
		StoreDir:  n.StoreDir,
		NoLog:     true,
		NoSigs:    true,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		t.Fatal("embedded nats server did not become ready in 30s")
	}
	n.Server = s
	n.URL = s.ClientURL()
}

// Shutdown stops the server.
func (n *NATS) Shutdown() {
	if n.Server != nil {
		n.Server.Shutdown()
		n.Server.WaitForShutdown()
	}
}

// Connect returns a connection and JetStream handle, closed when the test ends.
func (n *NATS) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(n.URL, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatalf("connect to test nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// Bus connects and ensures the project's stream and buckets exist.
func (n *NATS) Bus(t testing.TB) *fanout.Bus {
	t.Helper()
	_, js := n.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := fanout.EnsureBus(ctx, js, fanout.DefaultBusConfig())
	if err != nil {
		t.Fatal(err)
	}
	return b
}
