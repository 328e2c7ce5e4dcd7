//! Where the engine writes frames: the [`FrameSink`] trait.
//!
//! In production every port's sink is the TX half of its AF_XDP socket
//! ([`crate::xsk::TxPart`]); in tests it is a [`MemSink`], so engines can be wired to
//! each other and to scripted peers in-process, without root, and every frame they send
//! can be read back byte for byte. The engine is generic over the sink (monomorphised:
//! the packet path pays no dynamic dispatch for the seam).

use std::collections::VecDeque;

/// A transmit queue of whole Ethernet frames.
pub trait FrameSink {
    /// Whether a frame can be taken now. May reclaim completed frames (and submit what
    /// is pending to make room), as the AF_XDP TX half does.
    fn has_free(&mut self) -> bool;

    /// Takes a free frame, lets `f` write exactly `len` bytes into it and queues it for
    /// transmission at the next [`FrameSink::flush`]. `None` when no frame is free or
    /// `len` does not fit a frame.
    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R>;

    /// Submits queued frames. Returns how many went out.
    fn flush(&mut self) -> usize;

    /// Frames queued but not yet submitted.
    fn pending(&self) -> usize;

    /// The longest frame [`FrameSink::send`] takes.
    fn max_frame(&self) -> usize;
}

impl FrameSink for crate::xsk::TxPart {
    fn has_free(&mut self) -> bool {
        crate::xsk::TxPart::has_free(self)
    }

    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        crate::xsk::TxPart::send(self, len, f)
    }

    fn flush(&mut self) -> usize {
        crate::xsk::TxPart::flush(self)
    }

    fn pending(&self) -> usize {
        crate::xsk::TxPart::pending(self)
    }

    fn max_frame(&self) -> usize {
        crate::xsk::TxPart::max_frame(self)
    }
}

/// An in-memory sink: frames are queued by `send`, become visible to the reader at
/// `flush` (like a TX ring's submission), and are taken with [`MemSink::take`].
///
/// `ring` bounds the frames queued or submitted-but-not-taken, like the frames of a
/// UMEM's TX half, so tests can drive the engine into a full TX ring.
#[derive(Debug)]
pub struct MemSink {
    queued: Vec<Vec<u8>>,
    sent: VecDeque<Vec<u8>>,
    ring: usize,
    frame_capacity: usize,
    /// Frames submitted since creation.
    pub submitted: u64,
}

impl MemSink {
    /// A sink of `ring` frames of at most `frame_capacity` bytes each.
    pub fn new(ring: usize, frame_capacity: usize) -> MemSink {
        MemSink {
            queued: Vec::new(),
            sent: VecDeque::new(),
            ring,
            frame_capacity,
            submitted: 0,
        }
    }

    /// Takes every submitted frame, oldest first (the receiver's side of the wire).
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        self.sent.drain(..).collect()
    }

    /// Submitted frames not yet taken.
    pub fn in_flight(&self) -> usize {
        self.sent.len()
    }
}

impl Default for MemSink {
    /// 2048 frames of 1792 bytes: the dataplane's default UMEM TX half (2048-byte
    /// frames less the kernel's headroom).
    fn default() -> Self {
        MemSink::new(2048, 1792)
    }
}

impl FrameSink for MemSink {
    fn has_free(&mut self) -> bool {
        self.queued.len() + self.sent.len() < self.ring
    }

    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if len > self.frame_capacity || !self.has_free() {
            return None;
        }
        // Poisoned, so bytes the writer leaves unwritten show in a test's assertions.
        let mut frame = vec![0xa5; len];
        let r = f(&mut frame);
        self.queued.push(frame);
        Some(r)
    }

    fn flush(&mut self) -> usize {
        let n = self.queued.len();
        self.submitted += n as u64;
        self.sent.extend(self.queued.drain(..));
        n
    }

    fn pending(&self) -> usize {
        self.queued.len()
    }

    fn max_frame(&self) -> usize {
        self.frame_capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_appear_at_flush_and_the_ring_bounds_them() {
        let mut s = MemSink::new(2, 16);
        assert_eq!(s.send(17, |_| ()), None, "larger than a frame");
        assert_eq!(s.send(3, |b| b.copy_from_slice(b"abc")), Some(()));
        assert_eq!(s.pending(), 1);
        assert!(s.take().is_empty(), "nothing is visible before flush");
        assert_eq!(s.send(2, |b| b[0] = 1), Some(()));
        assert!(!s.has_free());
        assert_eq!(s.send(1, |_| ()), None, "ring full");
        assert_eq!(s.flush(), 2);
        assert_eq!(s.take(), vec![b"abc".to_vec(), vec![1, 0xa5]]);
        assert!(s.has_free());
        assert_eq!(s.submitted, 2);
    }
}
