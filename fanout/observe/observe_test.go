package observe

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"sync"
	"testing"
	"time"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serve runs Serve on a free loopback port and returns its base URL.
func serve(t *testing.T, opts ...Option) string {
	t.Helper()
	out := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(out, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, "127.0.0.1:0", NewRegistry(), nil, log, opts...) }()
	t.Cleanup(func() { cancel(); <-done })
	addr := regexp.MustCompile(`addr=(\S+)`)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := addr.FindStringSubmatch(out.String()); m != nil {
			return "http://" + m[1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("Serve logged no address: %s", out.String())
	return ""
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
