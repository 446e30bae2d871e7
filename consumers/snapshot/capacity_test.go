package snapshot

import (
	"testing"
	"time"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/fanout/testenv"
)

func TestConcurrencyFor(t *testing.T) {
	for _, c := range []struct{ configured, max, reserved, inUse, want int }{
		{2, 100, 3, 10, 2},  // plenty free: as configured
		{8, 100, 3, 57, 8},  // 40 free: a quarter is 10
		{8, 100, 3, 77, 5},  // 20 free: a quarter
		{4, 20, 3, 14, 1},   // 3 free: one, never none
		{4, 20, 3, 30, 1},   // over the limit already: one
		{16, 200, 3, 1, 16}, // as configured
	} {
		if got := concurrencyFor(c.configured, c.max, c.reserved, c.inUse); got != c.want {
			t.Errorf("concurrencyFor(%d, max %d, reserved %d, in use %d) = %d, want %d", c.configured, c.max, c.reserved, c.inUse, got, c.want)
		}
	}
}

// With few connections free, a runner takes fewer snapshot groups at once
// than configured, read from the live server.
func TestRunnerSizesConcurrencyFromFreeConnections(t *testing.T) {
	e := startRunner(t, func(c *configs.Snapshot) { c.Concurrency, c.PoolSize = 4, 4 }, testenv.WithSetting("max_connections", "12"))
	testenv.Eventually(t, 30*time.Second, "the runner to size its concurrency", func() bool {
		return e.metric("fanout_snapshot_concurrency") == 1
	})
}
