package deploy

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// These tests run an embedded NATS server from deploy/nats/nats.conf with
// the passwords docker-compose.yml gives it, connect as each service with
// the FANOUT_NATS_URL compose gives that service, and do what the service
// does on the bus. What a user may do is checked both ways: allowed calls
// succeed with no permission violation, and a few calls that belong to
// another service are refused.

// startConfiguredNATS starts nats.conf on a free port with a scratch store.
func startConfiguredNATS(t *testing.T) *url.URL {
	t.Helper()
	p := loadProject(t)
	for k, v := range env(service(t, p, "nats")) {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile("nats/nats.conf")
	if err != nil {
		t.Fatalf("nats/nats.conf does not load: %v", err)
	}
	opts.Host = "127.0.0.1"
	opts.Port = -1
	opts.HTTPPort = 0
	opts.StoreDir = t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server from nats.conf: %v", err)
	}
	go s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(30 * time.Second) {
		t.Fatal("nats server from nats.conf was not ready in 30s")
	}
	if !s.JetStreamEnabled() {
		t.Fatal("nats.conf does not enable JetStream")
	}
	u, err := url.Parse(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// client is one service's connection, recording the permission violations
// the server reports to it.
type client struct {
	name string
	js   jetstream.JetStream
	bus  *fanout.Bus

	mu         sync.Mutex
	violations []string
}

// connectAs connects with the credentials compose gives service.
func connectAs(t *testing.T, srv *url.URL, svc string) *client {
	t.Helper()
	p := loadProject(t)
	u, err := url.Parse(env(service(t, p, svc))["FANOUT_NATS_URL"])
	if err != nil {
		t.Fatalf("service %s: FANOUT_NATS_URL: %v", svc, err)
	}
	u.Host = srv.Host
	c := &client{name: svc}
	nc, err := nats.Connect(u.String(), nats.Name(svc), nats.MaxReconnects(0),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) || strings.Contains(err.Error(), "Permissions Violation") {
				c.mu.Lock()
				c.violations = append(c.violations, err.Error())
				c.mu.Unlock()
			}
		}))
	if err != nil {
		t.Fatalf("connect as %s (user %s): %v", svc, u.User.Username(), err)
	}
	t.Cleanup(nc.Close)
	if c.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return c
}

// ensureBus is what every service does first.
func (c *client) ensureBus(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	if c.bus, err = fanout.EnsureBus(ctx, c.js, fanout.DefaultBusConfig()); err != nil {
		t.Fatalf("%s cannot set up the bus: %v (violations: %v)", c.name, err, c.taken())
	}
}

func (c *client) taken() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.violations
	c.violations = nil
	return v
}

// allowed runs op, which must succeed without any permission violation.
func (c *client) allowed(t *testing.T, what string, op func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := op(ctx); err != nil {
		t.Errorf("%s should be allowed to %s: %v (violations: %v)", c.name, what, err, c.taken())
		return
	}
	if v := c.taken(); len(v) > 0 {
		t.Errorf("%s could %s, but the server reported: %v", c.name, what, v)
	}
}

// denied runs op, which must fail because the server refused to let this
// user publish to subject.
func (c *client) denied(t *testing.T, what, subject string, op func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := op(ctx); err == nil {
		t.Errorf("%s must not be allowed to %s, but it was", c.name, what)
		return
	}
	want := `Publish to "` + subject + `"`
	testenv.Eventually(t, 5*time.Second, c.name+" gets a permission violation for "+subject, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, v := range c.violations {
			if strings.Contains(v, want) {
				return true
			}
		}
		return false
	})
	c.taken()
}

// Each user alone can create the whole bus on an empty server, as whichever
// service starts first does.
func TestNATSEveryUserCanCreateTheBus(t *testing.T) {
	for _, svc := range []string{"ingest", "flushd", "consumer", "fanoutctl"} {
		t.Run(svc, func(t *testing.T) {
			srv := startConfiguredNATS(t)
			c := connectAs(t, srv, svc)
			c.ensureBus(t)
			if v := c.taken(); len(v) > 0 {
				t.Errorf("%s set up the bus, but the server reported: %v", svc, v)
			}
			connectAs(t, srv, "consumer").ensureBus(t) // and the next one updates it
		})
	}
}

func TestNATSEachServiceDoesItsJobAndNoOtherJob(t *testing.T) {
	srv := startConfiguredNATS(t)
	admin := connectAs(t, srv, "fanoutctl")
	ingest := connectAs(t, srv, "ingest")
	flushd := connectAs(t, srv, "flushd")
	consumer := connectAs(t, srv, "consumer")
	for _, c := range []*client{admin, ingest, flushd, consumer} {
		c.ensureBus(t)
	}
	const shape = "sh1"
	partition := 3
	subject := fanout.Subject(partition, shape)

	admin.allowed(t, "add a shape", func(ctx context.Context) error {
		_, err := admin.bus.Shapes.Put(ctx, shape, []byte(`{"handle":"sh1","table":"public.items"}`))
		return err
	})

	// ingest
	ingest.allowed(t, "read and watch the shapes", func(ctx context.Context) error {
		if _, err := ingest.bus.Shapes.Get(ctx, shape); err != nil {
			return err
		}
		return watchInitial(ctx, ingest.bus.Shapes)
	})
	ingest.allowed(t, "watch the safe LSN", func(ctx context.Context) error {
		w, err := ingest.bus.State.Watch(ctx, fanout.KeySafeLSN)
		if err != nil {
			return err
		}
		defer w.Stop()
		<-w.Updates()
		return nil
	})
	ingest.allowed(t, "publish a fragment asynchronously", func(ctx context.Context) error {
		m := nats.NewMsg(subject)
		m.Header.Set(fanout.HeaderCommitLSN, "0/16B3748")
		m.Data = []byte(`{}`)
		fut, err := ingest.js.PublishMsgAsync(m, jetstream.WithMsgID("sh1:0/16B3748:0"))
		if err != nil {
			return err
		}
		select {
		case <-fut.Ok():
			return nil
		case err := <-fut.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	ingest.allowed(t, "write its published LSN", func(ctx context.Context) error {
		_, err := ingest.bus.State.Put(ctx, fanout.KeyIngestPublished, []byte(`{"lsn":"0/16B3748"}`))
		return err
	})
	ingest.denied(t, "write the safe LSN", "$KV.fanout_state.safe_lsn", func(ctx context.Context) error {
		_, err := ingest.bus.State.Put(ctx, fanout.KeySafeLSN, []byte(`{}`))
		return err
	})
	ingest.denied(t, "write a binding", "$KV.fanout_bindings.p.3", func(ctx context.Context) error {
		_, err := ingest.bus.Bindings.Put(ctx, fanout.BindingKey(partition), []byte(`{}`))
		return err
	})
	ingest.denied(t, "pull fragments", "$JS.API.CONSUMER.CREATE.FANOUT.stolen.fanout.3.>", func(ctx context.Context) error {
		_, err := ingest.bus.Stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "stolen", FilterSubject: fanout.PartitionFilter(partition)})
		return err
	})

	// flushd
	flushd.allowed(t, "read the oldest unpersisted fragment", func(ctx context.Context) error {
		info, err := flushd.bus.Stream.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 1 {
			return errors.New("stream FANOUT should hold the one fragment")
		}
		m, err := flushd.bus.Stream.GetMsg(ctx, info.State.FirstSeq, jetstream.WithGetMsgSubject(fanout.SubjectPrefix+".>"))
		if err != nil {
			return err
		}
		if m.Header.Get(fanout.HeaderCommitLSN) != "0/16B3748" {
			return errors.New("the fragment lost its commit LSN header")
		}
		return nil
	})
	flushd.allowed(t, "read ingest's published LSN, watch heartbeats and bindings", func(ctx context.Context) error {
		if _, err := flushd.bus.State.Get(ctx, fanout.KeyIngestPublished); err != nil {
			return err
		}
		for _, kv := range []jetstream.KeyValue{flushd.bus.Consumers, flushd.bus.Bindings} {
			if err := watchInitial(ctx, kv); err != nil {
				return err
			}
		}
		return nil
	})
	flushd.allowed(t, "write the safe LSN and a binding", func(ctx context.Context) error {
		if _, err := flushd.bus.State.Put(ctx, fanout.KeySafeLSN, []byte(`{"lsn":"0/16B3748"}`)); err != nil {
			return err
		}
		_, err := flushd.bus.Bindings.Put(ctx, fanout.BindingKey(partition), []byte(`{"partition":3,"consumer":"c1","epoch":1}`))
		return err
	})
	flushd.allowed(t, "forget a dead consumer", func(ctx context.Context) error {
		return flushd.bus.Consumers.Delete(ctx, "dead-one")
	})
	flushd.allowed(t, "purge a removed shape", func(ctx context.Context) error {
		return flushd.bus.Stream.Purge(ctx, jetstream.WithPurgeSubject(fanout.ShapeFilter("removed")))
	})
	flushd.denied(t, "write ingest's published LSN", "$KV.fanout_state.ingest_published", func(ctx context.Context) error {
		_, err := flushd.bus.State.Put(ctx, fanout.KeyIngestPublished, []byte(`{}`))
		return err
	})
	flushd.denied(t, "publish a fragment", subject, func(ctx context.Context) error {
		_, err := flushd.js.Publish(ctx, subject, []byte(`{}`))
		return err
	})

	// consumer
	ingest.allowed(t, "read the safe LSN", func(ctx context.Context) error {
		_, err := ingest.bus.State.Get(ctx, fanout.KeySafeLSN)
		return err
	})
	consumer.allowed(t, "heartbeat, watch bindings and shapes", func(ctx context.Context) error {
		if _, err := consumer.bus.Consumers.Put(ctx, "c1", []byte(`{"id":"c1"}`)); err != nil {
			return err
		}
		if _, err := consumer.bus.Bindings.Get(ctx, fanout.BindingKey(partition)); err != nil {
			return err
		}
		for _, kv := range []jetstream.KeyValue{consumer.bus.Bindings, consumer.bus.Shapes} {
			if err := watchInitial(ctx, kv); err != nil {
				return err
			}
		}
		return nil
	})
	consumer.allowed(t, "take the partition: delete an old epoch's consumer, pull, ack", func(ctx context.Context) error {
		old, err := consumer.bus.Stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable: fanout.ConsumerGroupName(partition, 0), FilterSubject: fanout.PartitionFilter(partition), AckPolicy: jetstream.AckExplicitPolicy,
		})
		if err != nil {
			return err
		}
		if err := consumer.bus.Stream.DeleteConsumer(ctx, old.CachedInfo().Name); err != nil {
			return err
		}
		names := consumer.bus.Stream.ConsumerNames(ctx)
		for range names.Name() {
		}
		if err := names.Err(); err != nil {
			return err
		}
		cons, err := consumer.bus.Stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable: fanout.ConsumerGroupName(partition, 1), FilterSubject: fanout.PartitionFilter(partition),
			AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		if err != nil {
			return err
		}
		if _, err := consumer.bus.Stream.Consumer(ctx, fanout.ConsumerGroupName(partition, 1)); err != nil {
			return err
		}
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return err
		}
		var got int
		for m := range batch.Messages() {
			got++
			if err := m.DoubleAck(ctx); err != nil {
				return err
			}
		}
		if got != 1 {
			return errors.New("fetched no fragment")
		}
		return batch.Error()
	})
	consumer.allowed(t, "dead-letter a fragment and mark its shape failed", func(ctx context.Context) error {
		if _, err := consumer.js.Publish(ctx, fanout.DeadLetterSubject(partition, shape), []byte(`{}`)); err != nil {
			return err
		}
		_, err := consumer.bus.Failed.Put(ctx, shape, []byte(`{}`))
		return err
	})
	admin.allowed(t, "see the acked fragment gone from the work queue", func(ctx context.Context) error {
		info, err := admin.bus.Stream.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 {
			return errors.New("the acked fragment is still in FANOUT")
		}
		return nil
	})
	consumer.denied(t, "write a binding", "$KV.fanout_bindings.p.3", func(ctx context.Context) error {
		_, err := consumer.bus.Bindings.Put(ctx, fanout.BindingKey(partition), []byte(`{}`))
		return err
	})
	consumer.denied(t, "write the safe LSN", "$KV.fanout_state.safe_lsn", func(ctx context.Context) error {
		_, err := consumer.bus.State.Put(ctx, fanout.KeySafeLSN, []byte(`{}`))
		return err
	})
	consumer.denied(t, "publish a fragment", subject, func(ctx context.Context) error {
		_, err := consumer.js.Publish(ctx, subject, []byte(`{}`))
		return err
	})
}

// watchInitial watches a whole bucket until its current values are delivered.
func watchInitial(ctx context.Context, kv jetstream.KeyValue) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	for u := range w.Updates() {
		if u == nil { // the marker after the current values
			return nil
		}
	}
	return errors.New("watch of " + kv.Bucket() + " ended before its current values")
}
