//! Workload tables shared between the control process (one writer) and the dataplane
//! workers (many readers) through one file in `/dev/shm`.
//!
//! # Protocol
//!
//! The file holds a header (magic, ABI version, the published generation, one
//! acknowledgement slot per worker) and two table areas. Generation `g` lives in area
//! `g % 2`.
//!
//! * The writer encodes generation `g + 1` into area `(g + 1) % 2`, which last held
//!   generation `g - 1`, but only once every live worker has acknowledged a generation
//!   `>= g` (so no worker can still be reading `g - 1`). It then publishes with a
//!   release store of `g + 1`.
//! * A worker checks the generation once per loop iteration (acquire load, one cache
//!   line). When it changed, it copies the area out, decodes and validates it
//!   ([`Tables::decode`]), rebuilds its private index and stores the generation in its
//!   slot (release).
//! * Slots of dead processes are reclaimed by pid, so a crashed dataplane never blocks
//!   the writer.
//!
//! Layout: see [`abi`]. `unsafe` lives in `map` only.
//!
//! [`lock`] holds the per-instance lock that both binaries take before they touch the
//! table file or any other state the instance shares.

pub mod abi;
pub mod lock;
mod map;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use tables::{
    Address, Cidr, Node, PeerAuth, Policy, PolicyAction, PolicySource, Protocol, Route, Service,
    Tables, UnknownSource, Workload,
};

pub use lock::{InstanceLock, LockError};

use map::Mapping;

/// Errors of the shared-memory tables.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// The file could not be created, opened or mapped.
    #[error("{path}: {source} (the table file lives in /dev/shm and must be root's)")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a table file of this ABI.
    #[error("{0}")]
    BadHeader(String),
    /// An area failed validation (a bug or a foreign writer).
    #[error("table area is corrupt: {0}")]
    Corrupt(String),
    /// The tables do not fit the area.
    #[error("tables need {needed} bytes but an area holds {area}: restart control with a larger --shm-area-size (a table file in use by a running dataplane keeps its size: stop the dataplane first)")]
    AreaFull {
        /// Encoded size.
        needed: usize,
        /// Area size.
        area: usize,
    },
    /// More than 2^32 records or string bytes.
    #[error("tables too large for the ABI's 32-bit counts")]
    TooLarge,
    /// A live worker did not move to the last generation in time.
    #[error("worker slot {slot} (pid {pid}) is still at generation {acked}, needed {needed}: is the dataplane stuck?")]
    WorkerStuck {
        /// Slot.
        slot: usize,
        /// Its process.
        pid: u32,
        /// What it acknowledged.
        acked: u64,
        /// What the writer waits for.
        needed: u64,
    },
    /// Every worker slot is taken by a live process.
    #[error("all {0} worker slots are in use")]
    NoFreeSlot(usize),
}

impl ShmError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        ShmError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Default path of an instance's table file.
pub fn default_path(instance: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/xdpmesh-{instance}"))
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

fn owner_pid(owner: u64) -> u32 {
    (owner >> 32) as u32
}

/// What [`ShmWriter::open_or_create`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// There was no usable table file (missing, foreign or of another ABI version): a
    /// new one was created.
    Created,
    /// A valid file of the requested area size: publishing continues in it.
    Reused,
    /// A valid file of another area size that no live worker used: recreated.
    Resized {
        /// Its old area size, in bytes.
        from: usize,
        /// The new (requested, rounded up to 4096) area size.
        to: usize,
    },
    /// A valid file of another area size that a running dataplane uses: kept at its own
    /// size; the requested size is ignored until the dataplane is stopped.
    KeptAreaSize {
        /// The requested area size (rounded up to 4096).
        requested: usize,
        /// The file's area size, in force.
        kept: usize,
        /// Live worker slots in the file.
        workers: usize,
    },
}

/// The single writer (the control process).
#[derive(Debug)]
pub struct ShmWriter {
    map: Mapping,
}

impl ShmWriter {
    /// Creates the table file (replacing an old one), with areas of at least `area_size` bytes.
    pub fn create(path: &Path, area_size: usize) -> Result<Self, ShmError> {
        Ok(ShmWriter {
            map: Mapping::create(path, area_size)?,
        })
    }

    /// Opens an existing file to continue publishing into it (a control restart keeps
    /// the workers' tables and the generation sequence), or creates it with areas of at
    /// least `area_size` bytes. Says which it did in the returned [`Opened`].
    ///
    /// An existing file whose areas have another size is never truncated under a
    /// running dataplane: its workers map it with the offsets of its own area size,
    /// and a file rewritten under them would make them read garbage or fault. So:
    ///
    /// - no usable file (missing, foreign, another ABI version): created
    ///   ([`Opened::Created`]);
    /// - a valid file of the requested area size: reused ([`Opened::Reused`]);
    /// - a valid file of another area size that no live worker uses: recreated at the
    ///   requested size ([`Opened::Resized`]);
    /// - a valid file of another area size that live workers use: reused at its own
    ///   area size, the requested one being ignored until the dataplane is stopped
    ///   ([`Opened::KeptAreaSize`]; the caller warns). Tables that do not fit that
    ///   size are refused by [`ShmWriter::publish`] ([`ShmError::AreaFull`]), and the
    ///   dataplane keeps the tables it has.
    ///
    /// The caller holds the instance's control lock ([`lock`]), so no other writer
    /// races with this.
    pub fn open_or_create(path: &Path, area_size: usize) -> Result<(Self, Opened), ShmError> {
        let requested = map::rounded_area_size(area_size);
        let map = match Mapping::open(path) {
            Ok(map) => map,
            Err(_) => return Ok((Self::create(path, area_size)?, Opened::Created)),
        };
        let existing = ShmWriter { map };
        let kept = existing.map.area_size();
        if kept == requested {
            return Ok((existing, Opened::Reused));
        }
        let workers = existing.workers().len();
        if workers > 0 {
            return Ok((
                existing,
                Opened::KeptAreaSize {
                    requested,
                    kept,
                    workers,
                },
            ));
        }
        drop(existing);
        Ok((
            Self::create(path, area_size)?,
            Opened::Resized {
                from: kept,
                to: requested,
            },
        ))
    }

    /// The size of each table area of the file, in bytes (the largest encoded tables
    /// [`ShmWriter::publish`] accepts).
    pub fn area_size(&self) -> usize {
        self.map.area_size()
    }

    /// The last published generation (0 = none).
    pub fn generation(&self) -> u64 {
        self.map.generation().load(Ordering::Acquire)
    }

    /// Publishes `tables` as the next generation and returns it. Waits up to `timeout`
    /// for live workers to leave the area being reused; on timeout nothing changes and
    /// the current tables stay in force.
    pub fn publish(&mut self, tables: &Tables, timeout: Duration) -> Result<u64, ShmError> {
        let current = self.generation();
        let next = current + 1;
        let bytes = tables.encode(next)?;
        if bytes.len() > self.map.area_size() {
            return Err(ShmError::AreaFull {
                needed: bytes.len(),
                area: self.map.area_size(),
            });
        }
        if current >= 1 {
            self.wait_acks(current, timeout)?;
        }
        self.map.write_area((next % 2) as usize, &bytes)?;
        self.map
            .writer_pid()
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        self.map.published_ms().store(unix_ms(), Ordering::Relaxed);
        self.map.heartbeat_ms().store(unix_ms(), Ordering::Relaxed);
        self.map.generation().store(next, Ordering::Release);
        Ok(next)
    }

    /// Tells readers this writer is alive (call it about once a second): they report
    /// how long ago it last did, and that the tables in force are getting old when it
    /// stops.
    pub fn heartbeat(&self) {
        self.map.heartbeat_ms().store(unix_ms(), Ordering::Relaxed);
    }

    fn wait_acks(&self, needed: u64, timeout: Duration) -> Result<(), ShmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut stuck = None;
            for i in 0..abi::MAX_WORKERS {
                let (owner, acked) = self.map.slot(i);
                let o = owner.load(Ordering::Acquire);
                if o == 0 || !pid_alive(owner_pid(o)) {
                    continue;
                }
                let a = acked.load(Ordering::Acquire);
                if a < needed {
                    stuck = Some(ShmError::WorkerStuck {
                        slot: i,
                        pid: owner_pid(o),
                        acked: a,
                        needed,
                    });
                    break;
                }
            }
            match stuck {
                None => return Ok(()),
                Some(e) if Instant::now() >= deadline => return Err(e),
                Some(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// The oldest table generation a live worker still has a connection of: every
    /// connection opened under an earlier generation has ended. `None` with no live
    /// worker; `Some(0)` while a worker has not said (before its first load).
    pub fn oldest_in_use(&self) -> Option<u64> {
        (0..abi::MAX_WORKERS)
            .filter_map(|i| {
                let o = self.map.slot(i).0.load(Ordering::Acquire);
                (o != 0 && pid_alive(owner_pid(o)))
                    .then(|| self.map.in_use(i).load(Ordering::Acquire))
            })
            .min()
    }

    /// Per-slot state: (pid, acked generation) of live workers.
    pub fn workers(&self) -> Vec<(u32, u64)> {
        (0..abi::MAX_WORKERS)
            .filter_map(|i| {
                let (owner, acked) = self.map.slot(i);
                let o = owner.load(Ordering::Acquire);
                (o != 0 && pid_alive(owner_pid(o)))
                    .then(|| (owner_pid(o), acked.load(Ordering::Acquire)))
            })
            .collect()
    }
}

/// The writer's side of the header, as a reader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterStatus {
    /// The generation published last (0: none yet).
    pub generation: u64,
    /// The pid of the process that published it.
    pub writer_pid: u32,
    /// When it was published (Unix milliseconds; 0: never).
    pub published_unix_ms: u64,
    /// The writer's last heartbeat (Unix milliseconds; 0: never).
    pub heartbeat_unix_ms: u64,
}

impl WriterStatus {
    /// Milliseconds from `earlier` (Unix ms) to now; `None` when it never happened.
    pub fn age_ms(earlier: u64) -> Option<u64> {
        (earlier != 0).then(|| unix_ms().saturating_sub(earlier))
    }
}

/// The wall clock in Unix milliseconds (shared by processes, unlike a monotonic clock).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A reader's view of the file, shared by the workers of one process.
#[derive(Debug, Clone)]
pub struct ShmReader {
    map: Arc<Mapping>,
}

impl ShmReader {
    /// Opens the table file written by the control process.
    pub fn open(path: &Path) -> Result<Self, ShmError> {
        Ok(ShmReader {
            map: Arc::new(Mapping::open(path)?),
        })
    }

    /// What the header says about the writer and its last publication.
    pub fn writer_status(&self) -> WriterStatus {
        WriterStatus {
            generation: self.map.generation().load(Ordering::Acquire),
            writer_pid: self.map.writer_pid().load(Ordering::Relaxed) as u32,
            published_unix_ms: self.map.published_ms().load(Ordering::Relaxed),
            heartbeat_unix_ms: self.map.heartbeat_ms().load(Ordering::Relaxed),
        }
    }

    /// Claims a worker slot. The slot is released when the returned handle drops (and
    /// reclaimed by the writer if the process dies).
    pub fn register(&self, worker: u32) -> Result<WorkerSlot, ShmError> {
        let owner_id = (u64::from(std::process::id()) << 32) | (u64::from(worker) + 1);
        for i in 0..abi::MAX_WORKERS {
            let (owner, acked) = self.map.slot(i);
            let o = owner.load(Ordering::Acquire);
            if o != 0 && pid_alive(owner_pid(o)) && o != owner_id {
                continue;
            }
            // Ack 0 until the first load: the writer then waits for this worker before
            // reusing any area, the conservative choice for a reader that may be copying.
            // In use 0 likewise: no drain ends on a worker's word before it has one.
            acked.store(0, Ordering::Release);
            self.map.in_use(i).store(0, Ordering::Release);
            if owner
                .compare_exchange(o, owner_id, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok(WorkerSlot {
                    map: self.map.clone(),
                    slot: i,
                    seen: 0,
                });
            }
        }
        Err(ShmError::NoFreeSlot(abi::MAX_WORKERS))
    }
}

/// One worker's handle: poll it once per loop iteration.
#[derive(Debug)]
pub struct WorkerSlot {
    map: Arc<Mapping>,
    slot: usize,
    seen: u64,
}

impl WorkerSlot {
    /// The published generation, if it differs from the last one this worker loaded.
    /// One acquire load: cheap enough for every loop iteration.
    #[inline]
    pub fn changed(&self) -> Option<u64> {
        let g = self.map.generation().load(Ordering::Acquire);
        (g != self.seen).then_some(g)
    }

    /// Loads the published tables. The caller rebuilds its index and then calls
    /// [`WorkerSlot::ack`] with the returned generation.
    pub fn load(&mut self) -> Result<Option<(u64, Tables)>, ShmError> {
        for _ in 0..16 {
            let g = self.map.generation().load(Ordering::Acquire);
            if g == 0 {
                return Ok(None);
            }
            let bytes = self.map.read_area((g % 2) as usize);
            let (area_gen, tables) = match Tables::decode(&bytes) {
                Ok(v) => v,
                // A writer that published twice while we copied would reuse our area;
                // the protocol forbids it while we hold an older ack, but check anyway.
                Err(_) if self.map.generation().load(Ordering::Acquire) != g => continue,
                Err(e) => return Err(e),
            };
            if area_gen != g {
                if self.map.generation().load(Ordering::Acquire) != g {
                    continue;
                }
                return Err(ShmError::Corrupt(format!(
                    "area holds generation {area_gen}, header says {g}"
                )));
            }
            return Ok(Some((g, tables)));
        }
        Err(ShmError::Corrupt(
            "generation kept changing while reading".into(),
        ))
    }

    /// Records that this worker now uses generation `g`.
    pub fn ack(&mut self, g: u64) {
        self.seen = g;
        self.map.slot(self.slot).1.store(g, Ordering::Release);
    }

    /// The generation this worker uses.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Records the oldest generation this worker still has a connection of (the one
    /// it uses when it has none): see [`ShmWriter::oldest_in_use`].
    pub fn set_in_use(&self, g: u64) {
        self.map.in_use(self.slot).store(g, Ordering::Release);
    }
}

impl Drop for WorkerSlot {
    fn drop(&mut self) {
        self.map.slot(self.slot).0.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("xdpmesh-shm-test-{}-{name}", std::process::id()))
    }

    fn tables(n: usize) -> Tables {
        Tables {
            trust_domain: format!("td{n}.local"),
            nodes: vec![Node {
                name: "node-a".into(),
                gateway: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn publish_then_load_and_ack() {
        let path = tmp("basic");
        let mut w = ShmWriter::create(&path, 64 * 1024).unwrap();
        let r = ShmReader::open(&path).unwrap();
        let mut slot = r.register(0).unwrap();
        assert_eq!(slot.changed(), None);
        assert!(slot.load().unwrap().is_none());
        assert_eq!(w.publish(&tables(1), Duration::from_secs(1)).unwrap(), 1);
        assert_eq!(slot.changed(), Some(1));
        let (g, t) = slot.load().unwrap().unwrap();
        assert_eq!((g, t), (1, tables(1)));
        slot.ack(1);
        assert_eq!(slot.changed(), None);
        // Generation 2 goes to area 0, which never held anything: no wait needed.
        assert_eq!(w.publish(&tables(2), Duration::from_secs(1)).unwrap(), 2);
        assert_eq!(w.workers(), vec![(std::process::id(), 1)]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn writer_status_tells_the_last_publication_and_heartbeat() {
        let path = tmp("status");
        let mut w = ShmWriter::create(&path, 64 * 1024).unwrap();
        let r = ShmReader::open(&path).unwrap();
        let s = r.writer_status();
        assert_eq!(
            (s.generation, s.published_unix_ms, s.heartbeat_unix_ms),
            (0, 0, 0)
        );
        assert_eq!(WriterStatus::age_ms(s.published_unix_ms), None);
        let before = unix_ms();
        w.publish(&tables(1), Duration::from_secs(1)).unwrap();
        let s = r.writer_status();
        assert_eq!((s.generation, s.writer_pid), (1, std::process::id()));
        assert!(s.published_unix_ms >= before && s.published_unix_ms <= unix_ms());
        assert_eq!(s.heartbeat_unix_ms, s.published_unix_ms);
        std::thread::sleep(Duration::from_millis(20));
        w.heartbeat();
        let t = r.writer_status();
        assert!(t.heartbeat_unix_ms >= s.heartbeat_unix_ms + 20);
        assert_eq!(t.published_unix_ms, s.published_unix_ms);
        assert!(WriterStatus::age_ms(t.published_unix_ms).unwrap() >= 20);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn writer_waits_for_a_live_worker_before_reusing_its_area() {
        let path = tmp("wait");
        let mut w = ShmWriter::create(&path, 4096).unwrap();
        let r = ShmReader::open(&path).unwrap();
        let mut slot = r.register(3).unwrap();
        w.publish(&tables(1), Duration::from_secs(1)).unwrap();
        let (g, _) = slot.load().unwrap().unwrap();
        slot.ack(g);
        w.publish(&tables(2), Duration::from_secs(1)).unwrap();
        // The worker still uses generation 1 (area 1); generation 3 would overwrite it.
        let err = w
            .publish(&tables(3), Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("worker slot 0 (pid {}) is still at generation 1, needed 2: is the dataplane stuck?", std::process::id())
        );
        // Nothing changed for readers.
        assert_eq!(slot.changed(), Some(2));
        assert_eq!(slot.load().unwrap().unwrap(), (2, tables(2)));
        slot.ack(2);
        assert_eq!(w.publish(&tables(3), Duration::from_millis(20)).unwrap(), 3);
        drop(slot);
        // Released slot: the writer no longer waits for it.
        assert_eq!(w.publish(&tables(4), Duration::from_millis(20)).unwrap(), 4);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn oldest_in_use_is_the_minimum_over_live_workers() {
        let path = tmp("inuse");
        let w = ShmWriter::create(&path, 4096).unwrap();
        let r = ShmReader::open(&path).unwrap();
        assert_eq!(w.oldest_in_use(), None, "no worker");
        let a = r.register(0).unwrap();
        let b = r.register(1).unwrap();
        assert_eq!(w.oldest_in_use(), Some(0), "not said yet");
        a.set_in_use(7);
        b.set_in_use(5);
        assert_eq!(w.oldest_in_use(), Some(5));
        b.set_in_use(9);
        assert_eq!(w.oldest_in_use(), Some(7));
        drop(a);
        assert_eq!(w.oldest_in_use(), Some(9), "a released slot does not count");
        // A slot claimed again starts unsaid.
        let c = r.register(2).unwrap();
        assert_eq!(w.oldest_in_use(), Some(0));
        drop((b, c));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn area_too_small_is_refused_and_tables_stay() {
        let path = tmp("full");
        let mut w = ShmWriter::create(&path, 4096).unwrap();
        w.publish(&tables(1), Duration::from_secs(1)).unwrap();
        let big = Tables {
            trust_domain: "x".repeat(5000),
            ..Default::default()
        };
        let err = w.publish(&big, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(
                err,
                ShmError::AreaFull {
                    needed: 5128,
                    area: 4096
                }
            ),
            "{err}"
        );
        assert_eq!(w.generation(), 1);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_restart_with_another_area_size_keeps_the_file_a_live_dataplane_maps() {
        let path = tmp("resize-live");
        let (mut w, opened) = ShmWriter::open_or_create(&path, 4096).unwrap();
        assert_eq!(opened, Opened::Created);
        w.publish(&tables(1), Duration::from_secs(1)).unwrap();
        let r = ShmReader::open(&path).unwrap();
        let mut slot = r.register(0).unwrap();
        let (g, _) = slot.load().unwrap().unwrap();
        slot.ack(g);
        drop(w);
        // Control restarts asking for bigger areas (not a multiple of 4096: rounded).
        let (mut w, opened) = ShmWriter::open_or_create(&path, 10_000).unwrap();
        assert_eq!(
            opened,
            Opened::KeptAreaSize {
                requested: 12_288,
                kept: 4096,
                workers: 1
            }
        );
        assert_eq!(w.area_size(), 4096);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (abi::HEADER_SIZE + 2 * 4096) as u64
        );
        // The worker is undisturbed: its slot counts, the generations continue, and it
        // loads the next tables through its old mapping.
        assert_eq!(w.workers(), vec![(std::process::id(), 1)]);
        assert_eq!(w.publish(&tables(2), Duration::from_secs(1)).unwrap(), 2);
        assert_eq!(slot.load().unwrap().unwrap(), (2, tables(2)));
        slot.ack(2);
        // Tables that only the requested size would hold are refused; the worker keeps
        // generation 2.
        let big = Tables {
            trust_domain: "x".repeat(5000),
            ..Default::default()
        };
        let err = w.publish(&big, Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tables need 5128 bytes but an area holds 4096: restart control with a larger --shm-area-size (a table file in use by a running dataplane keeps its size: stop the dataplane first)"
        );
        assert_eq!(slot.changed(), None);
        // Once the dataplane is gone, the next restart gets the requested size.
        drop(slot);
        drop(r);
        drop(w);
        let (mut w, opened) = ShmWriter::open_or_create(&path, 10_000).unwrap();
        assert_eq!(
            opened,
            Opened::Resized {
                from: 4096,
                to: 12_288
            }
        );
        assert_eq!(w.area_size(), 12_288);
        assert_eq!(w.publish(&big, Duration::from_secs(1)).unwrap(), 1);
        drop(w);
        // The same size again: reused, the generation sequence continues.
        let (w, opened) = ShmWriter::open_or_create(&path, 12_288).unwrap();
        assert_eq!(opened, Opened::Reused);
        assert_eq!(w.generation(), 1);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_foreign_or_missing_file_is_created() {
        let path = tmp("create-foreign");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let (w, opened) = ShmWriter::open_or_create(&path, 4096).unwrap();
        assert_eq!(
            (opened, w.generation(), w.area_size()),
            (Opened::Created, 0, 4096)
        );
        drop(w);
        std::fs::remove_file(&path).unwrap();
        let (_, opened) = ShmWriter::open_or_create(&path, 4096).unwrap();
        assert_eq!(opened, Opened::Created);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn foreign_files_are_refused_with_a_reason() {
        let path = tmp("foreign");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let err = ShmReader::open(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not an xdpmesh table file (bad magic)",
                path.display()
            )
        );
        std::fs::remove_file(&path).unwrap();
    }
}
