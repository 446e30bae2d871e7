package shapelog

// Descriptors kept for everything but shape logs: partition journals and
// lock files, NATS and Postgres connections, HTTP, snapshot files.
const reservedDescriptors = 1024

// maxAutoOpenLogs caps the automatic bound: each open file costs the kernel
// some memory, and a partition with more active shapes than this is better
// split into more partitions.
const maxAutoOpenLogs = 16384

// OpenLogsPerWriter is how many shape logs each partition writer can keep
// open when one process holds all of the deployment's partitions (as the
// last live consumer does), within the process's descriptor limit
// (RLIMIT_NOFILE, which Go raises to the hard limit at start). With the
// limit of a default container (2^19-2^20) and 64 partitions that is over
// 8,000 per writer, enough for every shape of a partition at 300K shapes,
// so logs are never reopened; with a low limit it is the limit's share.
func OpenLogsPerWriter(partitions int) int {
	limit, ok := descriptorLimit()
	if !ok {
		return defaultMaxOpenLogs
	}
	return openLogsWithin(limit, partitions)
}

func openLogsWithin(limit uint64, partitions int) int {
	limit = min(limit, 1<<30) // RLIM_INFINITY and the like
	n := (int64(limit) - reservedDescriptors) / int64(max(partitions, 1))
	return int(min(max(n, MinOpenLogs), maxAutoOpenLogs))
}
