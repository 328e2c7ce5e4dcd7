//! Child processes owned by a test.
//!
//! Every process is started as the leader of a new process group, so that killing the
//! group also reaches whatever it forked. Its pid is recorded in a [`Registry`] shared
//! with the [`crate::Topology`] that started it, so the topology can kill stragglers when
//! it is dropped before the handle (or when a test panics).

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Process groups started through one topology and not yet reaped.
#[derive(Clone, Debug, Default)]
pub(crate) struct Registry(Arc<Mutex<Vec<i32>>>);

impl Registry {
    pub(crate) fn add(&self, pgid: i32) {
        self.lock().push(pgid);
    }

    pub(crate) fn remove(&self, pgid: i32) {
        self.lock().retain(|&p| p != pgid);
    }

    /// SIGKILLs every group still registered (a panicking test may have poisoned the lock;
    /// the list is still valid then).
    pub(crate) fn kill_all(&self) {
        for pgid in self.lock().iter() {
            let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<i32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running child process whose stdout and stderr go to a log file. Dropping the handle
/// SIGKILLs its whole process group and reaps it.
#[derive(Debug)]
pub struct ProcHandle {
    name: String,
    child: Child,
    log: PathBuf,
    registry: Registry,
    status: Option<ExitStatus>,
}

impl ProcHandle {
    pub(crate) fn new(name: String, child: Child, log: PathBuf, registry: Registry) -> Self {
        registry.add(child.id() as i32);
        ProcHandle {
            name,
            child,
            log,
            registry,
            status: None,
        }
    }

    /// Short description (node and program) used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// File that receives the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whole log so far (lossy UTF-8; empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Sends `signal` to the process itself (not its group).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.pid() as i32), signal)
            .with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// Exit status if the process has exited (reaps it).
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
            if self.status.is_some() {
                self.registry.remove(self.pid() as i32);
            }
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal`, waits up to `grace` for an exit, then SIGKILLs the group.
    /// Returns the exit status and whether the process exited within the grace period.
    pub fn stop(&mut self, signal: Signal, grace: Duration) -> anyhow::Result<(ExitStatus, bool)> {
        self.signal(signal)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok((status, true));
        }
        Ok((self.kill()?, false))
    }

    /// SIGKILLs the whole process group and reaps the leader.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.status {
            // Already reaped: the pid may belong to someone else by now.
            return Ok(status);
        }
        let pgid = self.pid() as i32;
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let status = self.child.wait()?;
        self.status = Some(status);
        self.registry.remove(pgid);
        Ok(status)
    }

    /// Polls the log until it contains `needle`. Fails early (with the log tail) if the
    /// process exits, and on timeout.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                // One more look: the line may have been written just before exiting.
                if self.log().contains(needle) {
                    return Ok(());
                }
                anyhow::bail!(
                    "{} exited ({status}) before printing {needle:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(30)
                );
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{} did not print {needle:?} within {timeout:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ProcHandle {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
