//! Watching the config file, so that a change takes effect without a `SIGHUP`.
//!
//! The watch is on the file's directory, not the file: editors and deployment tools
//! replace a file by writing a new one and renaming it over the old one (and a
//! Kubernetes ConfigMap volume swaps a `..data` symlink), which a watch on the old
//! inode would never report. Any event in the directory (a file closed after writing,
//! moved in, created or deleted) makes [`ConfigWatch::changed`] read the file again,
//! and it reports a change only when the bytes differ from the last ones it reported:
//! unrelated files in the directory, and a rewrite with the same text, change
//! nothing. A file being written in place is read once its writer closes it
//! (`IN_CLOSE_WRITE`), never half-written through `IN_MODIFY`.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// The watch on one config file.
pub struct ConfigWatch {
    inotify: Inotify,
    path: PathBuf,
    /// The bytes last reported (or seen at start); `None` while the file is missing.
    last: Option<Vec<u8>>,
}

impl ConfigWatch {
    /// Watches `path` (its directory must exist). The file's current bytes are the
    /// baseline: only later changes are reported.
    pub fn new(path: &Path) -> std::io::Result<ConfigWatch> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            &dir,
            AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE,
        )?;
        Ok(ConfigWatch {
            inotify,
            path: path.to_path_buf(),
            last: std::fs::read(path).ok(),
        })
    }

    /// Whether the file's bytes changed since the last call that said so (drains the
    /// pending events; never blocks). A missing file is no change: the tables in force
    /// stay until a file appears again.
    pub fn changed(&mut self) -> bool {
        let mut any = false;
        loop {
            match self.inotify.read_events() {
                Ok(events) if !events.is_empty() => any = true,
                Ok(_) | Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        if !any {
            return false;
        }
        let Ok(now) = std::fs::read(&self.path) else {
            return false;
        };
        if self.last.as_deref() == Some(now.as_slice()) {
            return false;
        }
        self.last = Some(now);
        true
    }

    /// Takes the file's current bytes as seen (after a reload for another reason,
    /// `SIGHUP`), so the same text is not reported again.
    pub fn mark_seen(&mut self) {
        self.last = std::fs::read(&self.path).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_and_in_place_writes_are_changes_and_same_bytes_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let mut w = ConfigWatch::new(&path).unwrap();
        assert!(!w.changed(), "nothing happened yet");
        // In place.
        std::fs::write(&path, "a: 2\n").unwrap();
        assert!(w.changed());
        assert!(!w.changed(), "reported once");
        // The same bytes again, and an unrelated file: no change.
        std::fs::write(&path, "a: 2\n").unwrap();
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        assert!(!w.changed());
        // Replaced by rename, as editors do.
        let tmp = dir.path().join(".mesh.yaml.swp");
        std::fs::write(&tmp, "a: 3\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(w.changed());
        // Deleted: no change (the tables stay); written again: a change.
        std::fs::remove_file(&path).unwrap();
        assert!(!w.changed());
        std::fs::write(&path, "a: 4\n").unwrap();
        assert!(w.changed());
        // A reload for another reason (SIGHUP) marks the bytes as seen.
        std::fs::write(&path, "a: 5\n").unwrap();
        w.mark_seen();
        assert!(!w.changed());
    }
}
