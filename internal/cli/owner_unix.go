//go:build unix

package cli

import (
	"os"
	"syscall"
)

// keepOwner gives the new env file the old one's owner and group, so that
// an app running as another user can still read it after root rotated.
// It is best effort: only root may give files away.
func keepOwner(f *os.File, old os.FileInfo) {
	if st, ok := old.Sys().(*syscall.Stat_t); ok {
		_ = f.Chown(int(st.Uid), int(st.Gid))
	}
}
