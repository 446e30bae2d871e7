package fanout

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
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
	// The first dial fails in the background (RetryOnFailedConnect): keep
	// its last error, so a TLS or auth problem is reported as such.
	var mu sync.Mutex
	var dialErr error
	opts := []nats.Option{
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			mu.Lock()
			dialErr = err
			mu.Unlock()
		}),
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
			log.Info("reconnected to NATS", "url", RedactURL(nc.ConnectedUrl()))
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
		return nil, fmt.Errorf("connect to NATS at %s: %w (check nats.url and that the server runs)", RedactURL(o.URL), err)
	}
	deadline := time.Now().Add(time.Minute)
	for !nc.IsConnected() {
		last := nc.LastError()
		if last == nil {
			mu.Lock()
			last = dialErr
			mu.Unlock()
		}
		// TLS and credential errors do not go away by waiting.
		if hint := ConnectErrorHint(last); hint != "" || nc.IsClosed() {
			if hint == "" {
				hint = "the NATS client gave up; check nats.url and the server's log"
			}
			nc.Close()
			return nil, fmt.Errorf("connect to NATS at %s: %v (%s)", RedactURL(o.URL), last, hint)
		}
		if time.Now().After(deadline) {
			nc.Close()
			return nil, fmt.Errorf("connect to NATS at %s: not reachable for 1m, last error: %v (check nats.url and that the server runs with JetStream)", RedactURL(o.URL), last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nc, nil
}

// ConnectErrorHint says what to fix when err is a TLS or
// authentication failure, and "" for anything else.
func ConnectErrorHint(err error) string {
	if err == nil {
		return ""
	}
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var certErr *tls.CertificateVerificationError
	msg := strings.ToLower(err.Error())
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &certErr), strings.Contains(msg, "x509:"):
		return "the server's TLS certificate is not trusted: set nats.ca_file to the CA that signed it, and use the host name in the certificate in nats.url"
	case errors.Is(err, nats.ErrSecureConnRequired), errors.Is(err, nats.ErrSecureConnWanted), strings.Contains(msg, "does not look like a tls handshake"):
		return "TLS is required on one side only: set nats.ca_file (and a tls:// nats.url) to match the server's tls block"
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked), strings.Contains(msg, "authorization"):
		return "the server refused the credentials: check the user and password in nats.url or the nats.creds_file"
	}
	return ""
}

// RedactURL hides the password of each URL in a comma-separated NATS URL
// list, so that logs and errors never carry it.
func RedactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}
