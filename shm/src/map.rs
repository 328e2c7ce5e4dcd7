//! The mapping itself: the only place with `unsafe` in this crate.
//!
//! The header's generation counter and worker slots are shared between processes and
//! accessed only as atomics at fixed, 8-byte-aligned offsets of a page-aligned mapping.
//! Table areas are plain bytes, written by the single writer only while no reader can be
//! using them (the generation protocol in `lib.rs` guarantees it) and copied out by
//! readers before decoding.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use memmap2::MmapMut;

use crate::abi::{self, header, HEADER_SIZE, MAX_WORKERS};
use crate::ShmError;

/// A mapped table file.
#[derive(Debug)]
pub(crate) struct Mapping {
    map: MmapMut,
    area_size: usize,
    _file: File,
}

/// The area size a file created for `area_size` gets: rounded up to whole pages.
pub(crate) fn rounded_area_size(area_size: usize) -> usize {
    area_size.next_multiple_of(4096)
}

impl Mapping {
    /// Creates (or truncates) the file with mode 0600 and maps it, initialising the header.
    pub(crate) fn create(path: &Path, area_size: usize) -> Result<Self, ShmError> {
        let area_size = rounded_area_size(area_size);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| ShmError::io(path, e))?;
        let len = HEADER_SIZE + 2 * area_size;
        file.set_len(len as u64)
            .map_err(|e| ShmError::io(path, e))?;
        // SAFETY: the file was just created (truncated) by us with mode 0600; other
        // processes only ever access it through `Mapping`, which respects the protocol.
        // A concurrent truncation by a foreign process could SIGBUS us, as with any
        // shared mapping; the file lives in root's /dev/shm.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| ShmError::io(path, e))?;
        map[..HEADER_SIZE].fill(0);
        map[header::MAGIC..header::MAGIC + 8].copy_from_slice(&abi::MAGIC.to_le_bytes());
        map[header::ABI_VERSION..header::ABI_VERSION + 4]
            .copy_from_slice(&abi::ABI_VERSION.to_le_bytes());
        map[header::MAX_WORKERS..header::MAX_WORKERS + 4]
            .copy_from_slice(&(MAX_WORKERS as u32).to_le_bytes());
        map[header::AREA_SIZE..header::AREA_SIZE + 8]
            .copy_from_slice(&(area_size as u64).to_le_bytes());
        map.flush().map_err(|e| ShmError::io(path, e))?;
        Ok(Mapping {
            map,
            area_size,
            _file: file,
        })
    }

    /// Maps an existing file and checks its header.
    pub(crate) fn open(path: &Path) -> Result<Self, ShmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ShmError::io(path, e))?;
        let len = file.metadata().map_err(|e| ShmError::io(path, e))?.len() as usize;
        if len < HEADER_SIZE {
            return Err(ShmError::BadHeader(format!(
                "{} is {len} bytes, shorter than a header",
                path.display()
            )));
        }
        // SAFETY: as in `create`; the file length was checked to cover the header and the
        // areas are bounds-checked against `len` below before any access.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| ShmError::io(path, e))?;
        let u64_at = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap_or_default());
        if u64_at(header::MAGIC) != abi::MAGIC {
            return Err(ShmError::BadHeader(format!(
                "{} is not an xdpmesh table file (bad magic)",
                path.display()
            )));
        }
        let version = u32_at(header::ABI_VERSION);
        if version != abi::ABI_VERSION {
            return Err(ShmError::BadHeader(format!(
                "{} has table ABI version {version}, this binary speaks {}: run control and dataplane of the same release",
                path.display(),
                abi::ABI_VERSION
            )));
        }
        if u32_at(header::MAX_WORKERS) as usize != MAX_WORKERS {
            return Err(ShmError::BadHeader(format!(
                "{}: worker slot count mismatch",
                path.display()
            )));
        }
        let area_size = u64_at(header::AREA_SIZE) as usize;
        if area_size == 0 || HEADER_SIZE.checked_add(area_size.saturating_mul(2)) != Some(len) {
            return Err(ShmError::BadHeader(format!(
                "{}: area size {area_size} does not match file size {len}",
                path.display()
            )));
        }
        Ok(Mapping {
            map,
            area_size,
            _file: file,
        })
    }

    pub(crate) fn area_size(&self) -> usize {
        self.area_size
    }

    fn atomic(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= HEADER_SIZE);
        let base = self.map.as_ptr();
        // SAFETY: `offset` is one of the fixed header offsets (all multiples of 8 inside
        // the header, checked above in debug builds and by the const assertion in `abi`);
        // the mapping is page-aligned, so the pointer is aligned for AtomicU64 and valid
        // for the lifetime of `self`. The header bytes at these offsets are only ever
        // accessed atomically after creation (creation finishes before the mapping is
        // shared), so there is no mixed atomic/non-atomic access.
        unsafe { &*base.add(offset).cast::<AtomicU64>() }
    }

    pub(crate) fn generation(&self) -> &AtomicU64 {
        self.atomic(header::GENERATION)
    }

    pub(crate) fn writer_pid(&self) -> &AtomicU64 {
        self.atomic(header::WRITER_PID)
    }

    pub(crate) fn published_ms(&self) -> &AtomicU64 {
        self.atomic(header::PUBLISHED_MS)
    }

    pub(crate) fn heartbeat_ms(&self) -> &AtomicU64 {
        self.atomic(header::HEARTBEAT_MS)
    }

    /// Slot `i`'s oldest generation in use ([`header::IN_USE`]).
    pub(crate) fn in_use(&self, i: usize) -> &AtomicU64 {
        assert!(i < MAX_WORKERS);
        self.atomic(header::IN_USE + i * 8)
    }

    /// Slot `i`: (owner, acked generation).
    pub(crate) fn slot(&self, i: usize) -> (&AtomicU64, &AtomicU64) {
        assert!(i < MAX_WORKERS);
        let o = header::SLOTS + i * header::SLOT_SIZE;
        (self.atomic(o), self.atomic(o + 8))
    }

    /// Writes one area. Only the writer calls this, and only for an area no reader uses.
    pub(crate) fn write_area(&mut self, area: usize, bytes: &[u8]) -> Result<(), ShmError> {
        if bytes.len() > self.area_size {
            return Err(ShmError::AreaFull {
                needed: bytes.len(),
                area: self.area_size,
            });
        }
        let start = abi::area_offset(area, self.area_size);
        self.map[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// Copies one area out of the mapping.
    pub(crate) fn read_area(&self, area: usize) -> Vec<u8> {
        let start = abi::area_offset(area, self.area_size);
        self.map[start..start + self.area_size].to_vec()
    }
}
