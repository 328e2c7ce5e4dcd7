//! Freed legs' smoltcp sockets, kept for the worker's next legs.
//!
//! A new leg's socket needs two buffers of `--rx-buffer`/`--tx-buffer` bytes. Allocated
//! fresh from the heap they were zeroed (`vec![0; n]`), and that memset was 83% of the
//! engine's own instructions on the connection path (callgrind over
//! `xdpmesh-engine-bench --scenario connrate`): a plain connection has four 64 KiB
//! buffers per gateway. (They now live in [`crate::ringmem`] slots, which the kernel
//! zeroes a page at a time on first write; a reused socket still saves those faults and
//! the mutex of the slot lists.) A socket whose
//! connection is over is reset by smoltcp itself when it is used again (`listen` and
//! `connect` call its `reset`, which empties both buffers without touching their bytes
//! and clears every piece of connection state: sequence numbers, windows, timers, the
//! RTT estimate, the reassembly state); what `reset` keeps is configuration, which
//! [`SocketPool::take`] sets again. Old bytes left in a reused buffer are never read:
//! smoltcp sends and delivers only what was enqueued since the reset.
//!
//! The pool is bounded in bytes ([`POOL_BYTES`]), so a burst of connections does not
//! leave its buffers resident after it ends: beyond the bound, freed sockets are dropped,
//! their slots go back to the free lists, pages released. [`SocketPool::release`] gives
//! back the pages of the sockets kept while the pool is not being used.

use smoltcp::socket::tcp;
use smoltcp::time::Duration;

use crate::ringmem::RingSocket;
use crate::stack::Buffers;

/// Buffer bytes the pool keeps at most per worker (32 plain legs' sockets at the
/// default 64 KiB buffers, 8 at 256 KiB).
pub const POOL_BYTES: usize = 4 << 20;

/// smoltcp's default delayed-ACK time (`ACK_DELAY_DEFAULT`), which a leg turns off
/// when it sends its FIN; `xdpmesh-dataplane run --ack-delay-ms` sets another.
pub const ACK_DELAY: Duration = Duration::from_millis(10);

/// The pool.
pub struct SocketPool {
    free: Vec<RingSocket>,
    /// How many of `free` (the last ones) may have resident buffer pages.
    touched: usize,
    /// A socket was taken since the last [`SocketPool::release`].
    busy: bool,
    /// Sockets handed out again instead of being allocated.
    pub reused: u64,
    /// The delayed-ACK time of the legs' sockets (None: every segment ACKed at once).
    pub ack_delay: Option<Duration>,
}

impl Default for SocketPool {
    fn default() -> Self {
        SocketPool {
            free: Vec::new(),
            touched: 0,
            busy: false,
            reused: 0,
            ack_delay: Some(ACK_DELAY),
        }
    }
}

impl SocketPool {
    /// A socket with buffers of `buffers`' sizes, configured as a new leg's: from the
    /// pool when one of those sizes is there, else freshly allocated.
    pub fn take(&mut self, buffers: Buffers) -> RingSocket {
        self.busy = true;
        while let Some(mut r) = self.free.pop() {
            self.touched = self.touched.min(self.free.len());
            let s = r.socket();
            if s.recv_capacity() == buffers.rx && s.send_capacity() == buffers.tx {
                configure(s, self.ack_delay);
                self.reused += 1;
                return r;
            }
        }
        let mut r = RingSocket::new(buffers.rx, buffers.tx);
        configure(r.socket(), self.ack_delay);
        r
    }

    /// Keeps a freed leg's socket, if its connection is over (CLOSED or TIME-WAIT: a
    /// socket still open is dropped) and the pool has room.
    pub fn put(&mut self, r: RingSocket) {
        let s = r.socket_ref();
        let bytes = s.recv_capacity() + s.send_capacity();
        if s.is_open() || (self.free.len() + 1) * bytes > POOL_BYTES {
            return;
        }
        self.free.push(r);
        self.touched += 1;
    }

    /// Gives back the buffer pages of the sockets put since they were last released,
    /// unless a socket was taken since the last call: while connections come and go,
    /// the kept sockets' pages are about to be written again (a closed socket's buffers
    /// hold nothing anyone will read: smoltcp's `reset` empties them when the socket is
    /// used again). Returns the buffers released.
    pub fn release(&mut self) -> usize {
        if std::mem::take(&mut self.busy) {
            return 0;
        }
        let from = self.free.len() - self.touched;
        self.touched = 0;
        self.free[from..]
            .iter_mut()
            .map(RingSocket::release_closed)
            .sum()
    }

    /// Bytes of the kept sockets' buffers resident now (tests).
    pub fn resident(&self) -> usize {
        self.free.iter().map(RingSocket::resident).sum()
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
/// the pool's delayed-ACK time, smoltcp's defaults for the rest, and a fresh congestion
/// controller.
fn configure(s: &mut tcp::Socket<'static>, ack_delay: Option<Duration>) {
    s.set_nagle_enabled(false);
    s.set_ack_delay(ack_delay);
    s.set_keep_alive(None);
    s.set_timeout(None);
    let cc = s.congestion_control();
    s.set_congestion_control(cc);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(pool: &mut SocketPool, b: Buffers) -> RingSocket {
        let mut r = pool.take(b);
        r.socket().abort();
        r
    }

    #[test]
    fn sockets_get_the_pools_delayed_ack_time_new_or_reused() {
        let b = Buffers::default();
        let mut pool = SocketPool {
            ack_delay: None,
            ..Default::default()
        };
        assert_eq!(pool.take(b).socket_ref().ack_delay(), None, "new");
        let mut r = pool.take(b);
        r.socket().set_ack_delay(Some(ACK_DELAY));
        r.socket().abort();
        pool.put(r);
        assert_eq!(pool.take(b).socket_ref().ack_delay(), None, "reused");
        assert_eq!(pool.reused, 1);
        pool.ack_delay = Some(Duration::from_millis(1));
        assert_eq!(
            pool.take(b).socket_ref().ack_delay(),
            Some(Duration::from_millis(1))
        );
    }

    #[test]
    fn freed_sockets_come_back_configured_and_the_pool_is_bounded() {
        let b = Buffers::default();
        let mut pool = SocketPool::default();
        let mut r = pool.take(b);
        {
            let s = r.socket();
            s.set_ack_delay(None);
            s.listen(80).unwrap();
        }
        pool.put(r);
        assert_eq!(pool.len(), 0, "a listening socket is open: dropped");

        let c = closed(&mut pool, b);
        pool.put(c);
        assert_eq!(pool.len(), 1);
        let mut r = pool.take(b);
        assert_eq!(pool.reused, 1);
        let s = r.socket();
        assert_eq!(s.ack_delay(), Some(ACK_DELAY));
        assert!(!s.nagle_enabled());
        assert_eq!(s.state(), tcp::State::Closed);
        assert_eq!((s.recv_queue(), s.send_queue()), (0, 0));

        // Other sizes are not reused.
        pool.put(r);
        let small = Buffers { rx: 4096, tx: 4096 };
        let r = pool.take(small);
        assert_eq!(r.socket_ref().recv_capacity(), 4096);
        assert_eq!(pool.reused, 1);

        // At most POOL_BYTES of buffers.
        let max = POOL_BYTES / (b.rx + b.tx);
        let all: Vec<RingSocket> = (0..max + 5).map(|_| closed(&mut pool, b)).collect();
        for s in all {
            pool.put(s);
        }
        assert_eq!(pool.len(), max);
    }

    #[test]
    fn kept_sockets_are_released_once_the_pool_sits_unused() {
        let b = Buffers::default();
        let mut pool = SocketPool::default();
        let c = closed(&mut pool, b);
        pool.put(c);
        assert_eq!(pool.release(), 0, "a socket was taken in this period");
        assert_eq!(pool.release(), 2, "unused for a period: both buffers");
        assert_eq!(pool.release(), 0, "released already");
        let (c, d) = (closed(&mut pool, b), closed(&mut pool, b));
        assert_eq!(pool.reused, 1);
        pool.put(c);
        pool.put(d);
        assert_eq!((pool.len(), pool.release(), pool.release()), (2, 0, 4));
    }
}
