//! Services: a connection to a service's virtual address goes to one of its endpoints.
//!
//! - **Choice**: round robin over the endpoints, per worker and service, skipping
//!   ejected ones. With one worker the spread over N connections is even to within
//!   one; with W workers, to within W (each worker keeps its own turn; the flows'
//!   hash spreads connections over the workers). Round robin rather than random
//!   power-of-two: the gateways see only their own connections, so least-loaded
//!   needs no more information than turns, and turns are exact.
//! - **Endpoint address**: the endpoint workload's first address of the virtual
//!   address's family; the port is the service port's `targetPort`.
//! - **Passive outlier detection**: a connection whose leg to the endpoint never came
//!   up (refused, reset or timed out before it was established; through another
//!   gateway, which answers for the endpoint at once, reset before any byte came back;
//!   over HBONE, a stream that never got its `200`) ejects that endpoint on this worker
//!   for [`EJECT_US`]; when every endpoint
//!   is ejected, all of them are tried again rather than none. Bounded: one entry per
//!   endpoint address, forgotten once its time is up.
//! - **No endpoint**: the connection is reset with a logged reason (`service_refused`).
//! - **Generations**: the turns restart with each table generation; an endpoint that a
//!   new generation removes gets no new connection from that generation on
//!   (connections already open keep going).

use std::net::{IpAddr, SocketAddr};

use ahash::AHashMap;
use tracing::warn;

use super::Engine;
use crate::sink::FrameSink;

/// How long an endpoint whose connect failed is skipped.
pub const EJECT_US: i64 = 10_000_000;

/// Where a connection to a service goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceTarget {
    /// The endpoint's address and target port.
    pub endpoint: SocketAddr,
    /// The service's DNS name (`forwarded: host=`).
    pub hostname: String,
    /// `namespace/name`, for logs.
    pub name: String,
}

/// One worker's turns and ejections.
#[derive(Debug, Default)]
pub(crate) struct Balancer {
    /// Next turn per service index (of the generation in force).
    turns: AHashMap<u32, usize>,
    /// Ejected endpoint addresses → until when.
    ejected: AHashMap<IpAddr, i64>,
}

impl Balancer {
    /// A new generation: indices change, turns restart.
    pub(crate) fn new_generation(&mut self) {
        self.turns.clear();
    }
}

impl<S: FrameSink> Engine<S> {
    /// The endpoint for a connection to `vip` (a service's virtual address and port),
    /// or why there is none.
    pub(crate) fn pick_endpoint(
        &mut self,
        service: u32,
        vip: SocketAddr,
        now: i64,
    ) -> Result<ServiceTarget, String> {
        let Some(svc) = self.index.tables.services.get(service as usize) else {
            return Err("the service left the tables".to_owned());
        };
        let name = format!("{}/{}", svc.namespace, svc.name);
        let Some(&(_, target_port)) = svc.ports.iter().find(|(p, _)| *p == vip.port()) else {
            let ports: Vec<String> = svc.ports.iter().map(|(p, _)| p.to_string()).collect();
            return Err(format!(
                "service {name} has no port {} (its ports: {})",
                vip.port(),
                ports.join(", ")
            ));
        };
        let candidates: Vec<IpAddr> = svc
            .endpoints
            .iter()
            .filter_map(|&w| {
                self.index
                    .workload_addrs(w)
                    .iter()
                    .find(|a| a.is_ipv4() == vip.is_ipv4())
                    .copied()
            })
            .collect();
        if candidates.is_empty() {
            return Err(format!(
                "service {name} has no endpoint{}",
                if svc.endpoints.is_empty() {
                    String::new()
                } else {
                    format!(
                        " with an {} address",
                        if vip.is_ipv4() { "IPv4" } else { "IPv6" }
                    )
                }
            ));
        }
        self.balancer.ejected.retain(|_, until| *until > now);
        let healthy: Vec<IpAddr> = candidates
            .iter()
            .filter(|a| !self.balancer.ejected.contains_key(a))
            .copied()
            .collect();
        let pool = if healthy.is_empty() {
            &candidates
        } else {
            &healthy
        };
        let turn = self.balancer.turns.entry(service).or_insert(0);
        let addr = pool[*turn % pool.len()];
        *turn = turn.wrapping_add(1);
        self.stats.service_connections += 1;
        Ok(ServiceTarget {
            endpoint: SocketAddr::new(addr, target_port),
            hostname: svc.hostname.clone(),
            name,
        })
    }

    /// A service connection's leg to `endpoint` never came up: skip the endpoint on
    /// this worker for [`EJECT_US`].
    pub(crate) fn eject_endpoint(&mut self, endpoint: IpAddr, now: i64) {
        if self
            .balancer
            .ejected
            .insert(endpoint, now + EJECT_US)
            .is_none()
        {
            self.stats.service_endpoint_ejections += 1;
            warn!(worker = self.id, %endpoint, secs = EJECT_US / 1_000_000, "service endpoint ejected: a connection to it never came up");
        }
    }
}
