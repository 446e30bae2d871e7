package flushd

import (
	"sort"

	"github.com/fanout/pipeline/fanout"
)

// Assign returns the bindings to write so that every partition 0..n-1 is
// owned by a live consumer and the load is even (owners differ by at most
// one partition). A partition keeps its owner while that owner is live and
// not above its share, so bindings move only when they must. moved (if set)
// forces a partition off its current owner, for stalls.
//
// Every changed binding gets its own epoch above floor and above every epoch
// in current, including partitions at or beyond n (bindings left by a larger
// partition count). The epoch is the shape logs' fencing token, and a shape
// keeps its log when a partition-count change moves it to another partition:
// its new writer must be above every writer it ever had. floor is the
// highest epoch known from elsewhere (storage, deleted bindings). A binding
// written under another partition count (Binding.Partitions) is stale: its
// partition is bound again, so that after a count change every partition
// has an epoch above all the old ones, even where its owner stays.
func Assign(current map[int]fanout.Binding, live []string, n int, moved map[int]bool, floor uint64) []fanout.Binding {
	if len(live) == 0 {
		return nil // nobody to give partitions to; keep the bindings for when one returns
	}
	last := floor
	for _, b := range current {
		last = max(last, b.Epoch)
	}
	nextEpoch := func() uint64 { last++; return last }
	isLive := map[string]bool{}
	for _, c := range live {
		isLive[c] = true
	}
	owned := map[string][]int{}
	var orphans []int
	for p := 0; p < n; p++ {
		b, ok := current[p]
		if ok && isLive[b.Consumer] && b.Partitions == n && !(moved[p] && len(live) > 1) {
			owned[b.Consumer] = append(owned[b.Consumer], p)
		} else {
			orphans = append(orphans, p)
		}
	}
	// Shares: n/len(live) each, the first n%len(live) consumers one more.
	// Consumers that already own more come first, so fewer partitions move.
	order := append([]string(nil), live...)
	sort.SliceStable(order, func(i, j int) bool { return len(owned[order[i]]) > len(owned[order[j]]) })
	share := map[string]int{}
	for i, c := range order {
		share[c] = n / len(live)
		if i < n%len(live) {
			share[c]++
		}
	}
	for _, c := range order {
		ps := owned[c]
		if len(ps) > share[c] {
			sort.Ints(ps)
			orphans = append(orphans, ps[share[c]:]...)
			owned[c] = ps[:share[c]]
		}
	}
	sort.Ints(orphans)
	var changes []fanout.Binding
	for _, p := range orphans {
		// The consumer furthest below its share takes the partition.
		best := ""
		for _, c := range order {
			if len(owned[c]) >= share[c] {
				continue
			}
			if moved[p] && current[p].Consumer == c && len(live) > 1 {
				continue
			}
			if best == "" || share[c]-len(owned[c]) > share[best]-len(owned[best]) {
				best = c
			}
		}
		if best == "" {
			// Only a forced move finds every other consumer at its share.
			// It swaps: the receiver gives one of its own partitions to
			// the stalled owner, so that nobody is over its share and the
			// next round does not even out by moving p straight back.
			stalled := current[p].Consumer
			for _, c := range order {
				if c != stalled && (best == "" || len(owned[c]) < len(owned[best])) {
					best = c
				}
			}
			for i, q := range owned[best] {
				if current[q].Consumer == best && !moved[q] && isLive[stalled] {
					owned[best] = append(owned[best][:i:i], owned[best][i+1:]...)
					owned[stalled] = append(owned[stalled], q)
					changes = append(changes, fanout.Binding{Partition: q, Consumer: stalled, Epoch: nextEpoch(), Partitions: n})
					break
				}
			}
		}
		owned[best] = append(owned[best], p)
		if old, ok := current[p]; ok && old.Consumer == best && old.Partitions == n && !moved[p] {
			continue
		}
		changes = append(changes, fanout.Binding{Partition: p, Consumer: best, Epoch: nextEpoch(), Partitions: n})
	}
	return changes
}
