package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapes"
	"github.com/fanout/pipeline/fanout/shapestate"
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
	for _, svc := range []string{"ingest", "flushd", "consumer", "shapeapi", "fanoutctl"} {
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
	subject := fanout.Subject(partition)

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
	ingest.allowed(t, "write its continuity keys", func(ctx context.Context) error {
		if _, err := ingest.bus.State.Put(ctx, fanout.KeyIngestSlot, []byte(`{}`)); err != nil {
			return err
		}
		_, err := ingest.bus.State.Put(ctx, fanout.KeyContinuity, []byte(`{}`))
		return err
	})
	ingest.allowed(t, "replace the shapes after a break of continuity", func(ctx context.Context) error {
		// The API's bucket as shapeapi makes it, naming a shape.
		_, err := admin.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: fanout.APIDefinitionsBucket, History: 1})
		if err != nil {
			return err
		}
		defs, _ := admin.js.KeyValue(ctx, fanout.APIDefinitionsBucket)
		if _, err := admin.bus.Shapes.Put(ctx, "sh2", []byte(`{"handle":"sh2","table":"public.items","primary_key":["id"],"schema":[{"name":"id","type":"integer","oid":23}],"created_at":"2024-01-01T00:00:00Z"}`)); err != nil {
			return err
		}
		if _, err := defs.Put(ctx, "d1", []byte(`{"handle":"sh2"}`)); err != nil {
			return err
		}
		replaced, err := shapes.Replace(ctx, ingest.bus, []string{"public.items"}, slog.Default())
		if err != nil {
			return err
		}
		if len(replaced) != 1 || replaced[0].Old != "sh2" {
			return fmt.Errorf("replaced %v, want sh2 only", replaced)
		}
		return nil
	})
	ingest.denied(t, "write the safe LSN", "$KV.fanout_state.safe_lsn", func(ctx context.Context) error {
		_, err := ingest.bus.State.Put(ctx, fanout.KeySafeLSN, []byte(`{}`))
		return err
	})
	ingest.denied(t, "write a binding", "$KV.fanout_bindings.p.3", func(ctx context.Context) error {
		_, err := ingest.bus.Bindings.Put(ctx, fanout.BindingKey(partition), []byte(`{}`))
		return err
	})
	ingest.denied(t, "pull fragments", "$JS.API.CONSUMER.CREATE.FANOUT.stolen.fanout.3", func(ctx context.Context) error {
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
	flushd.denied(t, "purge the stream", "$JS.API.STREAM.PURGE.FANOUT", func(ctx context.Context) error {
		return flushd.bus.Stream.Purge(ctx, jetstream.WithPurgeSubject(subject))
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

// shapeapi does what consumers/shapeapi does: at start the bus, its
// definitions bucket and the snapshot-state bucket; then it watches the
// shapes and the safe LSN, hears the consumers' notices, registers a shape
// for a new definition (claim, shape, first state, handle), waits for the
// shape's snapshot state, and removes a rotated shape (shapes.Remove).
func TestNATSShapeAPIDoesItsJobAndNoOtherJob(t *testing.T) {
	srv := startConfiguredNATS(t)
	api := connectAs(t, srv, "shapeapi") // first on an empty server: it creates everything it uses
	var defs, states jetstream.KeyValue
	api.allowed(t, "set up the bus, its definitions bucket and the snapshot states", func(ctx context.Context) error {
		var err error
		if api.bus, err = fanout.EnsureBus(ctx, api.js, fanout.DefaultBusConfig()); err != nil {
			return err
		}
		if defs, err = api.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: fanout.APIDefinitionsBucket, History: 1}); err != nil {
			return err
		}
		states, err = shapestate.Ensure(ctx, api.js, 1, false)
		return err
	})
	if t.Failed() {
		t.FailNow()
	}
	consumer := connectAs(t, srv, "consumer")
	consumer.ensureBus(t)
	flushd := connectAs(t, srv, "flushd")
	flushd.ensureBus(t)
	flushd.allowed(t, "write the safe LSN", func(ctx context.Context) error {
		_, err := flushd.bus.State.Put(ctx, fanout.KeySafeLSN, []byte(`{"lsn":"0/16B3748"}`))
		return err
	})

	api.allowed(t, "watch the shapes and the safe LSN", func(ctx context.Context) error {
		if err := watchInitial(ctx, api.bus.Shapes); err != nil {
			return err
		}
		w, err := api.bus.State.Watch(ctx, fanout.KeySafeLSN)
		if err != nil {
			return err
		}
		defer w.Stop()
		for e := range w.Updates() {
			if e != nil {
				return nil
			}
		}
		return errors.New("the safe LSN watch ended")
	})
	api.allowed(t, "read ingest's published LSN and the oldest message of a partition (watermarks)", func(ctx context.Context) error {
		if _, err := api.bus.State.Get(ctx, fanout.KeyIngestPublished); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
		_, err := api.bus.Stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(fanout.Subject(3)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		return err
	})
	api.allowed(t, "hear that a shape log grew", func(ctx context.Context) error {
		got := make(chan string, 1)
		sub, err := api.js.Conn().Subscribe(fanout.NoticeSubjectPrefix+".>", func(m *nats.Msg) {
			select {
			case got <- m.Subject:
			default:
			}
		})
		if err != nil {
			return err
		}
		defer sub.Unsubscribe()
		if err := api.js.Conn().Flush(); err != nil {
			return err
		}
		if err := consumer.js.Conn().Publish(fanout.NoticeSubjectPrefix+".sh1", nil); err != nil {
			return err
		}
		select {
		case <-got:
			return nil
		case <-ctx.Done():
			return errors.New("the notice did not arrive")
		}
	})

	sh := &fanout.Shape{Handle: fanout.NewHandle(), Table: "public.items", PrimaryKey: []string{"id"},
		Schema: []fanout.Column{{Name: "id", Type: "integer", OID: 23}}, CreatedAt: time.Now().UTC()}
	const defKey = "0123456789abcdef0123456789abcdef"
	api.allowed(t, "register a shape for a new definition", func(ctx context.Context) error {
		if _, err := defs.Get(ctx, defKey); !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("get an unknown definition: %v", err)
		}
		rev, err := defs.Create(ctx, defKey, []byte(`{"pending":"2026-01-01T00:00:00Z"}`))
		if err != nil {
			return err
		}
		if _, err := api.bus.Shapes.Create(ctx, sh.Handle, sh.Encode()); err != nil {
			return err
		}
		if _, err := shapestate.Swap(ctx, states, &shapestate.State{Handle: sh.Handle, Phase: shapestate.Creating}, 0); err != nil {
			return err
		}
		if _, err := defs.Update(ctx, defKey, []byte(`{"handle":"`+sh.Handle+`"}`), rev); err != nil {
			return err
		}
		if _, err := defs.Get(ctx, defKey); err != nil {
			return err
		}
		_, err = shapes.Get(ctx, api.bus, sh.Handle)
		return err
	})
	api.allowed(t, "follow the API shapes and record when one was last read", func(ctx context.Context) error {
		if err := watchInitial(ctx, defs); err != nil {
			return err
		}
		if err := watchInitial(ctx, states); err != nil {
			return err
		}
		_, err := defs.Put(ctx, "read."+sh.Handle, []byte("1767225600000"))
		return err
	})
	api.allowed(t, "wait for the shape's snapshot state", func(ctx context.Context) error {
		w, err := states.Watch(ctx, sh.Handle)
		if err != nil {
			return err
		}
		defer w.Stop()
		<-w.Updates()
		_, _, err = shapestate.Get(ctx, states, sh.Handle)
		return err
	})
	api.allowed(t, "remove a rotated shape and drop a failed registration", func(ctx context.Context) error {
		if err := shapes.Remove(ctx, api.bus, sh.Handle); err != nil {
			return err
		}
		e, err := defs.Get(ctx, defKey)
		if err != nil {
			return err
		}
		return defs.Delete(ctx, defKey, jetstream.LastRevision(e.Revision()))
	})

	api.denied(t, "publish to the bus", "fanout.3", func(ctx context.Context) error {
		_, err := api.js.Publish(ctx, "fanout.3", []byte(`{}`))
		return err
	})
	api.denied(t, "write the safe LSN", "$KV.fanout_state.safe_lsn", func(ctx context.Context) error {
		_, err := api.bus.State.Put(ctx, fanout.KeySafeLSN, []byte(`{}`))
		return err
	})
	api.denied(t, "write a binding", "$KV.fanout_bindings.p.3", func(ctx context.Context) error {
		_, err := api.bus.Bindings.Put(ctx, fanout.BindingKey(3), []byte(`{}`))
		return err
	})
	api.denied(t, "write ingest's routing key", "$KV.fanout_shape_state.ingest.routing", func(ctx context.Context) error {
		_, err := states.Put(ctx, shapestate.RoutingKey, []byte(`{}`))
		return err
	})
	api.denied(t, "mark a shape failed", "$KV.fanout_failed.sh1", func(ctx context.Context) error {
		_, err := api.bus.Failed.Put(ctx, "sh1", []byte(`{}`))
		return err
	})
	api.denied(t, "pull from the bus", "$JS.API.CONSUMER.CREATE.FANOUT.stolen.fanout.3", func(ctx context.Context) error {
		_, err := api.bus.Stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "stolen", FilterSubject: "fanout.3"})
		return err
	})
}
