//! Freed legs' smoltcp sockets, kept for the worker's next legs.
//!
//! A new leg's socket needs two buffers of `--rx-buffer`/`--tx-buffer` bytes. Allocated
//! fresh they are zeroed (`vec![0; n]`), and that memset was 83% of the engine's own
//! instructions on the connection path (callgrind over `xdpmesh-engine-bench --scenario
//! connrate`): a plain connection has four 64 KiB buffers per gateway. A socket whose
//! connection is over is reset by smoltcp itself when it is used again (`listen` and
//! `connect` call its `reset`, which empties both buffers without touching their bytes
//! and clears every piece of connection state: sequence numbers, windows, timers, the
//! RTT estimate, the reassembly state); what `reset` keeps is configuration, which
//! [`SocketPool::take`] sets again. Old bytes left in a reused buffer are never read:
//! smoltcp sends and delivers only what was enqueued since the reset.
//!
//! The pool is bounded in bytes ([`POOL_BYTES`]), so a burst of connections does not
//! leave its buffers resident after it ends: beyond the bound, freed sockets are dropped
//! and their memory goes back to the allocator as before.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Duration;

use crate::stack::Buffers;

/// Buffer bytes the pool keeps at most per worker (32 plain legs' sockets at the
/// default 64 KiB buffers, 8 at 256 KiB).
pub const POOL_BYTES: usize = 4 << 20;

/// smoltcp's default delayed-ACK time (`ACK_DELAY_DEFAULT`), which a leg turns off
/// when it sends its FIN.
const ACK_DELAY: Duration = Duration::from_millis(10);

/// A socket in a set of its own (see [`crate::stack`]: one socket per set keeps
/// smoltcp from scanning).
pub type OwnSet = (SocketSet<'static>, SocketHandle);

/// The pool.
#[derive(Default)]
pub struct SocketPool {
    free: Vec<OwnSet>,
    /// Sockets handed out again instead of being allocated.
    pub reused: u64,
}

impl SocketPool {
    /// A socket with buffers of `buffers`' sizes, configured as a new leg's: from the
    /// pool when one of those sizes is there, else freshly allocated.
    pub fn take(&mut self, buffers: Buffers) -> OwnSet {
        while let Some((mut set, handle)) = self.free.pop() {
            let s = set.get_mut::<tcp::Socket>(handle);
            if s.recv_capacity() == buffers.rx && s.send_capacity() == buffers.tx {
                configure(s);
                self.reused += 1;
                return (set, handle);
            }
        }
        let rx = tcp::SocketBuffer::new(vec![0; buffers.rx]);
        let tx = tcp::SocketBuffer::new(vec![0; buffers.tx]);
        let mut s = tcp::Socket::new(rx, tx);
        configure(&mut s);
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(s);
        (set, handle)
    }

    /// Keeps a freed leg's socket, if its connection is over (CLOSED or TIME-WAIT: a
    /// socket still open is dropped) and the pool has room.
    pub fn put(&mut self, (set, handle): OwnSet) {
        let s = set.get::<tcp::Socket>(handle);
        let bytes = s.recv_capacity() + s.send_capacity();
        if s.is_open() || (self.free.len() + 1) * bytes > POOL_BYTES {
            return;
        }
        self.free.push((set, handle));
    }

    /// Sockets kept now.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

/// A new leg's configuration: Nagle off (the splice forwards what arrives at once),
/// smoltcp's defaults for the rest, and a fresh congestion controller.
fn configure(s: &mut tcp::Socket<'static>) {
    s.set_nagle_enabled(false);
    s.set_ack_delay(Some(ACK_DELAY));
    s.set_keep_alive(None);
    s.set_timeout(None);
    let cc = s.congestion_control();
    s.set_congestion_control(cc);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(pool: &mut SocketPool, b: Buffers) -> OwnSet {
        let (mut set, h) = pool.take(b);
        set.get_mut::<tcp::Socket>(h).abort();
        (set, h)
    }

    #[test]
    fn freed_sockets_come_back_configured_and_the_pool_is_bounded() {
        let b = Buffers::default();
        let mut pool = SocketPool::default();
        let (mut set, h) = pool.take(b);
        {
            let s = set.get_mut::<tcp::Socket>(h);
            s.set_ack_delay(None);
            s.listen(80).unwrap();
        }
        pool.put((set, h));
        assert_eq!(pool.len(), 0, "a listening socket is open: dropped");

        let c = closed(&mut pool, b);
        pool.put(c);
        assert_eq!(pool.len(), 1);
        let (mut set, h) = pool.take(b);
        assert_eq!(pool.reused, 1);
        let s = set.get_mut::<tcp::Socket>(h);
        assert_eq!(s.ack_delay(), Some(ACK_DELAY));
        assert!(!s.nagle_enabled());
        assert_eq!(s.state(), tcp::State::Closed);
        assert_eq!((s.recv_queue(), s.send_queue()), (0, 0));

        // Other sizes are not reused.
        pool.put((set, h));
        let small = Buffers { rx: 4096, tx: 4096 };
        let (set, h) = pool.take(small);
        assert_eq!(set.get::<tcp::Socket>(h).recv_capacity(), 4096);
        assert_eq!(pool.reused, 1);

        // At most POOL_BYTES of buffers.
        let max = POOL_BYTES / (b.rx + b.tx);
        let all: Vec<OwnSet> = (0..max + 5).map(|_| closed(&mut pool, b)).collect();
        for s in all {
            pool.put(s);
        }
        assert_eq!(pool.len(), max);
    }
}
