//! Real kernel-TCP peers: the Python scripts in `tests/peers/` (embedded here and written
//! to the topology's temp dir when used), curl and iperf3, plus the deterministic blob
//! stream the file server sends.
//!
//! Blob stream (shared with `peers/fileserver.py`): the first `N` bytes of what Python's
//! `random.Random(seed).randbytes(65536)` returns call after call, i.e. the MT19937
//! outputs as little-endian 32-bit words. CPython makes it at C speed (64 MiB in ~0.4 s)
//! and the Rust generator below stays fast in unoptimised test builds (SHAKE256, tried
//! first, ran at ~3 MB/s in a debug build).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufWriter, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::process::ProcHandle;
use crate::topology::{run_with_timeout, Node, Topology};

/// Port of `fileserver.py` on the server pod.
pub const FILESERVER_PORT: u16 = 80;
/// Port of `echo_server.py` on the server pod.
pub const ECHO_PORT: u16 = 7000;
/// Port of `iperf3 -s` on the server pod.
pub const IPERF_PORT: u16 = 5201;

const BLOB_CHUNK: usize = 65536;
const FILESERVER_PY: &str = include_str!("../peers/fileserver.py");
const ECHO_SERVER_PY: &str = include_str!("../peers/echo_server.py");
const ECHO_CLIENT_PY: &str = include_str!("../peers/echo_client.py");

/// MT19937 seeded like CPython's `random.Random(seed)` for an integer seed
/// (`init_by_array` over the seed's 32-bit words, least significant first).
struct Mt19937 {
    mt: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        let mut mt = [0u32; 624];
        mt[0] = 19_650_218;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..624.max(key.len()) {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..623 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        Mt19937 { mt, index: 624 }
    }

    fn refill(&mut self) {
        for k in 0..624 {
            let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % 624] & 0x7fff_ffff);
            let mag = if y & 1 == 0 { 0 } else { 0x9908_b0df };
            self.mt[k] = self.mt[(k + 397) % 624] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.refill();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// Calls `f` with each chunk (64 KiB, the last one shorter) of the blob `(size, seed)`.
pub fn for_each_blob_chunk(size: u64, seed: u64, mut f: impl FnMut(&[u8])) {
    let mut rng = Mt19937::new(seed);
    let mut buf = vec![0u8; BLOB_CHUNK];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(4) {
            word.copy_from_slice(&rng.next_u32().to_le_bytes());
        }
        let n = left.min(BLOB_CHUNK as u64) as usize;
        f(&buf[..n]);
        left -= n as u64;
    }
}

/// Lower-case hex SHA-256 of the blob `(size, seed)` that `GET /blob?size=&seed=` serves.
/// Results are cached per process (a debug build needs ~0.5 s per 8 MiB).
pub fn blob_sha256(size: u64, seed: u64) -> String {
    static CACHE: Mutex<BTreeMap<(u64, u64), String>> = Mutex::new(BTreeMap::new());
    if let Some(h) = CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(size, seed))
    {
        return h.clone();
    }
    let mut h = Sha256::new();
    for_each_blob_chunk(size, seed, |c| h.update(c));
    let h = hex(&h.finalize());
    CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((size, seed), h.clone());
    h
}

/// Writes the blob `(size, seed)` to `path`.
pub fn write_blob(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut result = Ok(());
    for_each_blob_chunk(size, seed, |c| {
        if result.is_ok() {
            result = w.write_all(c);
        }
    });
    result?;
    w.flush()?;
    Ok(())
}

/// Lower-case hex SHA-256 of a file: `sha256sum` when installed (unoptimised test builds
/// hash at ~20 MB/s), else computed here.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    if let Ok(out) = std::process::Command::new("sha256sum").arg(path).output() {
        if out.status.success() {
            if let Some(h) = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
            {
                return Ok(h.to_string());
            }
        }
    }
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Parses curl's `-w "%{size_...} %{time_total}"` output.
fn parse_curl_stats(stdout: &[u8]) -> anyhow::Result<(u64, f64)> {
    let text = String::from_utf8_lossy(stdout);
    let mut it = text.split_whitespace();
    let bytes = it.next().and_then(|b| b.parse().ok());
    let seconds = it.next().and_then(|s| s.parse().ok());
    match (bytes, seconds) {
        (Some(b), Some(s)) => Ok((b, s)),
        _ => bail!("unexpected curl -w output {text:?}"),
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Python 3 interpreter: `$XDPMESH_PYTHON`, else the real executable behind `python3`
/// (resolved once, so pyenv shims are not re-run per spawn), else `python3`.
pub fn python() -> OsString {
    static PY: OnceLock<OsString> = OnceLock::new();
    PY.get_or_init(|| {
        if let Some(p) = std::env::var_os("XDPMESH_PYTHON") {
            return p;
        }
        std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .map(OsString::from)
            .unwrap_or_else(|| "python3".into())
    })
    .clone()
}

/// Result of a download (bytes and hash computed here from curl's stdout).
#[derive(Clone, Debug)]
pub struct Transfer {
    pub bytes: u64,
    pub seconds: f64,
    pub sha256: String,
}

/// Result of an upload: what was sent, and what the server says it received.
#[derive(Clone, Debug)]
pub struct UploadResult {
    pub bytes: u64,
    pub seconds: f64,
    /// SHA-256 of the blob sent.
    pub expected_sha256: String,
    /// SHA-256 the server computed over the body it read.
    pub sha256: String,
    /// Body length the server read.
    pub length: u64,
}

impl UploadResult {
    /// The server received exactly the bytes sent.
    pub fn ok(&self) -> bool {
        self.length == self.bytes && self.sha256 == self.expected_sha256
    }
}

/// The JSON line of `echo_client.py`.
#[derive(Clone, Debug)]
pub struct EchoResult {
    pub connections: u64,
    pub ok: u64,
    pub failed: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub errors: Vec<String>,
    /// Exit status of the client was 0.
    pub exit_ok: bool,
}

/// The report of a [`Topology::start_held_echo`] client, once it ends (within
/// `timeout`).
pub fn held_echo_result(p: &mut ProcHandle, timeout: Duration) -> anyhow::Result<EchoResult> {
    let status = p
        .wait_timeout(timeout)?
        .with_context(|| format!("echo_client.py --hold still running: {}", p.log_tail(5)))?;
    let log = p.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with("{\"connections\""))
        .with_context(|| format!("echo_client.py --hold printed no report: {}", p.log_tail(5)))?;
    echo_report(line, status.success())
}

/// An `echo_client.py` report line as an [`EchoResult`].
fn echo_report(line: &str, exit_ok: bool) -> anyhow::Result<EchoResult> {
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("echo_client.py report {line:?}"))?;
    Ok(EchoResult {
        connections: field_u64(&v, "connections")?,
        ok: field_u64(&v, "ok")?,
        failed: field_u64(&v, "failed")?,
        bytes: field_u64(&v, "bytes")?,
        seconds: field_f64(&v, "seconds")?,
        errors: v["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        exit_ok,
    })
}

/// Summary of an `iperf3 -J` client run.
#[derive(Clone, Debug)]
pub struct IperfResult {
    /// `end.sum_received.bits_per_second`
    pub bits_per_second: f64,
    /// `end.sum_received.bytes`
    pub bytes: u64,
    /// `end.sum_received.seconds`
    pub seconds: f64,
    /// `end.sum_sent.retransmits`
    pub retransmits: u64,
    /// The whole JSON report.
    pub json: serde_json::Value,
    /// Runs refused as "server is busy" before this one (the server was still ending
    /// the previous test). Each cost one control connection to the server, which a
    /// gateway counts like any other.
    pub busy_refusals: u32,
}

impl IperfResult {
    /// The TCP connections the client opened for this result: the control connection
    /// and one per stream, plus a control connection per busy refusal.
    pub fn connections(&self, streams: u32) -> u64 {
        u64::from(1 + streams + self.busy_refusals)
    }
}

fn field_u64(v: &serde_json::Value, key: &str) -> anyhow::Result<u64> {
    v[key]
        .as_u64()
        .with_context(|| format!("missing integer {key:?} in {v}"))
}

fn field_f64(v: &serde_json::Value, key: &str) -> anyhow::Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("missing number {key:?} in {v}"))
}

impl Topology {
    /// Writes an embedded peer script to the temp dir (once) and returns its path.
    fn peer_script(&self, name: &str) -> anyhow::Result<PathBuf> {
        let text = match name {
            "fileserver.py" => FILESERVER_PY,
            "echo_server.py" => ECHO_SERVER_PY,
            "echo_client.py" => ECHO_CLIENT_PY,
            _ => bail!("no peer script {name}"),
        };
        let path = self.tmp_dir().join(name);
        if !path.exists() {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(path)
    }

    fn spawn_python(&self, node: Node, script: &str, args: &[&str]) -> anyhow::Result<ProcHandle> {
        let path = self.peer_script(script)?;
        let py = python();
        let mut argv = vec![py.to_str().context("python path")?, "-u"];
        let path = path.to_string_lossy().into_owned();
        argv.push(&path);
        argv.extend_from_slice(args);
        self.spawn(node, &argv)
    }

    /// Starts `fileserver.py` on `port` in `node` and waits until it listens.
    pub fn start_fileserver(&self, node: Node, port: u16) -> anyhow::Result<ProcHandle> {
        let port_s = port.to_string();
        let bind = self.any_address();
        let p = self.spawn_python(node, "fileserver.py", &["--port", &port_s, "--bind", bind])?;
        self.wait_listening(node, port, p)
    }

    /// Starts `echo_server.py` on `port` in `node` and waits until it listens.
    pub fn start_echo_server(&self, node: Node, port: u16) -> anyhow::Result<ProcHandle> {
        let port_s = port.to_string();
        let bind = self.any_address();
        let p = self.spawn_python(node, "echo_server.py", &[&port_s, "--bind", bind])?;
        self.wait_listening(node, port, p)
    }

    /// What the Python servers listen on: every IPv4 address, and every IPv6 one too
    /// where the topology has IPv6.
    fn any_address(&self) -> &'static str {
        if self.opts().families.v6() {
            "::"
        } else {
            "0.0.0.0"
        }
    }

    /// Starts `iperf3 -s` on `port` in `node` and waits until it listens.
    pub fn start_iperf_server(&self, node: Node, port: u16) -> anyhow::Result<ProcHandle> {
        let port_s = port.to_string();
        let p = self.spawn(node, &["iperf3", "-s", "-p", &port_s])?;
        self.wait_listening(node, port, p)
    }

    fn wait_listening(
        &self,
        node: Node,
        port: u16,
        mut p: ProcHandle,
    ) -> anyhow::Result<ProcHandle> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = p.try_wait()? {
                bail!("{} exited ({status}):\n{}", p.name(), p.log_tail(20));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_tcp_listen(node, port, left.min(Duration::from_millis(500))) {
                Ok(()) => return Ok(p),
                Err(e) if left.is_zero() => {
                    return Err(e.context(format!("{} log:\n{}", p.name(), p.log_tail(20))))
                }
                Err(_) => {}
            }
        }
    }

    /// `curl` GET of `url` from `node` into a file under the temp dir (removed afterwards),
    /// then its SHA-256 ([`sha256_file`]). `seconds` is curl's own `time_total`, so the
    /// hashing does not count.
    pub fn http_download(&self, node: Node, url: &str) -> anyhow::Result<Transfer> {
        let n = self.next_file_id();
        let path = self.tmp_dir().join(format!("download-{n}.bin"));
        let path_s = path.to_string_lossy().into_owned();
        let out = self.run_timeout(
            node,
            &[
                "curl",
                "-sS",
                "--fail",
                "--max-time",
                "300",
                "-o",
                &path_s,
                "-w",
                "%{size_download} %{time_total}",
                url,
            ],
            Duration::from_secs(310),
        );
        let result = out.and_then(|out| {
            let (bytes, seconds) = parse_curl_stats(&out.stdout)?;
            let sha256 = sha256_file(&path)?;
            Ok(Transfer {
                bytes,
                seconds,
                sha256,
            })
        });
        let _ = std::fs::remove_file(&path);
        result
    }

    /// `curl -T` (PUT) of the blob `(size, seed)` to `url` from `node`; parses the server's
    /// `{"sha256":..,"length":..}` answer. `seconds` is curl's `time_total`.
    pub fn http_upload(
        &self,
        node: Node,
        url: &str,
        size: u64,
        seed: u64,
    ) -> anyhow::Result<UploadResult> {
        let n = self.next_file_id();
        let path = self.tmp_dir().join(format!("upload-{n}.bin"));
        let result = self.http_upload_file(node, url, &path, size, seed);
        let _ = std::fs::remove_file(&path);
        result
    }

    fn http_upload_file(
        &self,
        node: Node,
        url: &str,
        path: &Path,
        size: u64,
        seed: u64,
    ) -> anyhow::Result<UploadResult> {
        write_blob(path, size, seed)?;
        let expected_sha256 = sha256_file(path)?;
        let path_s = path.to_string_lossy().into_owned();
        let resp = self.tmp_dir().join(format!(
            "{}.resp",
            path_s.rsplit('/').next().unwrap_or("upload")
        ));
        let resp_s = resp.to_string_lossy().into_owned();
        let out = self.run_timeout(
            node,
            &[
                "curl",
                "-sS",
                "--fail",
                "--max-time",
                "300",
                "-T",
                &path_s,
                "-o",
                &resp_s,
                "-w",
                "%{size_upload} %{time_total}",
                url,
            ],
            Duration::from_secs(310),
        );
        let answer = std::fs::read(&resp);
        let _ = std::fs::remove_file(&resp);
        let (bytes, seconds) = parse_curl_stats(&out?.stdout)?;
        let answer = answer.context("reading the upload answer")?;
        let v: serde_json::Value = serde_json::from_slice(&answer).with_context(|| {
            format!(
                "upload answer is not JSON: {}",
                String::from_utf8_lossy(&answer)
            )
        })?;
        Ok(UploadResult {
            bytes,
            seconds,
            expected_sha256,
            sha256: v["sha256"].as_str().unwrap_or_default().to_string(),
            length: field_u64(&v, "length")?,
        })
    }

    /// Runs `echo_client.py` in `node` against `host:port`. Returns its report even when
    /// connections failed (check [`EchoResult::failed`]); fails only if it produced none.
    pub fn run_echo_client(
        &self,
        node: Node,
        host: impl Into<IpAddr>,
        port: u16,
        connections: u32,
        bytes: u64,
    ) -> anyhow::Result<EchoResult> {
        self.echo_client(node, host, port, connections, bytes, false)
    }

    /// [`Self::run_echo_client`] with `--all-open`: no connection sends before all
    /// `connections` are open, so they are all open at the same moment.
    pub fn run_echo_client_all_open(
        &self,
        node: Node,
        host: impl Into<IpAddr>,
        port: u16,
        connections: u32,
        bytes: u64,
    ) -> anyhow::Result<EchoResult> {
        self.echo_client(node, host, port, connections, bytes, true)
    }

    /// Starts `echo_client.py --hold`: `connections` connections, each echoes `bytes`
    /// and then stays open and idle; returns once all are held (the client printed
    /// `{"held":K}`; K, the connections held, is returned with it). They half-close and
    /// end after `hold_secs` or on SIGUSR1; [`held_echo_result`] reads the client's
    /// report then.
    pub fn start_held_echo(
        &self,
        node: Node,
        host: impl Into<IpAddr>,
        port: u16,
        connections: u32,
        bytes: u64,
        hold_secs: u32,
    ) -> anyhow::Result<(ProcHandle, u64)> {
        let host_s = host.into().to_string();
        let (port_s, conns_s, bytes_s, hold_s) = (
            port.to_string(),
            connections.to_string(),
            bytes.to_string(),
            hold_secs.to_string(),
        );
        let mut p = self.spawn_python(
            node,
            "echo_client.py",
            &[
                "--host",
                &host_s,
                "--port",
                &port_s,
                "--connections",
                &conns_s,
                "--bytes",
                &bytes_s,
                "--hold",
                &hold_s,
            ],
        )?;
        p.wait_for_log(
            "{\"held\":",
            Duration::from_secs(60 + u64::from(connections) / 50),
        )
        .context("echo_client.py --hold: connections held")?;
        let log = p.log();
        let line = log
            .lines()
            .find(|l| l.starts_with("{\"held\":"))
            .unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("held line {line:?}"))?;
        let held = field_u64(&v, "held")?;
        Ok((p, held))
    }

    fn echo_client(
        &self,
        node: Node,
        host: impl Into<IpAddr>,
        port: u16,
        connections: u32,
        bytes: u64,
        all_open: bool,
    ) -> anyhow::Result<EchoResult> {
        let script = self.peer_script("echo_client.py")?;
        let host_s = host.into().to_string();
        let port_s = port.to_string();
        let conns_s = connections.to_string();
        let bytes_s = bytes.to_string();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            script.as_os_str(),
            "--host".as_ref(),
            host_s.as_ref(),
            "--port".as_ref(),
            port_s.as_ref(),
            "--connections".as_ref(),
            conns_s.as_ref(),
            "--bytes".as_ref(),
            bytes_s.as_ref(),
        ];
        if all_open {
            args.push("--all-open".as_ref());
        }
        let mut cmd = self.cmd(node, python(), args);
        let out = run_with_timeout(&mut cmd, self.registry_ref(), Duration::from_secs(180))
            .context("running echo_client.py")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        let Some(line) = line else {
            bail!(
                "echo_client.py printed no report ({}): {}\n{}",
                out.status,
                stdout.trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        };
        echo_report(line, out.status.success())
    }

    /// `iperf3 -c server -p port -t seconds -J` from `node`.
    pub fn run_iperf(
        &self,
        node: Node,
        server: impl Into<IpAddr>,
        port: u16,
        seconds: u32,
    ) -> anyhow::Result<IperfResult> {
        self.run_iperf_opts(node, server, port, seconds, false, 1)
    }

    /// `iperf3 -c server -p port -t seconds -P streams [-R] -J` from `node`; `reverse`
    /// makes the server send.
    pub fn run_iperf_opts(
        &self,
        node: Node,
        server: impl Into<IpAddr>,
        port: u16,
        seconds: u32,
        reverse: bool,
        streams: u32,
    ) -> anyhow::Result<IperfResult> {
        let server: IpAddr = server.into();
        let mut attempts = 0;
        let mut r = retry_while_iperf_busy(|| {
            attempts += 1;
            self.run_iperf_once(node, server, port, seconds, reverse, streams)
        })?;
        r.busy_refusals = attempts - 1;
        Ok(r)
    }

    fn run_iperf_once(
        &self,
        node: Node,
        server: impl Into<IpAddr>,
        port: u16,
        seconds: u32,
        reverse: bool,
        streams: u32,
    ) -> anyhow::Result<IperfResult> {
        let server_s = server.into().to_string();
        let port_s = port.to_string();
        let secs_s = seconds.to_string();
        let streams_s = streams.to_string();
        let mut argv = vec![
            "iperf3", "-c", &server_s, "-p", &port_s, "-t", &secs_s, "-P", &streams_s, "-J",
        ];
        if reverse {
            argv.push("-R");
        }
        let out = self.run_timeout(node, &argv, Duration::from_secs(u64::from(seconds) + 30))?;
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
        if let Some(err) = json["error"].as_str() {
            bail!("iperf3 error: {err}");
        }
        let recv = &json["end"]["sum_received"];
        Ok(IperfResult {
            bits_per_second: field_f64(recv, "bits_per_second")?,
            bytes: field_u64(recv, "bytes")?,
            seconds: field_f64(recv, "seconds")?,
            retransmits: json["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            json,
            busy_refusals: 0,
        })
    }
}

/// Runs `run` (one iperf3 client) again while the server answers that it "is busy
/// running a test", for up to 5 s. Through a proxy the previous run's last bytes (the
/// client's IPERF_DONE and FIN on its control connection) travel on their own
/// connection and may reach the server after the next run's SYN; the server then
/// refuses the new run. That is ordering between connections, not a failure. A server
/// still busy after 5 s is stuck, and the error is returned.
pub fn retry_while_iperf_busy<T>(mut run: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = run();
        match &r {
            Err(e) if format!("{e:#}").contains("server is busy") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250));
            }
            _ => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_is_deterministic_and_seeded() {
        assert_eq!(blob_sha256(0, 1), hex(&Sha256::digest(b"")));
        assert_eq!(blob_sha256(100_000, 7), blob_sha256(100_000, 7));
        assert_ne!(blob_sha256(100_000, 7), blob_sha256(100_000, 8));
        // Truncation: a prefix of the blob is the smaller blob.
        let mut big = Vec::new();
        for_each_blob_chunk(70_000, 3, |c| big.extend_from_slice(c));
        let mut small = Vec::new();
        for_each_blob_chunk(65_537, 3, |c| small.extend_from_slice(c));
        assert_eq!(big.len(), 70_000);
        assert_eq!(&big[..65_537], &small[..]);
    }

    /// Known answers of CPython's `random.Random(seed).getrandbits(32)`.
    #[test]
    fn mt19937_matches_cpython_seeding() {
        assert_eq!(Mt19937::new(0).next_u32(), 3_626_764_237);
        assert_eq!(Mt19937::new((1 << 40) + 5).next_u32(), 2_166_296_868);
        let mut first = Vec::new();
        for_each_blob_chunk(8, 42, |c| first.extend_from_slice(c));
        assert_eq!(hex(&first), "9d79b1a37f31801c");
    }

    /// The Python file server generates the same stream (no root needed).
    #[test]
    fn python_blob_matches_rust() {
        let dir = std::env::temp_dir().join(format!("xdpmesh-blobcheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fileserver.py"), FILESERVER_PY).unwrap();
        let code = "import hashlib, fileserver\n\
                    r = fileserver.blob_rng(5)\n\
                    blob = b''.join(fileserver.blob_chunk(r) for j in range(4))[:200000]\n\
                    print(hashlib.sha256(blob).hexdigest())";
        let out = std::process::Command::new(python())
            .args(["-c", code])
            .current_dir(&dir)
            .output()
            .expect("python3 runs");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            blob_sha256(200_000, 5)
        );
    }
}
