package fanout

import "hash/fnv"

// DefaultPartitions is the partition count of a deployment unless configured.
// It is fixed for the life of a deployment: changing it moves shapes between
// partitions.
const DefaultPartitions = 64

// Partition maps a shape handle onto one of n partitions with a stable hash
// (FNV-1a), so every service and every restart agrees without coordination.
func Partition(handle string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(handle))
	return int(h.Sum32() % uint32(n))
}
