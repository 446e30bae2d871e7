package main

import (
	"os"
	"os/signal"
	"syscall"
	"unsafe"
)

// takeTerminal makes devstack the foreground process group of its terminal,
// the way a shell does for a job, and returns what gives the terminal back.
// Ctrl-C then reaches devstack alone: it stops everything and exits 0, and
// make, which never saw the signal, exits 0 too (a make that gets SIGINT
// kills itself with it after its child ends, whatever the child did).
// Without a terminal, or when run in the background, it changes nothing.
func takeTerminal() (restore func()) {
	noop := func() {}
	fd := int(os.Stdin.Fd())
	var fg int32
	if ioctlPgrp(fd, syscall.TIOCGPGRP, &fg) != nil || int(fg) != syscall.Getpgrp() {
		return noop // no terminal, or another job is in the foreground
	}
	// A background group that sets the terminal's group gets SIGTTOU
	// unless it ignores it; devstack is one between Setpgid and the ioctl.
	signal.Ignore(syscall.SIGTTOU)
	defer signal.Reset(syscall.SIGTTOU)
	if syscall.Setpgid(0, 0) != nil {
		return noop // a session leader cannot move
	}
	me := int32(syscall.Getpid())
	if ioctlPgrp(fd, syscall.TIOCSPGRP, &me) != nil {
		syscall.Setpgid(0, int(fg))
		return noop
	}
	return func() {
		signal.Ignore(syscall.SIGTTOU)
		defer signal.Reset(syscall.SIGTTOU)
		ioctlPgrp(fd, syscall.TIOCSPGRP, &fg) // fails harmlessly when the terminal is gone
	}
}

func ioctlPgrp(fd int, req uintptr, pgrp *int32) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(pgrp))); errno != 0 {
		return errno
	}
	return nil
}
