//! The memory behind the legs' TCP ring buffers: page-aligned slots of anonymous
//! mappings, whose pages go back to the kernel while a leg is idle. With [`crate::xsk`]
//! the only room of this crate with `unsafe`.
//!
//! # Why
//!
//! A leg's smoltcp socket has two ring buffers of `--rx-buffer`/`--tx-buffer` bytes
//! (64 KiB by default), fixed for the socket's life: smoltcp takes them at creation and
//! derives its window scale from the receive buffer's size. From the heap, their pages
//! became resident as bytes crossed them and stayed so: an idle connection that ever
//! carried one byte held the first page of each of its four buffers, 16 KiB per gateway,
//! four times the memory target per idle connection. Here a buffer is a slot of a
//! mapping of its own size class; the kernel backs a page when it is first written (so a
//! busy leg gets its whole window on demand) and [`RingSocket::release`] gives the pages
//! of an empty buffer back (`MADV_DONTNEED`), after which the slot reads as zeroes and
//! costs nothing until it is written again.
//!
//! # Ownership
//!
//! Slots are carved out of chunks of [`CHUNK_BYTES`] that are mapped once and never
//! unmapped (address space is cheap; only touched pages cost memory, and freed slots'
//! pages are released). A slot is either on its size class's free list or lent to
//! exactly one [`RingSocket`], as the `&'static mut [u8]` smoltcp's ring buffer owns;
//! the socket is dropped before its slots go back to the free list (field order of
//! [`RingSocket`]). The free lists are process-wide behind a mutex, touched only when a
//! socket is created or dropped, never per packet.
//!
//! If a mapping fails (address space or `vm.max_map_count` exhausted), the socket's
//! buffers come from the heap as before, and cannot be released.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use tracing::warn;

/// Bytes mapped at a time for a size class (whole slots, at least one).
pub const CHUNK_BYTES: usize = 16 << 20;

const PAGE: usize = 4096;

/// Free slots by size class (slot bytes, a multiple of the page size), as addresses.
static FREE: Mutex<Option<HashMap<usize, Vec<usize>>>> = Mutex::new(None);

/// A mapping failed once (warned about once).
static MAP_FAILED: AtomicBool = AtomicBool::new(false);

/// One slot of a chunk, lent to a socket.
struct Slot {
    ptr: NonNull<u8>,
    /// Slot bytes (the buffer's length rounded up to whole pages).
    class: usize,
}

// SAFETY: a slot is plain memory owned by whoever holds the `Slot` (the free list or one
// socket); nothing in it is tied to the thread that mapped it.
unsafe impl Send for Slot {}

impl Slot {
    /// A slot for a buffer of `len` bytes, and the buffer (`len` bytes of it); `None` if
    /// no chunk could be mapped.
    fn take(len: usize) -> Option<(Slot, &'static mut [u8])> {
        let class = len.max(1).next_multiple_of(PAGE);
        let addr = {
            let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
            let list = free
                .get_or_insert_with(HashMap::new)
                .entry(class)
                .or_default();
            if list.is_empty() {
                map_chunk(class, list)?;
            }
            list.pop()?
        };
        let ptr = NonNull::new(addr as *mut u8)?;
        // SAFETY: `addr` is the start of a slot of `class >= len` bytes inside a chunk
        // that is mapped read-write for the rest of the process's life (chunks are never
        // unmapped). It was on the free list, so no other `Slot` or buffer refers to it:
        // this buffer is the only reference to those bytes until the `Slot` is dropped,
        // which `RingSocket` does only after dropping the socket that owns the buffer.
        let buf = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), len) };
        Some((Slot { ptr, class }, buf))
    }

    /// Gives the slot's pages back to the kernel: the next access of each page sees
    /// zeroes, on a fresh page when written.
    fn release(&self) {
        // SAFETY: the range is exactly this slot, inside a private anonymous mapping
        // that stays mapped. `MADV_DONTNEED` changes no mapping; it only makes the
        // slot's bytes read as zero from now on. Callers release a slot only while
        // its ring buffer holds no byte that will be read before being written again
        // (an empty ring, or the slot is on its way to the free list), and while no
        // reference into it is in use: the engine is single-threaded and is inside
        // neither smoltcp nor the socket's buffer when it calls this.
        let rc = unsafe {
            libc::madvise(
                self.ptr.as_ptr().cast::<libc::c_void>(),
                self.class,
                libc::MADV_DONTNEED,
            )
        };
        debug_assert_eq!(rc, 0, "madvise(MADV_DONTNEED) of a mapped slot");
    }

    /// Bytes of the slot resident now (`mincore`).
    fn resident(&self) -> usize {
        let pages = self.class / PAGE;
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is this slot, page-aligned and mapped; `vec` has one byte
        // per page of it, as mincore(2) writes.
        let rc = unsafe {
            libc::mincore(
                self.ptr.as_ptr().cast::<libc::c_void>(),
                self.class,
                vec.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return 0;
        }
        vec.iter().filter(|&&b| b & 1 == 1).count() * PAGE
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        free.get_or_insert_with(HashMap::new)
            .entry(self.class)
            .or_default()
            .push(self.ptr.as_ptr() as usize);
    }
}

/// Maps a chunk of slots of `class` bytes and puts them on `list`.
fn map_chunk(class: usize, list: &mut Vec<usize>) -> Option<()> {
    let slots = (CHUNK_BYTES / class).max(1);
    let len = slots * class;
    // SAFETY: a new private anonymous mapping at an address of the kernel's choosing:
    // it aliases nothing. MAP_NORESERVE: pages are committed as they are touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        if !MAP_FAILED.swap(true, Ordering::Relaxed) {
            warn!(
                bytes = len,
                error = %std::io::Error::last_os_error(),
                "socket buffer memory: mapping failed; new sockets' buffers come from the heap and are not released while idle"
            );
        }
        return None;
    }
    let base = p as usize;
    // Popped from the end: hand out the chunk's slots from its start.
    list.extend((0..slots).rev().map(|i| base + i * class));
    Some(())
}

/// A TCP socket (in a `SocketSet` of its own) whose ring buffers live in slots.
pub struct RingSocket {
    // Declared first, so dropped first: the socket owns the buffers the slots back.
    set: SocketSet<'static>,
    handle: SocketHandle,
    /// Receive and send buffers' slots (`None`: on the heap).
    slots: [Option<Slot>; 2],
}

impl RingSocket {
    /// A new closed socket with buffers of `rx` and `tx` bytes (zero until written).
    pub fn new(rx: usize, tx: usize) -> RingSocket {
        let buffer = |len: usize| match Slot::take(len) {
            Some((slot, buf)) => (Some(slot), tcp::SocketBuffer::new(buf)),
            None => (None, tcp::SocketBuffer::new(vec![0; len])),
        };
        let (rx_slot, rx_buf) = buffer(rx);
        let (tx_slot, tx_buf) = buffer(tx);
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(tcp::Socket::new(rx_buf, tx_buf));
        RingSocket {
            set,
            handle,
            slots: [rx_slot, tx_slot],
        }
    }

    /// The socket set (of this one socket) and the socket's handle, for smoltcp's
    /// interface.
    pub fn set_mut(&mut self) -> (&mut SocketSet<'static>, SocketHandle) {
        (&mut self.set, self.handle)
    }

    /// The socket.
    pub fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut::<tcp::Socket>(self.handle)
    }

    /// The socket, read-only.
    pub fn socket_ref(&self) -> &tcp::Socket<'static> {
        self.set.get::<tcp::Socket>(self.handle)
    }

    /// Gives back the pages of the receive buffer if `rx` and of the send buffer if
    /// empty. `rx` is the caller's word that the receive ring holds nothing, out of
    /// order data included (smoltcp keeps segments beyond a hole in the free part of
    /// the ring, which `recv_queue` does not count); the send buffer is checked here
    /// (`send_queue` counts unacknowledged bytes too). Returns the buffers released.
    pub fn release(&mut self, rx: bool) -> usize {
        let s = self.socket_ref();
        self.release_these([rx && s.recv_queue() == 0, s.send_queue() == 0])
    }

    /// Gives back the pages of both buffers if the connection is over (CLOSED or
    /// TIME-WAIT): nothing in them will be read again (smoltcp empties both when the
    /// socket is reused). Returns the buffers released.
    pub fn release_closed(&mut self) -> usize {
        let over = !self.socket_ref().is_open();
        self.release_these([over, over])
    }

    fn release_these(&self, which: [bool; 2]) -> usize {
        let mut n = 0;
        for (slot, yes) in self.slots.iter().zip(which) {
            if let (Some(slot), true) = (slot, yes) {
                slot.release();
                n += 1;
            }
        }
        n
    }

    /// Bytes of the two buffers resident now (tests, `mincore`; heap buffers count 0).
    pub fn resident(&self) -> usize {
        self.slots.iter().flatten().map(Slot::resident).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_page_aligned_backed_on_write_and_released_to_zeroes() {
        let (slot, buf) = Slot::take(10_000).unwrap();
        assert_eq!(slot.ptr.as_ptr() as usize % PAGE, 0);
        assert_eq!(
            (slot.class, buf.len()),
            (12_288, 10_000),
            "3 pages for 10,000 bytes"
        );
        assert_eq!(slot.resident(), 0, "nothing written yet");
        buf[0] = 1;
        buf[9_999] = 2;
        assert_eq!(slot.resident(), 2 * PAGE, "the first and the last page");
        slot.release();
        assert_eq!(slot.resident(), 0);
        buf[5000] = 3;
        assert_eq!(slot.resident(), PAGE, "the middle page, written again");
        // (A read maps the kernel's shared zero page, which mincore counts as resident
        // and RSS does not: reads come last.)
        assert_eq!(
            (buf[0], buf[9_999]),
            (0, 0),
            "released pages read as zeroes"
        );
        let addr = slot.ptr.as_ptr() as usize;
        drop(slot);
        // Back on the free list, released: the next slot of its class is the same one
        // (this test's class is used by no other test).
        let (again, buf) = Slot::take(10_000).unwrap();
        assert_eq!(again.ptr.as_ptr() as usize, addr);
        assert_eq!((again.resident(), buf[5000]), (0, 0));
    }

    #[test]
    fn a_ring_socket_has_its_sizes_and_nothing_resident() {
        let s = RingSocket::new(64 * 1024, 20_000);
        assert!(s.slots.iter().all(|x| x.is_some()), "mapped, not heap");
        assert_eq!(s.socket_ref().recv_capacity(), 64 * 1024);
        assert_eq!(s.socket_ref().send_capacity(), 20_000);
        assert_eq!(s.resident(), 0);
    }
}
