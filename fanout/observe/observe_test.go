package observe

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout/testenv"
)

// serve runs Serve on a free loopback port and returns its base URL once
// it answers.
func serve(t *testing.T, opts ...Option) string {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, addr, NewRegistry(), nil, slog.New(slog.NewTextHandler(io.Discard, nil)), opts...)
	}()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 10*time.Second, "the metrics server to answer", func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return "http://" + addr
}

func status(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// Profiles are off unless asked for, and the command line (which may hold
// a secret passed as a flag) is never served.
func TestProfilesOffByDefaultAndNeverTheCommandLine(t *testing.T) {
	base := serve(t)
	if code := status(t, base+"/metrics"); code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, p := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap"} {
		if code := status(t, base+p); code != http.StatusNotFound {
			t.Errorf("%s without http.pprof: %d, want 404", p, code)
		}
	}
	base = serve(t, Pprof(true))
	if code := status(t, base+"/debug/pprof/heap"); code != http.StatusOK {
		t.Errorf("/debug/pprof/heap with http.pprof: %d, want 200", code)
	}
	if code := status(t, base+"/debug/pprof/cmdline"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/cmdline with http.pprof: %d, want 404", code)
	}
}
