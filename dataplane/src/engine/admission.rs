//! Admission: who a new connection's source is, and whether it may open a connection
//! at all, before any leg exists.
//!
//! - A source is a workload served here ([`Source::Local`]: captured on the pod's own
//!   link, so the gateway vouches for its identity, as ztunnel does for same-node
//!   traffic), a workload of another node ([`Source::Mesh`]: plain TCP from it carries
//!   no authenticated identity), an address outside the mesh ([`Source::Outside`]) or
//!   an unknown source ([`Source::Unknown`]: inside a pod range, no workload's).
//! - Peer authentication: a workload under STRICT accepts HBONE only; plaintext from
//!   any source but a local workload is reset (`peer_auth_refused`). Under PERMISSIVE
//!   it is accepted and the workload's policies see a source without identity.
//! - Unknown sources follow `unknown_source`: `reject` resets the SYN; `hold` keeps it
//!   (one copy per 4-tuple, at most [`HOLD_MAX`] per worker) until a table generation
//!   gives the address a workload, then the connection goes on as that workload's, or
//!   until the hold time is up, then it is reset; `pass` treats it as outside the mesh.
//!   Each outcome is counted; each source is logged once a minute per reason
//!   ([`LogLimiter`], shared by the workers).

use std::net::IpAddr;
use std::sync::Mutex;

use ahash::AHashMap;
use tracing::info;
use xdpmesh_shm::{PeerAuth, UnknownSource};

use super::Engine;
use crate::access::{Direction, Flags, Meta, Record};
use crate::sink::FrameSink;
use crate::state::Peer;
use crate::wire::{self, FlowKey, TcpFrame};

/// At most this many SYNs held per worker; beyond, an unknown source's SYN is reset.
pub const HOLD_MAX: usize = 1024;
/// A source is logged at most once per this long for each reason.
pub const LOG_EVERY_US: i64 = 60_000_000;
/// The log limiter forgets sources it has not logged for a minute once it holds this
/// many, so a flood of sources cannot grow it without bound.
const LOG_LIMITER_MAX: usize = 4096;

/// Who opens a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A workload served here, captured on its own link (index of the workload).
    Local(u32),
    /// A workload of another node (index of the workload).
    Mesh(u32),
    /// An address outside the mesh.
    Outside,
    /// Inside a pod range, and no workload's.
    Unknown,
}

/// Logs each source once per [`LOG_EVERY_US`] per reason, across workers.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: Mutex<AHashMap<(IpAddr, &'static str), i64>>,
}

impl LogLimiter {
    /// Whether to log `what` about `ip` now; records it when so.
    pub fn allow(&self, ip: IpAddr, what: &'static str, now: i64) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        if last.len() >= LOG_LIMITER_MAX {
            last.retain(|_, t| now - *t < LOG_EVERY_US);
        }
        match last.get(&(ip, what)) {
            Some(&t) if now - t < LOG_EVERY_US => false,
            _ => {
                last.insert((ip, what), now);
                true
            }
        }
    }
}

/// A SYN held for its unknown source's workload to appear.
struct Held {
    key: FlowKey,
    port: usize,
    frame: Vec<u8>,
    since: i64,
}

/// The held SYNs of one worker.
#[derive(Default)]
pub(crate) struct Holds {
    held: Vec<Held>,
    /// A new table generation came: look at every held SYN again.
    recheck: bool,
}

impl Holds {
    /// When the earliest held SYN's time is up (or now, after a new generation).
    pub(crate) fn next(&self, hold_us: i64, now: i64) -> Option<i64> {
        if self.recheck && !self.held.is_empty() {
            return Some(now);
        }
        self.held.iter().map(|h| h.since + hold_us).min()
    }

    /// Held SYNs.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }
}

impl<S: FrameSink> Engine<S> {
    /// Classifies the source of a SYN that arrived on `port`.
    pub(crate) fn classify_source(&self, port: usize, ip: IpAddr) -> Source {
        match self.index.get(&ip) {
            // Only on the link it is routed through: a local workload's address arriving
            // anywhere else is not vouched for.
            Some(a) if a.local && self.net.port_of(a.route.ifindex) == Some(port) => {
                Source::Local(a.workload)
            }
            Some(a) if a.local => Source::Outside,
            Some(a) => Source::Mesh(a.workload),
            None if self.index.is_unknown_source(ip) => Source::Unknown,
            None => Source::Outside,
        }
    }

    /// An unknown source's SYN under `reject` or `hold`: reset or held. Returns whether
    /// it was dealt with here (`pass` goes on as a source outside the mesh).
    pub(crate) fn admit_unknown(
        &mut self,
        port: usize,
        t: &TcpFrame,
        ip: &[u8],
        frame: &[u8],
        now: i64,
    ) -> bool {
        let src = t.key.src.ip();
        let range = self
            .index
            .pod_range_of(src)
            .map(|c| c.to_string())
            .unwrap_or_default();
        match self.index.unknown_source() {
            UnknownSource::Pass => {
                self.stats.unknown_source_passed += 1;
                if self.log_limiter.allow(src, "unknown-pass", now) {
                    info!(target: "access", src = %t.key.src, dst = %t.key.dst, reason = %format!("{src} is inside pod range {range} but no workload claims it (unknown_source: pass): handled as a source outside the mesh"), "unknown source");
                }
                false
            }
            UnknownSource::Reject => {
                self.stats.unknown_source_rejected += 1;
                let log = self.log_limiter.allow(src, "unknown-reject", now);
                let why = format!("unknown source: {src} is inside pod range {range} but no workload claims it (unknown_source: reject)");
                self.refuse(t, Source::Unknown, why, log);
                self.net.reset(port, t.src_mac, ip, now);
                true
            }
            UnknownSource::Hold => {
                if let Some(h) = self.holds.held.iter_mut().find(|h| h.key == t.key) {
                    // A retransmission: keep the first SYN's time, the latest copy.
                    h.frame.clear();
                    h.frame.extend_from_slice(frame);
                    return true;
                }
                let hold_ms = self.index.hold_us() / 1000;
                if self.holds.held.len() >= HOLD_MAX {
                    self.stats.unknown_source_hold_full += 1;
                    let log = self.log_limiter.allow(src, "unknown-hold-full", now);
                    let why = format!("unknown source: {src} is inside pod range {range} but no workload claims it, and {HOLD_MAX} SYNs are held already (unknown_source: hold)");
                    self.refuse(t, Source::Unknown, why, log);
                    self.net.reset(port, t.src_mac, ip, now);
                    return true;
                }
                self.stats.unknown_source_held += 1;
                if self.log_limiter.allow(src, "unknown-hold", now) {
                    info!(target: "access", src = %t.key.src, dst = %t.key.dst, reason = %format!("{src} is inside pod range {range} but no workload claims it (unknown_source: hold): its SYN waits up to {hold_ms} ms for a workload"), "connection held: unknown source");
                }
                self.holds.held.push(Held {
                    key: t.key,
                    port,
                    frame: frame.to_vec(),
                    since: now,
                });
                true
            }
        }
    }

    /// Asks for every held SYN to be looked at again (a new table generation).
    pub(crate) fn recheck_holds(&mut self) {
        self.holds.recheck = true;
    }

    /// Releases the held SYNs whose source now has a workload (accepted as that
    /// workload's) and resets those whose time is up.
    pub(crate) fn service_holds(&mut self, now: i64) {
        if self.holds.held.is_empty() {
            self.holds.recheck = false;
            return;
        }
        let hold_us = self.index.hold_us();
        let recheck = std::mem::take(&mut self.holds.recheck);
        if !recheck && self.holds.held.iter().all(|h| now < h.since + hold_us) {
            return;
        }
        let held = std::mem::take(&mut self.holds.held);
        for h in held {
            let src = h.key.src.ip();
            let known = self.index.get(&src).is_some();
            if !known && now < h.since + hold_us {
                self.holds.held.push(h);
                continue;
            }
            let Ok(t) = wire::parse_tcp_frame_with(&h.frame, self.net.spec(h.port).tcp_checksum)
            else {
                continue;
            };
            let ip = &h.frame[t.ip_offset..t.ip_offset + t.ip_len];
            if known {
                self.stats.unknown_source_released += 1;
                info!(target: "access", src = %t.key.src, dst = %t.key.dst, workload = %self.workload_of(src), held_ms = (now - h.since) / 1000, "held connection released: its source is a workload now");
                if self.flows.get(&t.key).is_none() {
                    self.accept(h.port, &t, ip, &h.frame, now);
                }
            } else {
                self.stats.unknown_source_expired += 1;
                let log = self.log_limiter.allow(src, "unknown-expired", now);
                let why = format!("unknown source: {src} is in a pod range but no workload claimed it within {} ms (unknown_source: hold)", hold_us / 1000);
                self.refuse(&t, Source::Unknown, why, log);
                self.net.reset(h.port, t.src_mac, ip, now);
            }
        }
    }

    /// Books a SYN refused at admission (its access record, `response_flags="DENY"`);
    /// `log`: print its line (rate-limited refusals print once a minute per source).
    fn refuse(&mut self, t: &TcpFrame, source: Source, why: String, log: bool) {
        let direction = match self.index.get(&t.key.dst.ip()) {
            Some(a) if !a.local => Direction::Outbound,
            _ => Direction::Inbound,
        };
        let meta: Meta = self.meta_plain(
            t.key.src,
            t.key.dst,
            direction,
            matches!(source, Source::Local(_)),
        );
        self.record(Record::refused(meta, Flags::Deny, why), true, log);
    }

    /// Peer authentication and policies of plaintext to a workload served here. Returns
    /// whether the connection may be opened; a refused one has been reset, counted and
    /// logged.
    pub(crate) fn admit_plaintext(
        &mut self,
        port: usize,
        t: &TcpFrame,
        ip: &[u8],
        now: i64,
        up: &super::Upstream,
        source: Source,
    ) -> bool {
        let (dst, target) = (up.dst, up.target);
        let workload = self.index.workload_name(dst.workload);
        let peer: Option<Peer<'_>> = match source {
            Source::Local(w) => self.index.peer(w),
            _ => None,
        };
        if peer.is_none() && self.index.peer_auth(dst.workload) == PeerAuth::Strict {
            self.stats.peer_auth_refused += 1;
            let from = match source {
                Source::Mesh(w) => format!(
                    "plaintext from mesh workload {}, which skipped HBONE",
                    self.index.workload_name(w)
                ),
                Source::Unknown => {
                    "plaintext from an unknown source (unknown_source: pass)".to_owned()
                }
                Source::Outside | Source::Local(_) => "plaintext from outside the mesh".to_owned(),
            };
            let why = format!("peer authentication: {from}: STRICT on {workload} accepts only HBONE (mutual TLS to port 15008)");
            self.refuse(t, source, why, true);
            self.net.reset(port, t.src_mac, ip, now);
            return false;
        }
        if let Err(denied) = self.index.authorize(dst.workload, target.port(), peer) {
            self.stats.policy_denied += 1;
            let why = format!("authorization policy: {denied} (workload {workload})");
            self.refuse(t, source, why, true);
            self.net.reset(port, t.src_mac, ip, now);
            return false;
        }
        if matches!(source, Source::Outside | Source::Unknown) {
            self.stats.plaintext_accepted += 1;
        }
        true
    }
}
