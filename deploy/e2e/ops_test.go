package e2e

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout/testenv"
)

var servingAddr = regexp.MustCompile(`serving /metrics.* addr=(\S+)`)

// httpAddr reads the address a service logged it serves on (http.addr is
// 127.0.0.1:0 in tests: a free port).
func httpAddr(t *testing.T, p *testenv.Process) string {
	t.Helper()
	var addr string
	testenv.Eventually(t, 30*time.Second, p.Name+" to log its HTTP address", func() bool {
		m := servingAddr.FindStringSubmatch(p.Output())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	return addr
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEveryServiceServesMetricsHealthAndReadiness(t *testing.T) {
	s := newStack(t)
	s.exec(itemsTable)
	s.addShape("public.items", "owner = 1")
	services := map[*testenv.Process][]string{
		s.startFlushd():       {"fanout_flushd_safe_lsn", "fanout_flushd_consumers_live", "fanout_flushd_rebinds_total", "fanout_flushd_pending_fragments"},
		s.startConsumer("c1"): {"fanout_consumer_fragments_persisted_total", "fanout_consumer_dead_lettered_total", "fanout_consumer_owned_partitions"},
		s.startIngest():       {"fanout_ingest_fragments_published_total", "fanout_ingest_inflight_publishes", "fanout_ingest_confirmed_lsn"},
	}
	s.waitSlot()
	s.exec(`INSERT INTO items VALUES (1, 1, 'x', NULL)`)
	s.drain()
	for p, metrics := range services {
		base := "http://" + httpAddr(t, p)
		if code, body := get(base + "/healthz"); code != http.StatusOK {
			t.Errorf("%s /healthz: %d %s", p.Name, code, body)
		}
		testenv.Eventually(t, 30*time.Second, p.Name+" /readyz to answer 200", func() bool {
			code, _ := get(base + "/readyz")
			return code == http.StatusOK
		})
		_, body := get(base + "/metrics")
		for _, m := range metrics {
			if !strings.Contains(body, "\n"+m) {
				t.Errorf("%s /metrics lacks %s", p.Name, m)
			}
		}
	}
}
