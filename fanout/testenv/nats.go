package testenv

import (
	"context"
	"fmt"
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
	host     string
	port     int
}

// StartNATS starts an embedded JetStream server, shut down when the test ends.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	n, err := NewNATS("127.0.0.1", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// NewNATS starts an embedded JetStream server with a new store folder on
// host:port (port 0: a free one). Close stops it and removes the store.
func NewNATS(host string, port int) (*NATS, error) {
	dir, err := os.MkdirTemp("", "fanout-nats-")
	if err != nil {
		return nil, err
	}
	if port == 0 {
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	n := &NATS{StoreDir: dir, host: host, port: port}
	if err := n.start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return n, nil
}

// Close stops the server and removes its store.
func (n *NATS) Close() {
	n.Shutdown()
	os.RemoveAll(n.StoreDir)
}

// Start starts the server again after Shutdown, on the same port and store.
func (n *NATS) Start(t testing.TB) {
	t.Helper()
	if err := n.start(); err != nil {
		t.Fatal(err)
	}
}

func (n *NATS) start() error {
	opts := &server.Options{
		Host:      n.host,
		Port:      n.port,
		JetStream: true,
		StoreDir:  n.StoreDir,
		NoLog:     true,
		NoSigs:    true,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("nats server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return fmt.Errorf("embedded nats server did not become ready in 30s")
	}
	n.Server = s
	n.URL = s.ClientURL()
	return nil
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
