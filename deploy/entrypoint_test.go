package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runEntrypoint runs entrypoint.sh with /bin/sh, as the image does, with
// the service binary replaced by a script that prints its consumer id and
// arguments.
func runEntrypoint(t *testing.T, binary string, env ...string) string {
	t.Helper()
	script, err := os.ReadFile("entrypoint.sh")
	if err != nil {
		t.Fatal(err)
	}
	const imageBin = `"/usr/local/bin/${BINARY}"`
	if !strings.Contains(string(script), imageBin) {
		t.Fatalf("entrypoint.sh no longer execs %s; update this test", imageBin)
	}
	dir := t.TempDir()
	fake := "#!/bin/sh\necho \"id=${FANOUT_CONSUMER_ID-unset} args=$*\"\n"
	if err := os.WriteFile(filepath.Join(dir, binary), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	patched := strings.Replace(string(script), imageBin, `"`+dir+`/${BINARY}"`, 1)
	entry := filepath.Join(dir, "entrypoint.sh")
	if err := os.WriteFile(entry, []byte(patched), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", entry, "shape", "ls")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "BINARY=" + binary}, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("entrypoint for %s: %v\n%s", binary, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestEntrypointGivesEachConsumerReplicaItsHostname(t *testing.T) {
	host, err := exec.Command("hostname").Output()
	if err != nil {
		t.Skipf("no hostname command here: %v", err)
	}
	want := "id=" + strings.TrimSpace(string(host)) + " args=shape ls"
	if got := runEntrypoint(t, "consumer"); got != want {
		t.Errorf("consumer without FANOUT_CONSUMER_ID: got %q, want %q", got, want)
	}
}

func TestEntrypointKeepsAnExplicitConsumerID(t *testing.T) {
	if got := runEntrypoint(t, "consumer", "FANOUT_CONSUMER_ID=c-7"); got != "id=c-7 args=shape ls" {
		t.Errorf("got %q; an explicit FANOUT_CONSUMER_ID must win", got)
	}
}

func TestEntrypointLeavesOtherServicesAlone(t *testing.T) {
	if got := runEntrypoint(t, "fanoutctl"); got != "id=unset args=shape ls" {
		t.Errorf("got %q; only the consumer gets an id", got)
	}
}
