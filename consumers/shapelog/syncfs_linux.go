//go:build linux

package shapelog

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// openFilesystem opens dir, to sync the file system that holds it with
// syncfs(2); nil when this kernel's syncfs cannot be trusted. Before Linux
// 5.8 syncfs did not report write-back errors, so a lost page would pass
// unnoticed; there every log is fsynced instead. Since 5.8 a descriptor
// sees each error of the file system that happened after it was opened
// (or that nobody had seen yet), which is why every writer opens its own.
func openFilesystem(dir string) *os.File {
	var u unix.Utsname
	if unix.Uname(&u) != nil || !kernelAtLeast(unix.ByteSliceToString(u.Release[:]), 5, 8) {
		return nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil // the writer fsyncs each log, which reports the problem
	}
	return f
}

// kernelAtLeast reports whether a release such as "6.1.0-13-amd64" is at
// least major.minor.
func kernelAtLeast(release string, major, minor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	// The minor number may run into a suffix: "5.8-rc1".
	minorDigits := parts[1]
	if end := strings.IndexFunc(minorDigits, func(r rune) bool { return r < '0' || r > '9' }); end >= 0 {
		minorDigits = minorDigits[:end]
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(minorDigits)
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// syncFS writes out everything of the file system that holds f: data and
// metadata of every file and directory on it. A variable so that tests can
// model a power loss (durability_test.go).
var syncFS = func(f *os.File) error { return unix.Syncfs(int(f.Fd())) }
