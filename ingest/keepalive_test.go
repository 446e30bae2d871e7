package ingest

import (
	"testing"
	"time"
)

func TestStatusEveryStaysWellUnderWalSenderTimeout(t *testing.T) {
	for _, tc := range []struct {
		configured, timeout, want time.Duration
		clamped                   bool
	}{
		{10 * time.Second, time.Minute, 10 * time.Second, false},
		{10 * time.Second, 30 * time.Second, 10 * time.Second, false},
		{10 * time.Second, 10 * time.Second, 10 * time.Second / 3, true},
		{10 * time.Second, 3 * time.Second, time.Second, true},
		{10 * time.Second, 0, 10 * time.Second, false}, // wal_sender_timeout = 0: none
		{time.Second, 3 * time.Second, time.Second, false},
	} {
		got, clamped := statusEvery(tc.configured, tc.timeout)
		if got != tc.want || clamped != tc.clamped {
			t.Errorf("statusEvery(%s, %s) = %s %v, want %s %v", tc.configured, tc.timeout, got, clamped, tc.want, tc.clamped)
		}
	}
}
