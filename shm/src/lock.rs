//! One owner per instance: the lock each process of an instance holds for its whole life.
//!
//! Two processes started with the same `--instance` would share the table file, the BPF
//! pin directory and the run directory without noticing. So before it touches any of
//! them, `xdpmesh-control run` takes `control.lock` and `xdpmesh-dataplane run` takes
//! `dataplane.lock` in the instance's run directory (`/run/xdpmesh/<instance>/` by
//! default). One control and one dataplane run side by side, so they take different
//! locks; a second process of either role is refused with the holder's pid.
//!
//! The lock is `flock(LOCK_EX | LOCK_NB)` on an open file, so the kernel releases it when
//! the process dies, however it dies (`kill -9` included): a lock file left behind by a
//! dead process never blocks a restart. The file itself stays (removing it would let two
//! processes lock two different files of the same name); it holds the pid of its last
//! holder, written after locking. Only the lock tells whether that holder still runs.
//! `/run` is shared by network namespaces of one mount namespace (`ip netns`), so the
//! same instance name in two network namespaces is refused too.
//!
//! flock locks belong to an open file description: a second [`InstanceLock::acquire`] in
//! the same process conflicts with the first one as another process would. The file is
//! opened close-on-exec, so a child process never inherits (and prolongs) the lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Default run directory of an instance: `/run/xdpmesh/<instance>` (lock files,
/// `stats.json`, the identity directory).
pub fn default_run_dir(instance: &str) -> PathBuf {
    PathBuf::from(format!("/run/xdpmesh/{instance}"))
}

/// Which process of an instance a lock belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `xdpmesh-control run`: `control.lock`.
    Control,
    /// `xdpmesh-dataplane run`: `dataplane.lock`.
    Dataplane,
}

impl Role {
    /// The lock file's name in the run directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Role::Control => "control.lock",
            Role::Dataplane => "dataplane.lock",
        }
    }

    /// The program that takes this lock (as error messages name it).
    pub fn program(self) -> &'static str {
        match self {
            Role::Control => "xdpmesh-control",
            Role::Dataplane => "xdpmesh-dataplane",
        }
    }
}

/// Errors of [`InstanceLock::acquire`].
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A live process holds the lock.
    #[error(
        "instance {instance:?} is already run by {} (lock {}); stop it first or pick another --instance",
        holder(*role, *pid),
        path.display()
    )]
    Held {
        /// Instance name.
        instance: String,
        /// The role whose lock is held.
        role: Role,
        /// The holder's pid, as it wrote it into the lock file (`None` if it had not
        /// written it yet).
        pid: Option<u32>,
        /// The lock file.
        path: PathBuf,
    },
    /// The run directory or the lock file could not be created, opened or locked.
    #[error("{}: {source} (the instance run directory must be writable: run as root or pass a --run-dir you own)", path.display())]
    Io {
        /// Directory or file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn holder(role: Role, pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("{} pid {pid}", role.program()),
        None => format!("{} (pid not written yet)", role.program()),
    }
}

/// The lock of one role of one instance, held until dropped (or the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes `dir/<role>.lock` (creating `dir` and the file if missing) without waiting,
    /// and writes this process's pid into it. Fails with [`LockError::Held`], naming the
    /// holder's pid, if a live process holds it. Take it before touching any state the
    /// instance shares (table file, pins, run directory files), and keep it for the
    /// process's life.
    pub fn acquire(dir: &Path, instance: &str, role: Role) -> Result<InstanceLock, LockError> {
        std::fs::create_dir_all(dir).map_err(|source| LockError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(role.file_name());
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // No truncation before the lock is ours: the holder's pid must stay readable.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io)?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held {
                    instance: instance.to_owned(),
                    role,
                    pid: read_holder_pid(&mut file),
                    path,
                });
            }
            Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
        };
        file.set_len(0).map_err(io)?;
        file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
            .map_err(io)?;
        Ok(InstanceLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid in a held lock file. The holder truncates and then writes it right after
/// locking, so an empty file is retried for a little while.
fn read_holder_pid(file: &mut File) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        let mut text = String::new();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text));
        if let Ok(pid) = text.trim().parse() {
            return Some(pid);
        }
        if read.is_err() || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xdpmesh-lock-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_owner_is_refused_with_the_holders_pid_until_the_first_drops() {
        let dir = tmp_dir("twice").join("foo");
        let first = InstanceLock::acquire(&dir, "foo", Role::Control).unwrap();
        assert_eq!(first.path(), dir.join("control.lock"));
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(dir.join("control.lock")).unwrap(),
            format!("{pid}\n")
        );
        // A second open file description conflicts as another process would.
        let err = InstanceLock::acquire(&dir, "foo", Role::Control).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "instance \"foo\" is already run by xdpmesh-control pid {pid} (lock {}); stop it first or pick another --instance",
                dir.join("control.lock").display()
            )
        );
        assert!(
            matches!(err, LockError::Held { role: Role::Control, pid: Some(p), .. } if p == pid),
            "{err:?}"
        );
        // The refused attempt left the holder's pid in place.
        assert_eq!(
            std::fs::read_to_string(dir.join("control.lock")).unwrap(),
            format!("{pid}\n")
        );
        drop(first);
        let again = InstanceLock::acquire(&dir, "foo", Role::Control).unwrap();
        drop(again);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn control_and_dataplane_locks_are_independent() {
        let dir = tmp_dir("roles");
        let control = InstanceLock::acquire(&dir, "bar", Role::Control).unwrap();
        let dataplane = InstanceLock::acquire(&dir, "bar", Role::Dataplane).unwrap();
        assert_eq!(dataplane.path(), dir.join("dataplane.lock"));
        let err = InstanceLock::acquire(&dir, "bar", Role::Dataplane).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "instance \"bar\" is already run by xdpmesh-dataplane pid {} (lock {}); stop it first or pick another --instance",
                std::process::id(),
                dir.join("dataplane.lock").display()
            )
        );
        drop((control, dataplane));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stale_lock_file_of_a_dead_process_does_not_block() {
        let dir = tmp_dir("stale");
        std::fs::create_dir_all(&dir).unwrap();
        // A file left by a process that died (pid 2^22 + 1 is above pid_max's maximum,
        // so it cannot be alive), and longer than what we write over it.
        std::fs::write(dir.join("dataplane.lock"), "4194305\nleftover\n").unwrap();
        let lock = InstanceLock::acquire(&dir, "baz", Role::Dataplane).unwrap();
        assert_eq!(
            std::fs::read_to_string(lock.path()).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_run_dir_says_what_to_fix() {
        let dir = tmp_dir("unwritable");
        // A regular file where the run directory should be.
        std::fs::write(&dir, "").unwrap();
        let err = InstanceLock::acquire(&dir.join("qux"), "qux", Role::Control).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: Not a directory", dir.join("qux").display())),
            "{err}"
        );
        std::fs::remove_file(&dir).unwrap();
    }
}
