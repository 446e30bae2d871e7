package fanout

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
)

// ConnectOptions say how a service reaches NATS.
type ConnectOptions struct {
	URL       string
	CredsFile string // NATS user credentials; empty for none
	CAFile    string // enables TLS, trusting this CA; empty for none
	Name      string // client name shown by `nats server report connections`
}

// Connect dials NATS. Once connected it reconnects for ever, logging each
// disconnect and reconnect; the services' own bounded retries decide when an
// outage is fatal. The first dial is retried for up to a minute.
func Connect(o ConnectOptions, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: a deliberate Close
				log.Warn("disconnected from NATS; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", "url", nc.ConnectedUrl())
		}),
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (check nats.url and that the server runs)", o.URL, err)
	}
	deadline := time.Now().Add(time.Minute)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			nc.Close()
			return nil, fmt.Errorf("connect to NATS at %s: not reachable for 1m (check nats.url and that the server runs with JetStream)", o.URL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nc, nil
}
