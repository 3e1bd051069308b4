package agent

import (
	"os"
	"testing"
)

// SetDataDirHooks makes the agent write the files of its data dir with write
// and sync the directory after a removal with sync, until t ends. No agent
// may be running when it is called or when t ends.
func SetDataDirHooks(t *testing.T, write func(path string, data []byte, perm os.FileMode) error, sync func(dir string) error) {
	t.Helper()
	oldWrite, oldSync := writeFile, syncDir
	writeFile, syncDir = write, sync
	t.Cleanup(func() { writeFile, syncDir = oldWrite, oldSync })
}

// SyncDir is the directory sync the agent uses when no test hooks it.
var SyncDir = syncDirectory
