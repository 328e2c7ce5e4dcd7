//! The in-process benchmark of the engine: two engines wired through in-memory frame
//! sinks to two smoltcp pods (`xdpmesh-sim`), no kernel, no rings, a simulated clock.
//! It isolates the dataplane's own per-packet cost (smoltcp, the splice, TLS and
//! HTTP/2, the flow table) from everything the end-to-end harness also measures
//! (copy-mode AF_XDP, wakeups, the pods' kernels).
//!
//! ```sh
//! xdpmesh-engine-bench --scenario bulk --protocol hbone --mib 16
//! benches/callgrind.sh                 # instructions per packet (engines only)
//! ```
//!
//! It prints one JSON object per scenario: bytes moved, the frames the two engines
//! received (`engine_rx_frames`), wall time, and ns per engine frame. The wall time
//! includes the simulated pods; `benches/callgrind.sh` counts only the engines'
//! instructions (callgrind's `--toggle-collect` on `Engine::on_frame` and
//! `Engine::poll`) and divides by `engine_rx_frames`.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Parser;
use serde_json::json;
use smoltcp::socket::tcp::State;
use xdpmesh_shm::Protocol;
use xdpmesh_sim::{pattern, recv_some, send_some, Opts, World, SERVER_IP};

#[derive(Parser)]
#[command(about = "In-process benchmark of the xdpmesh engine (no root, no kernel)")]
struct Args {
    /// bulk (one connection, MiB client → server) or connrate (connections opened,
    /// 64 B echoed, closed, one after the other).
    #[arg(long, default_value = "bulk")]
    scenario: String,
    /// tcp, hbone or both.
    #[arg(long, default_value = "both")]
    protocol: String,
    /// MiB moved by the bulk scenario.
    #[arg(long, default_value_t = 16)]
    mib: usize,
    /// Connections of the connrate scenario.
    #[arg(long, default_value_t = 200)]
    conns: u16,
}

fn world(protocol: Protocol) -> World {
    World::new(Opts {
        protocol,
        ..Default::default()
    })
}

fn frames(w: &mut World) -> u64 {
    w.a.counters().rx_packets + w.b.counters().rx_packets
}

fn bulk(protocol: Protocol, mib: usize) -> Result<serde_json::Value> {
    let mut w = world(protocol);
    let srv = w.server.listen(80);
    let cli = w
        .client
        .connect(SocketAddr::new(IpAddr::V4(SERVER_IP), 80), 40_000);
    let data = pattern(mib << 20, 5);
    let (mut sent, mut got) = (0, 0usize);
    let mut sink = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let sim_start = w.now;
    w.run_until("bulk transfer", 600_000_000, |w| {
        send_some(w.client.tcp(cli), &data, &mut sent);
        sink.clear();
        recv_some(w.server.tcp(srv), &mut sink, usize::MAX);
        got += sink.len();
        got == data.len()
    });
    let wall = start.elapsed().as_secs_f64();
    let sim = (w.now - sim_start) as f64 / 1e6;
    let f = frames(&mut w);
    Ok(json!({
        "scenario": "bulk",
        "protocol": name(protocol),
        "bytes": data.len(),
        "engine_rx_frames": f,
        "wall_s": wall,
        "simulated_s": sim,
        "ns_per_engine_frame": wall * 1e9 / f as f64,
        "wall_mbit_s": data.len() as f64 * 8.0 / wall / 1e6,
    }))
}

fn connrate(protocol: Protocol, conns: u16) -> Result<serde_json::Value> {
    let mut w = world(protocol);
    let start = Instant::now();
    for i in 0..conns {
        let srv = w.server.listen(80);
        let cli = w
            .client
            .connect(SocketAddr::new(IpAddr::V4(SERVER_IP), 80), 40_000 + i);
        let mut echoed = Vec::new();
        let mut at_server = Vec::new();
        let mut sent = false;
        w.run_until("echo", 10_000_000, |w| {
            if !sent && w.client.tcp(cli).state() == State::Established {
                sent = w.client.tcp(cli).send_slice(&[i as u8; 64]).is_ok();
            }
            recv_some(w.server.tcp(srv), &mut at_server, usize::MAX);
            if !at_server.is_empty() && w.server.tcp(srv).can_send() {
                let _ = w.server.tcp(srv).send_slice(&at_server);
                at_server.clear();
            }
            recv_some(w.client.tcp(cli), &mut echoed, usize::MAX);
            echoed.len() == 64
        });
        w.client.tcp(cli).close();
        w.server.tcp(srv).close();
        w.run_until("closed", 10_000_000, |w| {
            w.a.counters().live_connections == 0 && w.b.counters().live_connections == 0
        });
        w.client.sockets.remove(cli);
        w.server.sockets.remove(srv);
    }
    let wall = start.elapsed().as_secs_f64();
    let f = frames(&mut w);
    Ok(json!({
        "scenario": "connrate",
        "protocol": name(protocol),
        "connections": conns,
        "engine_rx_frames": f,
        "wall_s": wall,
        "ns_per_engine_frame": wall * 1e9 / f as f64,
        "wall_conns_per_s": f64::from(conns) / wall,
    }))
}

fn name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Hbone => "hbone",
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let protocols = match a.protocol.as_str() {
        "tcp" => vec![Protocol::Tcp],
        "hbone" => vec![Protocol::Hbone],
        "both" => vec![Protocol::Tcp, Protocol::Hbone],
        other => bail!("--protocol {other:?}: expected tcp, hbone or both"),
    };
    for p in protocols {
        let r = match a.scenario.as_str() {
            "bulk" => bulk(p, a.mib)?,
            "connrate" => connrate(p, a.conns)?,
            other => bail!("--scenario {other:?}: expected bulk or connrate"),
        };
        println!("{r}");
    }
    Ok(())
}
