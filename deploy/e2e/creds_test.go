package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// TestNATSCredsFile runs the pipeline against a NATS server in operator
// (decentralized JWT) mode, as NGS or an nsc-managed deployment runs it:
// every service authenticates with nats.creds_file. A creds file of a user
// the server does not trust is refused at once with an error that says so.
func TestNATSCredsFile(t *testing.T) {
	s := newStack(t)
	dir := t.TempDir()
	op := newTestOperator(t)
	trusted := op.account(t, "FANOUT", true)
	untrusted := newTestOperator(t).account(t, "FANOUT", true) // signed by an operator the server does not know
	url := startOperatorNATS(t, op, trusted)
	s.env = withEnv(withEnv(s.env, "FANOUT_NATS_URL", url), "FANOUT_NATS_CREDS_FILE", trusted.userCreds(t, dir, "fanout"))

	expectCredentialsRefused(t, "flushd-untrusted-creds", withEnv(s.env, "FANOUT_NATS_CREDS_FILE", untrusted.userCreds(t, dir, "stranger")))
	s.runSmallPipeline()
}

// testOperator is an operator signing key, its claims and its system
// account (JetStream needs one in operator mode).
type testOperator struct {
	key    nkeys.KeyPair
	claims *jwt.OperatorClaims
	system *testAccount
}

func newTestOperator(t *testing.T) *testOperator {
	t.Helper()
	key, err := nkeys.CreateOperator()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := key.PublicKey()
	o := &testOperator{key: key, claims: jwt.NewOperatorClaims(pub)}
	o.claims.Name = "fanout-test"
	o.system = o.account(t, "SYS", false)
	o.claims.SystemAccount = o.system.pub
	// Self-signed, as nsc makes it; the server trusts it by value.
	if _, err := o.claims.Encode(key); err != nil {
		t.Fatal(err)
	}
	return o
}

// testAccount is an account signed by an operator, as a JWT.
type testAccount struct {
	key nkeys.KeyPair
	pub string
	jwt string
}

// account makes an account of the operator, with JetStream allowed if js.
func (o *testOperator) account(t *testing.T, name string, js bool) *testAccount {
	t.Helper()
	key, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := key.PublicKey()
	claims := jwt.NewAccountClaims(pub)
	claims.Name = name
	if js {
		claims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	}
	token, err := claims.Encode(o.key)
	if err != nil {
		t.Fatal(err)
	}
	return &testAccount{key: key, pub: pub, jwt: token}
}

// userCreds writes a creds file (user JWT and seed) for a new user of the
// account and returns its path.
func (a *testAccount) userCreds(t *testing.T, dir, name string) string {
	t.Helper()
	key, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := key.PublicKey()
	claims := jwt.NewUserClaims(pub)
	claims.Name = name
	token, err := claims.Encode(a.key)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := key.Seed()
	creds, err := jwt.FormatUserConfig(token, seed)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startOperatorNATS starts an embedded JetStream server that trusts op and
// knows the given accounts (a memory resolver), and returns its URL.
func startOperatorNATS(t *testing.T, op *testOperator, accounts ...*testAccount) string {
	t.Helper()
	resolver := &server.MemAccResolver{}
	for _, a := range append(accounts, op.system) {
		if err := resolver.Store(a.pub, a.jwt); err != nil {
			t.Fatal(err)
		}
	}
	opts := &server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
		TrustedOperators: []*jwt.OperatorClaims{op.claims},
		SystemAccount:    op.system.pub,
		AccountResolver:  resolver,
	}
	return fmt.Sprintf("nats://%s", runNATS(t, opts).Addr().(*net.TCPAddr).String())
}
