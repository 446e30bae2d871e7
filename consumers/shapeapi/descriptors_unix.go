//go:build unix

package shapeapi

import "syscall"

// descriptorLimit is the process's current limit on open files.
func descriptorLimit() (uint64, bool) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, false
	}
	return uint64(l.Cur), true
}
