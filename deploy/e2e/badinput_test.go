package e2e

// Bad input (issue 7, guarantee 6 of the brief): each test feeds the running
// pipeline one kind of bad input and checks two things: the input gets a
// clear error or its documented behaviour, and everything it was not told to
// lose is still there (the other shapes equal their queries, WAL is released).

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// busClient connects the test itself to the stack's NATS.
func (s *stack) busClient() (*nats.Conn, jetstream.JetStream) {
	s.t.Helper()
	return s.nats.Connect(s.t)
}

// publishRaw publishes data on subject with the given headers and fails
// the test unless JetStream stores it.
func publishRaw(t *testing.T, js jetstream.JetStream, subject string, data []byte, headers map[string]string) {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = data
	for k, v := range headers {
		m.Header.Set(k, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatalf("publish on %s: %v", subject, err)
	}
}

// deadLetters returns the reasons of the dead-lettered messages, keyed by
// their original subject.
func deadLetters(t *testing.T, js jetstream.JetStream) map[string][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, fanout.DeadLetterStream)
	if err != nil {
		t.Fatalf("stream %s: %v", fanout.DeadLetterStream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		subj := m.Header.Get(fanout.HeaderDeadSubject)
		out[subj] = append(out[subj], m.Header.Get(fanout.HeaderDeadReason))
	}
	return out
}

// streamMsgs is the number of messages in FANOUT: unpersisted fragments.
func streamMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, fanout.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func kvPut(t *testing.T, js jetstream.JetStream, bucket, key string, value []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatalf("KV bucket %s: %v", bucket, err)
	}
	if _, err := kv.Put(ctx, key, value); err != nil {
		t.Fatalf("put %s/%s: %v", bucket, key, err)
	}
}

func kvDelete(t *testing.T, js jetstream.JetStream, bucket, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatalf("KV bucket %s: %v", bucket, err)
	}
	if err := kv.Delete(ctx, key); err != nil {
		t.Fatalf("delete %s/%s: %v", bucket, key, err)
	}
}

// failedShapes reads the failed bucket: shape handle -> reason.
func failedShapes(t *testing.T, js jetstream.JetStream) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, fanout.FailedBucket)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	keys, err := kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		out[k] = string(e.Value())
	}
	return out
}

// settle waits until everything committed is confirmed, every shape equals
// its query and the slot retains under one segment of WAL.
func (s *stack) settle(defs []shapeDef) {
	s.t.Helper()
	start := time.Now()
	defer func() { s.t.Logf("settled in %s", time.Since(start).Round(time.Millisecond)) }()
	s.drain()
	s.checkShapes(defs)
	testenv.Eventually(s.t, 30*time.Second, "retained WAL under one segment", func() bool { return s.retainedWAL() < walSegment })
}

// TestBadInputMalformedMessagesAndKV publishes garbage and foreign messages
// on the project's subjects and writes garbage into every bucket the services
// read. Documented behaviour: a message on a partition's subject that is not
// a fragment this build reads is dead-lettered with the reason (and the shape
// it names is marked failed); a message of an unknown shape is dropped like
// one of a removed shape; a message on a subject no partition owns is
// dead-lettered by flushd; invalid KV values are logged and ignored, and the
// ones the services own are rewritten by them. The pipeline keeps flowing.
func TestBadInputMalformedMessagesAndKV(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	defs := []shapeDef{s.addShape("public.items", "owner = 1"), s.addShape("public.items", "owner = 2")}
	victim := defs[0].handle
	s.startFlushd()
	s.startConsumer("c1")
	ingest := s.startIngest()
	s.waitSlot()
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, NULL FROM generate_series(1, 100) g`)
	s.settle(defs)

	_, js := s.busClient()
	p := fanout.Partition(victim, testPartitions)
	subject := fanout.Subject(p)
	named := map[string]string{fanout.HeaderShape: victim} // ingest names a message's first shape
	// Garbage, with and without a commit LSN header (a header makes flushd
	// take it for the oldest message until it is gone).
	publishRaw(t, js, subject, []byte("this is not JSON"), named)
	publishRaw(t, js, subject, []byte{0xff, 0x00, 0x01}, map[string]string{fanout.HeaderCommitLSN: "0/1", fanout.HeaderShape: victim})
	// A well-formed message holding a fragment of a wire version this
	// build does not read: that fragment alone is dead-lettered.
	future := `{"v":99,"shape":"` + victim + `","xid":1,"commit_lsn":"0/2","end_lsn":"0/3","commit_time":"2026-01-01T00:00:00Z","seq":0,"last":true,"changes":[]}`
	publishRaw(t, js, subject, fanout.EncodeMessage(p, [][]byte{[]byte(future)}), map[string]string{fanout.HeaderCommitLSN: "0/2"})
	// A valid fragment for a shape that does not exist.
	ghost := "sghost000000000000"
	ghostFrag := `{"v":1,"shape":"` + ghost + `","xid":1,"commit_lsn":"0/2","end_lsn":"0/3","commit_time":"2026-01-01T00:00:00Z","seq":0,"last":true,"changes":[{"op":"insert","row":{"id":"1"}}]}`
	gp := fanout.Partition(ghost, testPartitions)
	publishRaw(t, js, fanout.Subject(gp), fanout.EncodeMessage(gp, [][]byte{[]byte(ghostFrag)}), map[string]string{fanout.HeaderCommitLSN: "0/2"})
	// Subjects no partition's consumer pulls: a partition out of range, a
	// partition that is not a number, too few tokens.
	foreign := []string{"fanout.999", "fanout.3." + victim, "fanout.x", "fanout.-1"}
	for _, subj := range foreign {
		publishRaw(t, js, subj, []byte("foreign"), map[string]string{fanout.HeaderCommitLSN: "0/1"})
	}

	// Garbage in every bucket. Shapes: a handle with an undecodable value.
	// Bindings: a live partition's binding and a foreign key. Consumers: a
	// heartbeat that does not decode. State: both LSN keys.
	kvPut(t, js, fanout.ShapesBucket, "sgarbage", []byte("{not a shape"))
	kvPut(t, js, fanout.BindingsBucket, fanout.BindingKey(p), []byte("garbage"))
	kvPut(t, js, fanout.BindingsBucket, "foreign", []byte("garbage"))
	kvPut(t, js, fanout.ConsumersBucket, "ghost", []byte("garbage"))
	kvPut(t, js, fanout.StateBucket, fanout.KeyIngestPublished, []byte("garbage"))
	kvPut(t, js, fanout.StateBucket, fanout.KeySafeLSN, []byte("garbage"))

	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, NULL FROM generate_series(101, 200) g`)
	s.exec(`UPDATE items SET owner = 2 WHERE owner = 1 AND id % 2 = 0`)
	s.settle(defs)
	// The consumer restarts with the garbage binding in KV: it must still get
	// its partition (flushd rebinds a partition whose binding is invalid).
	s.procs["c1"].Kill()
	s.startConsumer("c1")
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, NULL FROM generate_series(201, 300) g`)
	s.settle(defs)

	testenv.Eventually(t, 30*time.Second, "every message to leave FANOUT", func() bool { return streamMsgs(t, js) == 0 })
	dead := deadLetters(t, js)
	if got := len(dead[subject]); got != 3 {
		t.Errorf("dead-lettered from %s: %d messages %q, want the 2 malformed ones and the fragment of an unknown version", subject, got, dead[subject])
	}
	for _, r := range dead[subject] {
		if r == "" {
			t.Errorf("a dead letter from %s has no %s", subject, fanout.HeaderDeadReason)
		}
	}
	if !strings.Contains(strings.Join(dead[subject], "\n"), "wire version 99") {
		t.Errorf("no dead letter names the unknown wire version: %q", dead[subject])
	}
	for _, subj := range foreign {
		if len(dead[subj]) != 1 {
			t.Errorf("message on foreign subject %s: dead-lettered %d times, want once", subj, len(dead[subj]))
		}
	}
	if _, ok := failedShapes(t, js)[victim]; !ok {
		t.Errorf("shape %s received malformed messages but is not in %s", victim, fanout.FailedBucket)
	}
	// fanoutctl names the invalid shape definition and says how to remove it.
	_, errOut, err := testenv.Run(t, "fanoutctl", []string{"shape", "ls"}, s.env...)
	if err == nil || !strings.Contains(errOut, "sgarbage") || !strings.Contains(errOut, "nats kv del") {
		t.Errorf("fanoutctl shape ls with an invalid definition in KV: err %v, stderr %q; want an error naming the key and how to remove it", err, errOut)
	}
	s.ctl("status") // still works
	if !strings.Contains(ingest.Output(), "sgarbage") {
		t.Errorf("ingest did not log the invalid shape definition")
	}
}

// TestBadInputDroppedTableAndTypeChange drops a table under a live shape and
// changes a column type under another. Documented behaviour: DROP TABLE
// sends nothing through logical replication, so the shape keeps the rows it
// had at the drop and gets no more changes (remove it with fanoutctl shape
// rm). A column type change is seen by ingest in the next Relation message;
// the shape's where clause keeps the type it was compiled against, and a
// value it cannot read as that type counts as NULL with a logged warning.
func TestBadInputDroppedTableAndTypeChange(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.exec(`CREATE TABLE doomed (id int PRIMARY KEY, owner int)`)
	items := []shapeDef{s.addShape("public.items", "owner = 1"), s.addShape("public.items", "owner = 2", "id", "owner")}
	doomed := s.addShape("public.doomed", "owner = 1")
	s.startFlushd()
	s.startConsumer("c1")
	ingest := s.startIngest()
	s.waitSlot()
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, NULL FROM generate_series(1, 60) g`)
	s.exec(`INSERT INTO doomed SELECT g, g % 3 FROM generate_series(1, 60) g`)
	s.settle(append(items, doomed))
	before := renderRows(s.shapeRows(doomed.handle))

	s.exec(`DROP TABLE doomed`)
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, NULL FROM generate_series(61, 120) g`)
	s.settle(items)
	if got := renderRows(s.shapeRows(doomed.handle)); got != before {
		t.Errorf("shape on the dropped table changed after DROP TABLE:\n%s\nwant the rows it had:\n%s", got, before)
	}

	// bigint holds every integer value: the shapes stay exact.
	s.exec(`ALTER TABLE items ALTER COLUMN owner TYPE bigint`)
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, NULL FROM generate_series(121, 180) g`)
	s.exec(`INSERT INTO items VALUES (181, 10000000000, 'too big for the integer the shape was compiled for', NULL)`)
	s.exec(`UPDATE items SET owner = 1 WHERE id BETWEEN 100 AND 110`)
	s.settle(items)

	// text: numeric strings still compare as before; a value that is not a
	// number counts as NULL (no match) and ingest logs why.
	s.exec(`ALTER TABLE items ALTER COLUMN owner TYPE text`)
	s.exec(`INSERT INTO items SELECT g, (g % 3)::text, 't' || g, NULL FROM generate_series(201, 260) g`)
	s.exec(`INSERT INTO items VALUES (261, 'one', 'not a number', NULL)`)
	s.exec(`UPDATE items SET owner = 'two' WHERE id = 1`) // was owner = 1: moves out
	s.drain()
	asText := []shapeDef{
		{handle: items[0].handle, table: "public.items", where: "owner = '1'"},
		{handle: items[1].handle, table: "public.items", where: "owner = '2'", columns: []string{"id", "owner"}},
	}
	s.settle(asText)
	testenv.Eventually(t, 10*time.Second, "ingest to log that a value could not be read as the shape's type", func() bool {
		return strings.Contains(ingest.Output(), "could not be evaluated on a row")
	})

	s.ctl("shape", "rm", doomed.handle)
	s.exec(`INSERT INTO items VALUES (300, '1', 'after rm', NULL)`)
	s.settle(asText)
}

// TestBadInputOversizedTransactionAndRow sends a transaction far over NATS's
// max_payload (it must arrive split into fragments) and one row change
// larger than max_payload. Documented behaviour for the row: ingest
// dead-letters the fragment (headers and reason, without the changes),
// marks its shape failed and moves on, so WAL is released; shapes that do
// not carry the large column, or do not match the row, lose nothing.
func TestBadInputOversizedTransactionAndRow(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	big := s.addShape("public.items", "owner = 1")
	narrow := s.addShape("public.items", "owner = 1", "id", "title")
	other := s.addShape("public.items", "owner = 2")
	s.startFlushd()
	s.startConsumer("c1")
	ingest := s.startIngest()
	s.waitSlot()
	_, js := s.busClient()

	// About 6 MB in one transaction, max_payload is 1 MB.
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, repeat(md5(g::text), 6) FROM generate_series(1, 30000) g`)
	s.settle([]shapeDef{big, narrow, other})

	// One row of 2 MB of text: its change is over max_payload.
	s.exec(`INSERT INTO items VALUES (100001, 1, 'huge', repeat('x', 2 << 20))`)
	s.exec(`INSERT INTO items VALUES (100002, 1, 'after', 'small'), (100003, 2, 'after', 'small')`)
	s.drain()
	testenv.Eventually(t, 10*time.Second, "retained WAL under one segment", func() bool { return s.retainedWAL() < walSegment })
	if done, err := ingest.Exited(); done {
		t.Fatalf("ingest exited on an oversized row: %v", err)
	}
	s.checkShapes([]shapeDef{narrow, other})

	reason, ok := failedShapes(t, js)[big.handle]
	if !ok || !strings.Contains(reason, "max_payload") {
		t.Fatalf("shape %s is not marked failed with a max_payload reason: %q", big.handle, reason)
	}
	dead := deadLetters(t, js)
	sub := fanout.Subject(fanout.Partition(big.handle, testPartitions))
	if len(dead[sub]) != 1 || !strings.Contains(dead[sub][0], "max_payload") {
		t.Fatalf("dead letters of %s: %q, want one naming max_payload", sub, dead[sub])
	}
	// The failed shape misses exactly the oversized row and goes on.
	got := s.shapeRows(big.handle)
	want := s.expectedRows("public.items", "owner = 1 AND id <> 100001", nil)
	if renderRows(got) != renderRows(want) {
		t.Errorf("shape %s: want every row but the oversized one; got %d rows, want %d", big.handle, len(got), len(want))
	}
	if !strings.Contains(ingest.Output(), "dead-lettered") {
		t.Errorf("ingest did not log the dead-lettered fragment")
	}
}

// TestBadInputSlotInvalidated lets Postgres invalidate the slot
// (max_slot_wal_keep_size) while no consumer runs. With
// ingest.on_continuity_break=stop, ingest must stop with an error that says
// what happened and what to do (by default it resyncs by itself:
// continuity_test.go).
func TestBadInputSlotInvalidated(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.addShape("public.items", "owner = 1")
	s.startFlushd()
	c1 := s.startConsumer("c1")
	ingest := s.start("ingest", "ingest", "FANOUT_INGEST_ON_CONTINUITY_BREAK=stop")
	s.waitSlot()
	s.exec(`INSERT INTO items VALUES (1, 1, 'a', NULL)`)
	s.drain()

	s.exec(`ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`)
	s.exec(`SELECT pg_reload_conf()`)
	c1.Kill() // the fragments below stay unpersisted: the slot cannot move
	for i := 0; i < 5; i++ {
		s.exec(`INSERT INTO items VALUES ($1, 1, 'pinned', NULL)`, 10+i)
		s.exec(`SELECT pg_switch_wal()`)
	}
	s.exec(`CHECKPOINT`)
	testenv.Eventually(t, 30*time.Second, "the slot to be invalidated", func() bool {
		var status *string
		s.conn.QueryRow(context.Background(), `SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'fanout'`).Scan(&status)
		return status != nil && *status == "lost"
	})
	if err := ingest.Wait(60 * time.Second); err == nil {
		t.Fatalf("ingest exited cleanly after its slot was invalidated; want a non-zero exit")
	}
	out := ingest.Output()
	for _, want := range []string{"replication continuity broken (slot_invalidated)", "pg_drop_replication_slot", "nats kv del fanout_state ingest_published", "remove and add every shape again"} {
		if !strings.Contains(out, want) {
			t.Errorf("ingest's last words do not say %q:\n%s", want, tail(out, 2000))
		}
	}

	// Doing what the message says brings the pipeline back.
	s.exec(`SELECT pg_drop_replication_slot('fanout')`)
	_, js := s.busClient()
	kvDelete(t, js, fanout.StateBucket, fanout.KeyIngestPublished)
	s.exec(`ALTER SYSTEM RESET max_slot_wal_keep_size`)
	s.exec(`SELECT pg_reload_conf()`)
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	s.exec(`INSERT INTO items VALUES (100, 1, 'after recovery', NULL)`)
	s.drain()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// writeTestPKI writes a self-signed CA and a server certificate for
// 127.0.0.1 signed by it into dir, and returns the file names.
func writeTestPKI(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fanout test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", srvDER), write("server-key.pem", "EC PRIVATE KEY", keyDER)
}

// natsPassword is the password of the TLS test's NATS user; no output may show it.
const natsPassword = "pw-7f3a9c"

// startSecureNATS starts an embedded JetStream server that requires TLS
// with the given certificate and the user fanout with password natsPassword.
func startSecureNATS(t *testing.T, certFile, keyFile string) (host string, port int) {
	t.Helper()
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	opts := &server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
		TLSConfig: tc, TLS: true, TLSTimeout: 2,
		Username: "fanout", Password: natsPassword,
	}
	addr := runNATS(t, opts).Addr().(*net.TCPAddr)
	return "127.0.0.1", addr.Port
}

// runNATS starts an embedded NATS server, stopped when the test ends.
func runNATS(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(30 * time.Second) {
		t.Fatal("embedded NATS server not ready in 30s")
	}
	return srv
}

// withEnv returns env with key set to value (replaced if present).
func withEnv(env []string, key, value string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}

// TestNATSTLSAndAuth runs every service and fanoutctl against a NATS server
// that requires TLS (a CA made in the test) and a user and password: with
// nats.ca_file set they connect and the pipeline works; without the CA, or
// with a wrong password, each fails at once with an error that says what to
// fix.
func TestNATSTLSAndAuth(t *testing.T) {
	s := newStack(t)
	caFile, certFile, keyFile := writeTestPKI(t, t.TempDir())
	host, port := startSecureNATS(t, certFile, keyFile)
	goodURL := fmt.Sprintf("tls://fanout:%s@%s:%d", natsPassword, host, port)
	s.env = withEnv(withEnv(s.env, "FANOUT_NATS_URL", goodURL), "FANOUT_NATS_CA_FILE", caFile)

	// Without the CA: every service and fanoutctl refuse the server's certificate.
	noCA := withEnv(s.env, "FANOUT_NATS_CA_FILE", "")
	for _, bin := range []string{"ingest", "flushd", "consumer"} {
		p := testenv.StartProcess(t, bin+"-no-ca", bin, nil, append(noCA, "FANOUT_CONSUMER_ID=bad")...)
		if err := p.Wait(20 * time.Second); err == nil {
			t.Errorf("%s without nats.ca_file exited cleanly; want an error", bin)
		}
		out := p.Output()
		if !strings.Contains(out, "nats.ca_file") || !strings.Contains(out, "x509") {
			t.Errorf("%s without nats.ca_file: want an x509 error that names nats.ca_file, got:\n%s", bin, tail(out, 1500))
		}
		if strings.Contains(out, natsPassword) {
			t.Errorf("%s printed the NATS password:\n%s", bin, tail(out, 1500))
		}
	}
	_, errOut, err := testenv.Run(t, "fanoutctl", []string{"shape", "ls"}, noCA...)
	if err == nil || !strings.Contains(errOut, "nats.ca_file") {
		t.Errorf("fanoutctl without nats.ca_file: err %v, stderr %q; want an error naming nats.ca_file", err, errOut)
	}
	if strings.Contains(errOut, natsPassword) {
		t.Errorf("fanoutctl printed the NATS password: %q", errOut)
	}
	// A wrong password: refused, and said so.
	expectCredentialsRefused(t, "flushd-bad-password", withEnv(s.env, "FANOUT_NATS_URL", fmt.Sprintf("tls://fanout:wrong@%s:%d", host, port)))

	// With the CA and the password: the whole pipeline works.
	s.runSmallPipeline()
	for name, p := range s.procs {
		if strings.Contains(p.Output(), natsPassword) {
			t.Errorf("%s printed the NATS password", name)
		}
	}
}

// expectCredentialsRefused starts flushd with env and checks that it exits
// with an error saying NATS refused its credentials.
func expectCredentialsRefused(t *testing.T, name string, env []string) {
	t.Helper()
	p := testenv.StartProcess(t, name, "flushd", nil, env...)
	if err := p.Wait(20 * time.Second); err == nil || !strings.Contains(p.Output(), "refused the credentials") {
		t.Errorf("%s: exit %v, want an error saying the credentials were refused:\n%s", name, err, tail(p.Output(), 1500))
	}
}

// runSmallPipeline starts flushd, one consumer and ingest, commits 200
// inserts and an update under two shapes, and waits until both shape logs
// equal their queries.
func (s *stack) runSmallPipeline() {
	s.t.Helper()
	s.exec(itemsTable)
	defs := []shapeDef{s.addShape("public.items", "owner = 1"), s.addShape("public.items", "", "id", "title")}
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, NULL FROM generate_series(1, 200) g`)
	s.exec(`UPDATE items SET owner = 1 WHERE id % 5 = 0`)
	s.settle(defs)
}

// TestBadInputStreamFull bounds the FANOUT stream (bus.max_bytes) and runs
// with no consumer: ingest waits for room instead of failing or dropping
// (Postgres keeps the WAL meanwhile), and once a consumer drains the stream
// everything arrives.
func TestBadInputStreamFull(t *testing.T) {
	const maxBytes = 256 << 10
	s := newStack(t)
	s.env = withEnv(s.env, "FANOUT_BUS_MAX_BYTES", fmt.Sprint(maxBytes)) // every service ensures the same stream
	s.exec(itemsTable)
	defs := []shapeDef{s.addShape("public.items", "owner = 1"), s.addShape("public.items", "")}
	s.startFlushd()
	ingest := s.start("ingest", "ingest", "FANOUT_INGEST_MAX_FRAGMENT_BYTES=16384")
	s.waitSlot()
	_, js := s.busClient()

	// About 1.2 MB of changes (two shapes) for a 256 KB stream.
	for i := 0; i < 6; i++ {
		s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, repeat('y', 100) FROM generate_series($1::int * 1000 + 1, $1::int * 1000 + 1000) g`, i)
	}
	testenv.Eventually(t, 30*time.Second, "the stream to fill up", func() bool {
		return strings.Contains(ingest.Output(), "the FANOUT stream is full")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, fanout.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Bytes > maxBytes {
		t.Errorf("FANOUT holds %d bytes, over bus.max_bytes %d", info.State.Bytes, maxBytes)
	}
	if done, err := ingest.Exited(); done {
		t.Fatalf("ingest exited while the stream was full: %v", err)
	}

	s.startConsumer("c1")
	s.settle(defs)
}
