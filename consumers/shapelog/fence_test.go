package shapelog

import (
	"context"
	"testing"
)

func TestHighestEpochCoversEveryPartitionDirectory(t *testing.T) {
	s, err := NewFileStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if top, err := s.HighestEpoch(); err != nil || top != 0 {
		t.Fatalf("empty store: HighestEpoch = %d, %v; want 0", top, err)
	}
	for p, epoch := range map[int]uint64{3: 7, 40: 91, 12: 30} { // 40: beyond a later count of 16
		w, err := s.Take(context.Background(), p, epoch)
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	if top, err := s.HighestEpoch(); err != nil || top != 91 {
		t.Fatalf("HighestEpoch = %d, %v; want 91", top, err)
	}
}
