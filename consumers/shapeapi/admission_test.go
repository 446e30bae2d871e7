package shapeapi

import (
	"strings"
	"testing"
	"time"
)

func TestGateAdmitsUpToItsLimitAndRefusesWithElectricsBody(t *testing.T) {
	g := newGate("live requests", "api.max_live_requests", 2, 3*time.Second)
	r1, no := g.enter()
	r2, no2 := g.enter()
	if no != nil || no2 != nil {
		t.Fatalf("refused under the limit: %v %v", no, no2)
	}
	_, refused := g.enter()
	if refused == nil {
		t.Fatal("a third request was admitted with a limit of 2")
	}
	body := string(refused.body())
	if !strings.Contains(body, `"code":"concurrent_request_limit_exceeded"`) || !strings.Contains(body, "live requests") {
		t.Errorf("503 body %s", body)
	}
	if !strings.Contains(refused.Error(), "api.max_live_requests") {
		t.Errorf("the log line does not name the key: %v", refused)
	}
	if got := retryAfterSeconds(refused.retryAfter); got != "3" {
		t.Errorf("retry-after %s, want 3", got)
	}
	r1()
	r1() // a second release is a no-op
	if g.inFlight() != 1 {
		t.Fatalf("in flight %d after one release (twice), want 1", g.inFlight())
	}
	r3, no := g.enter()
	if no != nil {
		t.Fatalf("refused after a release: %v", no)
	}
	r2()
	r3()
	if g.inFlight() != 0 {
		t.Fatalf("in flight %d after every release", g.inFlight())
	}
}

func TestRequestKinds(t *testing.T) {
	a := newAdmission(1, 1, 1, time.Second)
	for _, tc := range []struct {
		req  Request
		want *gate
	}{
		{Request{Live: true}, a.live},
		{Request{Live: true, SSE: true}, a.live},
		{Request{Subset: &Subset{}}, a.subsets},
		{Request{}, nil},
	} {
		if got := a.requestKind(&tc.req); got != tc.want {
			t.Errorf("%+v: gate %v, want %v", tc.req, got, tc.want)
		}
	}
	if got := retryAfterSeconds(1500 * time.Millisecond); got != "2" {
		t.Errorf("retry-after of 1.5s is %s, want 2 (rounded up)", got)
	}
}
