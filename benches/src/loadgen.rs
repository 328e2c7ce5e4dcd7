//! The load generators: blocking std sockets, one process per role, run inside the pod
//! namespaces as hidden subcommands of `xdpmesh-bench` (`serve`, `pingpong-client`,
//! `connrate-client`, `hold-client`). Clients print one JSON line on stdout.
//!
//! The server listens on three ports, one per traffic shape:
//!
//! - echo ([`ECHO_PORT`]): a thread per connection echoes everything until EOF
//!   (request/response latency);
//! - connrate ([`CONNRATE_PORT`]): accept, read 1 byte, write it back, close (the server
//!   closes first, so the client's ports never sit in TIME-WAIT);
//! - hold ([`HOLD_PORT`]): accept, echo 1 byte, then keep the socket open and idle
//!   (concurrency: thousands of open connections without thousands of threads) until
//!   the client closes it (a reaper peeks at every held socket once a second).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::stats::{self, Percentiles};

/// iperf3 server port.
pub const IPERF_PORT: u16 = 5201;
/// Echo server port (latency).
pub const ECHO_PORT: u16 = 7000;
/// Connect + 1-byte echo + close (connection rate).
pub const CONNRATE_PORT: u16 = 7001;
/// Connect + 1-byte echo, then held open (concurrency).
pub const HOLD_PORT: u16 = 7002;

/// How long one connect or one echo may take before it counts as an error.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Raises the soft open-files limit to the hard limit (10k connections need it).
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 0,
    }
}

fn spawn_named(name: &str, stack: usize, f: impl FnOnce() + Send + 'static) {
    let _ = std::thread::Builder::new()
        .name(name.into())
        .stack_size(stack)
        .spawn(f);
}

/// Runs the three servers until killed.
pub fn serve(echo_port: u16, connrate_port: u16, hold_port: u16) -> anyhow::Result<()> {
    raise_nofile_limit();
    let bind = |port: u16| {
        TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding TCP port {port}"))
    };
    let echo = bind(echo_port)?;
    let connrate = bind(connrate_port)?;
    let hold = bind(hold_port)?;
    spawn_named("echo-accept", 256 << 10, move || {
        for s in echo.incoming().flatten() {
            spawn_named("echo", 64 << 10, move || echo_conn(s));
        }
    });
    for i in 0..2 {
        let l = connrate.try_clone().context("cloning listener")?;
        spawn_named(&format!("connrate-{i}"), 256 << 10, move || {
            for s in l.incoming().flatten() {
                let _ = one_byte_echo(&s);
            }
        });
    }
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let accepted = held.clone();
    spawn_named("hold-accept", 256 << 10, move || {
        for s in hold.incoming().flatten() {
            if one_byte_echo(&s).is_ok() && s.set_nonblocking(true).is_ok() {
                accepted.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            }
        }
    });
    // Closes held connections whose client went away, so that the gateways see both
    // halves close (a half-closed connection stays live in a proxy). One non-blocking
    // peek per connection per second.
    spawn_named("hold-reaper", 256 << 10, move || loop {
        std::thread::sleep(Duration::from_secs(1));
        let mut v = held.lock().unwrap_or_else(|p| p.into_inner());
        let mut b = [0u8; 1];
        v.retain(|s| match s.peek(&mut b) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        });
    });
    eprintln!("xdpmesh-bench serve: listening on {echo_port} (echo), {connrate_port} (connrate), {hold_port} (hold)");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn echo_conn(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn one_byte_echo(mut s: &TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    s.write_all(&b)
}

/// Result of `pingpong-client`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PingPongResult {
    /// Message size, bytes (each way).
    pub size: usize,
    /// Measured round trips (after the warm-up).
    pub round_trips: u64,
    /// Measured seconds.
    pub seconds: f64,
    pub latency: Percentiles,
    /// `[latency_us, quantile]` points.
    pub cdf: Vec<[f64; 2]>,
    /// How long `connect` took, microseconds.
    #[serde(default)]
    pub connect_us: f64,
    /// The first round trip (warm-up or not), microseconds: with `connect_us`, what a
    /// new connection costs before its first answer.
    #[serde(default)]
    pub first_round_trip_us: f64,
}

/// One connection, `size`-byte messages echoed back, `warmup` unmeasured then up to
/// `duration` or `max_round_trips`.
pub fn pingpong_client(
    addr: SocketAddr,
    size: usize,
    warmup: Duration,
    duration: Duration,
    max_round_trips: u64,
) -> anyhow::Result<PingPongResult> {
    let t_connect = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    let connect_us = us(t_connect.elapsed());
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; size];
    let mut first_round_trip_us = None;
    let mut h = stats::new_histogram();
    let start = Instant::now();
    let mut measured_from: Option<Instant> = None;
    let mut n = 0u64;
    loop {
        let t0 = Instant::now();
        if measured_from.is_none() && t0.duration_since(start) >= warmup {
            measured_from = Some(t0);
        }
        if let Some(from) = measured_from {
            if n >= max_round_trips || t0.duration_since(from) >= duration {
                break;
            }
        }
        s.write_all(&msg).context("sending a request")?;
        s.read_exact(&mut back)
            .with_context(|| format!("reading the echo of round trip {n}"))?;
        let dt = t0.elapsed();
        anyhow::ensure!(back == msg, "echo differs from the request");
        first_round_trip_us.get_or_insert(us(dt));
        if measured_from.is_some() {
            stats::record(&mut h, dt.as_nanos() as u64);
            n += 1;
        }
    }
    let seconds = measured_from.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let _ = s.shutdown(Shutdown::Both);
    anyhow::ensure!(n > 0, "no round trip measured");
    Ok(PingPongResult {
        size,
        round_trips: n,
        seconds,
        latency: stats::percentiles(&h),
        cdf: stats::cdf(&h),
        connect_us,
        first_round_trip_us: first_round_trip_us.unwrap_or(0.0),
    })
}

fn us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e3
}

/// Result of `connrate-client`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnRateResult {
    /// Connections tried.
    pub attempted: u64,
    /// Connections that completed connect + 1-byte echo.
    pub ok: u64,
    /// Connections that failed (connect refused/timed out, echo missing).
    pub errors: u64,
    pub seconds: f64,
    /// `ok / seconds`.
    pub rate_per_s: f64,
    /// Latency of connect + echo.
    pub latency: Percentiles,
    /// Up to 5 distinct error messages.
    pub error_samples: Vec<String>,
}

fn note_error(samples: &Mutex<Vec<String>>, e: &std::io::Error, what: &str) {
    let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
    let msg = format!("{what}: {e}");
    if s.len() < 5 && !s.contains(&msg) {
        s.push(msg);
    }
}

/// `threads` loops of connect, write 1 byte, read it back, close; stops after `count`
/// attempts or `duration`.
pub fn connrate_client(
    addr: SocketAddr,
    threads: usize,
    count: u64,
    duration: Duration,
) -> anyhow::Result<ConnRateResult> {
    raise_nofile_limit();
    let attempted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let deadline = start + duration;
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let (attempted, errors, samples) = (attempted.clone(), errors.clone(), samples.clone());
        handles.push(std::thread::spawn(move || {
            let mut h = stats::new_histogram();
            while Instant::now() < deadline && attempted.fetch_add(1, Ordering::Relaxed) < count {
                let t0 = Instant::now();
                match one_connection(addr) {
                    Ok(()) => stats::record(&mut h, t0.elapsed().as_nanos() as u64),
                    Err((what, e)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        note_error(&samples, &e, what);
                    }
                }
            }
            h
        }));
    }
    let mut h = stats::new_histogram();
    for t in handles {
        let th = t
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        h.add(th).context("merging histograms")?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let ok = h.len();
    let errors = errors.load(Ordering::Relaxed);
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(ConnRateResult {
        attempted: ok + errors,
        ok,
        errors,
        seconds,
        rate_per_s: ok as f64 / seconds.max(1e-9),
        latency: stats::percentiles(&h),
        error_samples: samples,
    })
}

fn one_connection(addr: SocketAddr) -> Result<(), (&'static str, std::io::Error)> {
    let s = open_echoed(addr)?;
    // The server closes first; wait for its FIN so that the next connection does not
    // race it, then close.
    let mut b = [0u8; 1];
    let _ = (&s).read(&mut b);
    Ok(())
}

fn open_echoed(addr: SocketAddr) -> Result<TcpStream, (&'static str, std::io::Error)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| ("connect", e))?;
    s.set_nodelay(true).map_err(|e| ("setsockopt", e))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| ("setsockopt", e))?;
    s.write_all(b"x").map_err(|e| ("write", e))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).map_err(|e| ("echo", e))?;
    if b[0] != b'x' {
        return Err((
            "echo",
            std::io::Error::new(std::io::ErrorKind::InvalidData, "wrong byte echoed"),
        ));
    }
    Ok(s)
}

/// The line `hold-client` prints once its connections are open.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldReady {
    /// Always true (the harness waits for `"ready":true`).
    pub ready: bool,
    /// Connections open (each echoed one byte end to end).
    pub open: u64,
    pub errors: u64,
    /// Seconds it took to open them.
    pub seconds: f64,
    pub error_samples: Vec<String>,
}

/// Marker the harness waits for in the hold client's log.
pub const HOLD_READY_MARKER: &str = "\"ready\":true";

/// Opens `count` connections (`threads` at a time), each checked with a 1-byte echo,
/// prints a [`HoldReady`] line, then holds them for `hold` (the harness kills it sooner).
pub fn hold_client(
    addr: SocketAddr,
    count: u64,
    threads: usize,
    hold: Duration,
) -> anyhow::Result<()> {
    let limit = raise_nofile_limit();
    anyhow::ensure!(
        limit == 0 || limit > count + 64,
        "open-files limit {limit} is too low for {count} connections (raise `ulimit -Hn`)"
    );
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let (next, errors, samples) = (next.clone(), errors.clone(), samples.clone());
        handles.push(std::thread::spawn(move || {
            let mut held = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                match open_echoed(addr) {
                    Ok(s) => held.push(s),
                    Err((what, e)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        note_error(&samples, &e, what);
                    }
                }
            }
            held
        }));
    }
    let mut held = Vec::new();
    for t in handles {
        held.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))?,
        );
    }
    let ready = HoldReady {
        ready: true,
        open: held.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
        error_samples: samples.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    println!("{}", serde_json::to_string(&ready)?);
    std::io::stdout().flush()?;
    std::thread::sleep(hold);
    drop(held);
    Ok(())
}
