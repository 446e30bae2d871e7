package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSCluster is a JetStream cluster of nats-server processes on free
// ports, each node with its own store. A node can be stopped (crashed or
// shut down) and started again on the same ports and store, as an operator
// restarting one server of a production cluster would.
//
// Nodes are processes, not embedded servers, so a stop can be a real
// SIGKILL and the test process does not carry three servers' load.
type NATSCluster struct {
	// URL lists every node's client URL, comma-separated, as services take it.
	URL   string
	Nodes []*NATSNode

	t  testing.TB
	mu sync.Mutex // guards nc
	nc *nats.Conn
}

// NATSNode is one server of a NATSCluster.
type NATSNode struct {
	Name        string
	ClientPort  int
	ClusterPort int
	HTTPPort    int
	StoreDir    string
	conf        string
	proc        *Process
}

// StartNATSCluster starts a cluster of size nodes and waits until it has a
// JetStream meta leader and every node is healthy. The nodes are stopped
// and their stores removed when the test ends.
func StartNATSCluster(t testing.TB, size int) *NATSCluster {
	t.Helper()
	root := t.TempDir()
	c := &NATSCluster{t: t}
	var urls, routes []string
	for i := 0; i < size; i++ {
		n := &NATSNode{
			Name:        fmt.Sprintf("n%d", i+1),
			ClientPort:  FreePort(t),
			ClusterPort: FreePort(t),
			HTTPPort:    FreePort(t),
		}
		n.StoreDir = filepath.Join(root, n.Name, "store")
		n.conf = filepath.Join(root, n.Name, "nats.conf")
		c.Nodes = append(c.Nodes, n)
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", n.ClientPort))
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", n.ClusterPort))
	}
	c.URL = strings.Join(urls, ",")
	for _, n := range c.Nodes {
		if err := n.writeConfig(routes); err != nil {
			t.Fatal(err)
		}
	}
	for i := range c.Nodes {
		c.Start(i)
	}
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.nc != nil {
			c.nc.Close()
		}
	})
	c.WaitHealthy(60*time.Second, "")
	return c
}

// writeConfig writes the node's server config: JetStream on its own store,
// routes to every node (a route to itself is ignored by the server).
func (n *NATSNode) writeConfig(routes []string) error {
	if err := os.MkdirAll(n.StoreDir, 0o755); err != nil {
		return err
	}
	quoted := make([]string, len(routes))
	for i, r := range routes {
		quoted[i] = fmt.Sprintf("%q", r)
	}
	conf := fmt.Sprintf(`server_name: %q
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
jetstream { store_dir: %q }
cluster {
  name: "fanout-test"
  listen: "127.0.0.1:%d"
  routes: [%s]
}
`, n.Name, n.ClientPort, n.HTTPPort, n.StoreDir, n.ClusterPort, strings.Join(quoted, ", "))
	return os.WriteFile(n.conf, []byte(conf), 0o644)
}

// Start starts node i (again), on its ports and store. It does not wait for
// the node to join: call WaitHealthy.
func (c *NATSCluster) Start(i int) {
	c.t.Helper()
	n := c.Nodes[i]
	if n.proc != nil {
		if exited, _ := n.proc.Exited(); !exited {
			c.t.Fatalf("nats node %s is already running", n.Name)
		}
	}
	n.proc = StartProcess(c.t, "nats-"+n.Name, "nats-server", []string{"-c", n.conf})
}

// Stop stops node i: SIGKILL when crash is set (the store is left as a
// crash leaves it), else SIGTERM and a clean shutdown.
func (c *NATSCluster) Stop(i int, crash bool) {
	c.t.Helper()
	n := c.Nodes[i]
	if crash {
		n.proc.Kill()
		return
	}
	// An exit status is expected from a stopped server; only a server that
	// ignored SIGTERM (and was killed) is worth a line.
	var exit *exec.ExitError
	if err := n.proc.Stop(30 * time.Second); err != nil && !errors.As(err, &exit) {
		c.t.Logf("nats node %s: %v", n.Name, err)
	}
}

// WaitHealthy waits until the cluster is whole again: every node reports
// itself healthy (/healthz: it follows the JetStream meta leader and its
// streams and consumers are current), all nodes name the same meta leader,
// and, when stream is not "", that stream has a leader and every replica is
// current. It fails the test with the last reason after timeout.
func (c *NATSCluster) WaitHealthy(timeout time.Duration, stream string) {
	c.t.Helper()
	EventuallyErr(c.t, timeout, "NATS cluster to be healthy", func() error {
		if err := c.metaHealthy(); err != nil {
			return err
		}
		if stream == "" {
			return nil
		}
		return c.streamCurrent(stream)
	})
}

// metaHealthy checks /healthz and the meta leader of every node.
func (c *NATSCluster) metaHealthy() error {
	leader := ""
	for _, n := range c.Nodes {
		if err := n.healthz(); err != nil {
			return err
		}
		var jsz struct {
			Meta *struct {
				Leader string `json:"leader"`
			} `json:"meta_cluster"`
		}
		if err := n.getJSON("/jsz", &jsz); err != nil {
			return err
		}
		if jsz.Meta == nil || jsz.Meta.Leader == "" {
			return fmt.Errorf("node %s has no JetStream meta leader", n.Name)
		}
		if leader != "" && jsz.Meta.Leader != leader {
			return fmt.Errorf("nodes disagree on the JetStream meta leader (%s, %s)", leader, jsz.Meta.Leader)
		}
		leader = jsz.Meta.Leader
	}
	return nil
}

// healthz is nil when the node's /healthz says ok, else its complaint.
func (n *NATSNode) healthz() error {
	var h struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if err := n.getJSON("/healthz", &h); err != nil {
		return err
	}
	if h.Status != "ok" {
		return fmt.Errorf("node %s /healthz: %s %s", n.Name, h.Status, h.Error)
	}
	return nil
}

func (n *NATSNode) getJSON(path string, v any) error {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", n.HTTPPort, path))
	if err != nil {
		return fmt.Errorf("node %s monitoring %s: %w", n.Name, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("node %s monitoring %s: %w", n.Name, path, err)
	}
	// /healthz answers 503 with a JSON body saying why: decode it anyway.
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("node %s monitoring %s: HTTP %d, %q", n.Name, path, resp.StatusCode, truncate(string(body), 200))
	}
	return nil
}

// streamCurrent checks that stream has a leader and every replica is
// online and current.
func (c *NATSCluster) streamCurrent(stream string) error {
	nc, err := c.conn()
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	info := s.CachedInfo()
	ci := info.Cluster
	if ci == nil || ci.Leader == "" {
		return fmt.Errorf("stream %s has no leader", stream)
	}
	if len(ci.Replicas) != info.Config.Replicas-1 {
		return fmt.Errorf("stream %s has %d followers, want %d", stream, len(ci.Replicas), info.Config.Replicas-1)
	}
	for _, r := range ci.Replicas {
		if r.Offline || !r.Current {
			return fmt.Errorf("stream %s replica on %s is not current (offline %v, lag %d)", stream, r.Name, r.Offline, r.Lag)
		}
	}
	return nil
}

// conn is the cluster's own client connection, opened on first use.
func (c *NATSCluster) conn() (*nats.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nc == nil {
		nc, err := nats.Connect(c.URL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
		if err != nil {
			return nil, fmt.Errorf("connect to NATS cluster %s: %w", c.URL, err)
		}
		c.nc = nc
	}
	return c.nc, nil
}
