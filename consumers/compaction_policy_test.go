package consumers

import (
	"testing"
	"time"
)

func TestCompactionPolicy(t *testing.T) {
	p := compactionPolicy{ratio: 1, minLogBytes: 64 << 10, minInterval: time.Minute}
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name string
		s    shapeSize
		want verdict
	}{
		{"a small log is never compacted", shapeSize{logBytes: 60 << 10}, verdict{logAt: 64 << 10}},
		{"a log at min_log_bytes over a small base is", shapeSize{logBytes: 64 << 10, baseBytes: 1 << 10}, verdict{compact: true}},
		{"a log under ratio x its base is not", shapeSize{logBytes: 1 << 20, baseBytes: 2 << 20}, verdict{logAt: 2 << 20}},
		{"a log at ratio x its base is", shapeSize{logBytes: 2 << 20, baseBytes: 2 << 20}, verdict{compact: true}},
		{"not sooner than min_interval after the last", shapeSize{logBytes: 1 << 20, last: now.Add(-30 * time.Second)},
			verdict{notBefore: now.Add(30 * time.Second)}},
		{"after min_interval", shapeSize{logBytes: 1 << 20, last: now.Add(-time.Minute)}, verdict{compact: true}},
		{"after two failures: backoff of 2 minutes", shapeSize{logBytes: 1 << 20, last: now.Add(-90 * time.Second), failures: 2},
			verdict{notBefore: now.Add(30 * time.Second)}},
	} {
		if got := p.decide(c.s, now); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	p.ratio = 2.5
	if got := p.decide(shapeSize{logBytes: 2 << 20, baseBytes: 1 << 20}, now); got.compact || got.logAt != 5<<19 {
		t.Errorf("ratio 2.5: %+v, want to wait for 2.5 MiB", got)
	}
	for n, want := range map[int]time.Duration{1: time.Minute, 2: 2 * time.Minute, 7: time.Hour, 50: time.Hour} {
		if got := failureBackoff(n, time.Minute); got != want {
			t.Errorf("failureBackoff(%d) = %s, want %s", n, got, want)
		}
	}
	if got := failureBackoff(1, 0); got != 10*time.Second {
		t.Errorf("failureBackoff without min_interval = %s, want 10s", got)
	}
}
