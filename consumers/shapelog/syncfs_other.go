//go:build !linux

package shapelog

import (
	"errors"
	"os"
)

// openFilesystem is nil off Linux: there every log is fsynced on its own.
func openFilesystem(string) *os.File { return nil }

var syncFS = func(*os.File) error { return errors.New("syncfs is only used on Linux") }
