//! What carries traffic between gateway A and gateway B.
//!
//! - [`GatewayKind::Kernel`]: the gateways' kernels route (the reference path).
//! - [`GatewayKind::Xdpmesh`]: `xdpmesh-control run` and `xdpmesh-dataplane run` in each
//!   gateway namespace (CLI and readiness lines per `docs/INTERFACES.md`).

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

use crate::process::ProcHandle;
use crate::topology::{Node, Topology};

/// How long [`Topology::start_gateways`] waits for the readiness lines.
pub const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Line the dataplane prints on stderr once XDP is attached and its workers run.
pub const DATAPLANE_READY: &str = "xdpmesh-dataplane ready";
/// Prefix of the line the control prints once it published a table.
pub const CONTROL_READY: &str = "xdpmesh-control published generation";

/// Default pin root, shm and run dir of an instance (per `docs/INTERFACES.md`).
pub fn pin_dir(instance: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/xdpmesh").join(instance)
}
pub fn shm_path(instance: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/xdpmesh-{instance}"))
}
pub fn run_dir(instance: &str) -> PathBuf {
    PathBuf::from("/run/xdpmesh").join(instance)
}

/// Which gateway implementation to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayKind {
    /// Plain kernel forwarding (nothing is started).
    Kernel,
    /// xdpmesh control + dataplane on each gateway.
    Xdpmesh {
        /// `--queues` of the dataplane (use [`crate::TopologyOpts::rx_queues`]); 0
        /// leaves it out (the dataplane then uses every RX queue in use).
        queues: u32,
        /// `--xdp-mode`: `auto`, `native` or `generic`.
        xdp_mode: String,
    },
}

impl GatewayKind {
    /// xdpmesh with `queues` queues and `--xdp-mode auto`.
    pub fn xdpmesh(queues: u32) -> Self {
        GatewayKind::Xdpmesh {
            queues,
            xdp_mode: "auto".into(),
        }
    }
}

/// The gateway processes a topology started, and the instances whose state it removes.
#[derive(Debug, Default)]
pub(crate) struct GatewayProcs {
    pub(crate) kind: Option<GatewayKind>,
    /// (node, control, dataplane)
    procs: Vec<(Node, ProcHandle, ProcHandle)>,
    /// (node, control argv, dataplane argv) as started, for restarts and second starts.
    argv: Vec<(Node, Vec<String>, Vec<String>)>,
    instances: Vec<String>,
    /// Extra arguments for every control and dataplane started
    /// ([`Topology::set_gateway_args`]).
    extra_args: (Vec<String>, Vec<String>),
    /// Extra environment of every dataplane started ([`Topology::set_dataplane_env`]).
    dataplane_env: Vec<(String, String)>,
}

impl GatewayProcs {
    pub(crate) fn kill_all(&mut self) {
        for (_, control, dataplane) in &mut self.procs {
            let _ = dataplane.kill();
            let _ = control.kill();
        }
        self.procs.clear();
    }

    /// Lets the gateway processes outlive the topology (`Topology::keep`).
    pub(crate) fn leak(&mut self) {
        for p in self.procs.drain(..) {
            std::mem::forget(p);
        }
    }

    /// Removes pins, shared memory and run dirs of every instance started.
    pub(crate) fn remove_state(&self) {
        for instance in &self.instances {
            remove_instance_state(instance);
        }
    }
}

fn remove_instance_state(instance: &str) {
    let _ = std::fs::remove_dir_all(pin_dir(instance));
    let _ = std::fs::remove_file(shm_path(instance));
    let _ = std::fs::remove_dir_all(run_dir(instance));
}

/// Path of an xdpmesh binary, in this order:
/// 1. `$XDPMESH_BIN_DIR/<name>` when that variable is set (returned even if missing);
/// 2. the cargo target dir of the running executable: `target/<profile>/<name>`, where
///    an integration test runs from `target/<profile>/deps/` (so its parent's parent) and
///    a binary such as `xdpmesh-demo` from `target/<profile>/`;
/// 3. the first `<name>` on `$PATH`;
/// 4. otherwise `<name>` itself (spawning it will then fail with "not found").
///
/// Cargo does not build other crates' binaries for this crate's tests: run
/// `cargo build -p xdpmesh-control -p xdpmesh-dataplane` (same profile) first.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("XDPMESH_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let dir = if dir.file_name().is_some_and(|n| n == "deps") {
                dir.parent().unwrap_or(dir)
            } else {
                dir
            };
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(name)
}

impl Topology {
    /// Starts the gateways. For [`GatewayKind::Kernel`] nothing runs (the gateways route).
    /// For [`GatewayKind::Xdpmesh`] each gateway namespace gets
    /// `xdpmesh-control run --config <config> --node node-a|node-b --instance <ns>` and
    /// `xdpmesh-dataplane run --instance <ns> --iface pod0 --iface up0 --queues N
    /// --xdp-mode M`; this returns once both printed their readiness lines
    /// ([`CONTROL_READY`], [`DATAPLANE_READY`]), and fails with the logs' tails when one
    /// exits or [`GATEWAY_READY_TIMEOUT`] passes.
    pub fn start_gateways(&mut self, kind: GatewayKind, config: &Path) -> anyhow::Result<()> {
        self.start_gateways_with(kind, [config, config])
    }

    /// [`Topology::start_gateways`] with a config file of its own for each gateway (A,
    /// B): a mesh whose gateways disagree, as during a rollout.
    pub fn start_gateways_with(
        &mut self,
        kind: GatewayKind,
        configs: [&Path; 2],
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.gateways.kind.is_none(),
            "gateways already started on topology {}",
            self.prefix()
        );
        let (queues, xdp_mode) = match &kind {
            GatewayKind::Kernel => {
                self.gateways.kind = Some(kind);
                return Ok(());
            }
            GatewayKind::Xdpmesh { queues, xdp_mode } => (queues.to_string(), xdp_mode.clone()),
        };
        let control_bin = bin("xdpmesh-control");
        let dataplane_bin = bin("xdpmesh-dataplane");
        for b in [&control_bin, &dataplane_bin] {
            anyhow::ensure!(
                b.is_file(),
                "{} not found (looked in $XDPMESH_BIN_DIR, else next to this executable's \
                 target/<profile>/ dir, else $PATH): build it with \
                 `cargo build -p xdpmesh-control -p xdpmesh-dataplane` (same profile) \
                 or set XDPMESH_BIN_DIR",
                b.display()
            );
        }
        let mut paths = Vec::new();
        for config in configs {
            let config = config
                .canonicalize()
                .with_context(|| format!("config {}", config.display()))?;
            paths.push(config.to_string_lossy().into_owned());
        }
        self.gateways.kind = Some(kind);
        self.gateways.argv.clear();
        for ((node, mesh_node), config) in [(Node::GatewayA, "node-a"), (Node::GatewayB, "node-b")]
            .into_iter()
            .zip(paths)
        {
            let instance = self.instance(node);
            // Stale state of an earlier run with the same prefix would confuse both.
            remove_instance_state(&instance);
            self.gateways.instances.push(instance.clone());
            let control_bin = control_bin.to_string_lossy();
            let ca_dir = self.ca_dir();
            let ca_dir = ca_dir.to_string_lossy();
            let control_argv = [
                &*control_bin,
                "run",
                "--config",
                &config,
                "--node",
                mesh_node,
                "--instance",
                &instance,
                // One CA per topology, shared by both gateways (HBONE peers must
                // chain to the same root); tests issue peer certificates from it.
                "--ca-dir",
                &ca_dir,
            ];
            let mut control_argv = control_argv.to_vec();
            control_argv.extend(self.gateways.extra_args.0.iter().map(String::as_str));
            let control = self.spawn(node, &control_argv)?;
            let dataplane_bin = dataplane_bin.to_string_lossy();
            let mut args = vec![
                &*dataplane_bin,
                "run",
                "--instance",
                &instance,
                "--iface",
                "pod0",
                "--iface",
                "up0",
            ];
            if queues != "0" {
                args.extend(["--queues", &queues]);
            }
            args.extend(["--xdp-mode", &xdp_mode]);
            args.extend(self.gateways.extra_args.1.iter().map(String::as_str));
            let env = self.gateways.dataplane_env.clone();
            let dataplane = match self.spawn_env(node, &args, &env) {
                Ok(d) => d,
                Err(e) => {
                    drop(control);
                    return Err(e);
                }
            };
            self.gateways.procs.push((node, control, dataplane));
            let owned = |argv: &[&str]| argv.iter().map(|a| a.to_string()).collect();
            self.gateways
                .argv
                .push((node, owned(&control_argv), owned(&args)));
        }
        let deadline = Instant::now() + GATEWAY_READY_TIMEOUT;
        let mut failures = Vec::new();
        for (node, control, dataplane) in &mut self.gateways.procs {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = control.wait_for_log(CONTROL_READY, left) {
                failures.push(format!("{node:?} control: {e:#}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = dataplane.wait_for_log(DATAPLANE_READY, left) {
                failures.push(format!("{node:?} dataplane: {e:#}"));
            }
        }
        if !failures.is_empty() {
            // Show both logs of every gateway: one side's failure often explains the other.
            let mut msg = failures.join("\n\n");
            for (node, control, dataplane) in &self.gateways.procs {
                msg.push_str(&format!(
                    "\n\n--- {node:?} control log tail ---\n{}\n--- {node:?} dataplane log tail ---\n{}",
                    control.log_tail(20),
                    dataplane.log_tail(20)
                ));
            }
            self.gateways.kill_all();
            bail!("xdpmesh gateways did not become ready:\n{msg}");
        }
        Ok(())
    }

    /// Extra arguments for the control and dataplane processes the next
    /// [`Topology::start_gateways`] starts (e.g. `--cert-ttl 10s`, `--hbone-idle-secs 2`).
    pub fn set_gateway_args(&mut self, control: &[&str], dataplane: &[&str]) {
        let own = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
        self.gateways.extra_args = (own(control), own(dataplane));
    }

    /// Extra environment variables of the dataplanes the next
    /// [`Topology::start_gateways`] starts (e.g. the allocator's `_RJEM_MALLOC_CONF`).
    pub fn set_dataplane_env(&mut self, env: &[(&str, &str)]) {
        self.gateways.dataplane_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// The mesh CA directory of this topology (created by the first control process).
    pub fn ca_dir(&self) -> PathBuf {
        self.tmp_dir().join("ca")
    }

    /// The gateway kind started, if any.
    pub fn gateway_kind(&self) -> Option<&GatewayKind> {
        self.gateways.kind.as_ref()
    }

    /// Sends `signal` to every gateway process (dataplanes first), waits up to 10 s for
    /// each to exit, SIGKILLs stragglers. Returns (description, exit status, exited within
    /// the grace period) per process.
    pub fn stop_gateways(
        &mut self,
        signal: Signal,
    ) -> anyhow::Result<Vec<(String, ExitStatus, bool)>> {
        let mut out = Vec::new();
        let procs = std::mem::take(&mut self.gateways.procs);
        // Stopped gateways can be started again (restart tests).
        self.gateways.kind = None;
        for (_, mut control, mut dataplane) in procs {
            for p in [&mut dataplane, &mut control] {
                let (status, graceful) = p.stop(signal, Duration::from_secs(10))?;
                out.push((p.name().to_string(), status, graceful));
            }
        }
        Ok(out)
    }

    /// The pids of a gateway's running (control, dataplane): the pids that their
    /// instance lock files name (`nsenter` execs the program, so it is the same process).
    pub fn gateway_pids(&self, node: Node) -> anyhow::Result<(u32, u32)> {
        let (_, control, dataplane) = self
            .gateways
            .procs
            .iter()
            .find(|(n, _, _)| *n == node)
            .with_context(|| format!("no gateway processes on {node:?}"))?;
        Ok((control.pid(), dataplane.pid()))
    }

    /// The command lines [`Topology::start_gateways`] started a gateway's (control,
    /// dataplane) with, program first: run them in the gateway's namespace to start a
    /// second process of the same instance.
    pub fn gateway_argv(&self, node: Node) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let (_, control, dataplane) = self
            .gateways
            .argv
            .iter()
            .find(|(n, _, _)| *n == node)
            .with_context(|| format!("no gateway started on {node:?}"))?;
        Ok((control.clone(), dataplane.clone()))
    }

    /// Stops a gateway's control process with `signal` (SIGKILL: it cleans nothing up),
    /// starts it again with the same command line and waits for its [`CONTROL_READY`]
    /// line; the dataplane keeps running. Returns the new control's pid. Fails with the
    /// new log's tail when it exits or [`GATEWAY_READY_TIMEOUT`] passes.
    pub fn restart_gateway_control(&mut self, node: Node, signal: Signal) -> anyhow::Result<u32> {
        self.stop_gateway_control(node, signal)?;
        self.start_gateway_control(node)
    }

    /// Stops a gateway's control process with `signal` and reaps it; the dataplane keeps
    /// running on the tables in force.
    pub fn stop_gateway_control(&mut self, node: Node, signal: Signal) -> anyhow::Result<()> {
        let i = self.gateway_index(node)?;
        self.gateways.procs[i]
            .1
            .stop(signal, Duration::from_secs(10))?;
        Ok(())
    }

    /// Starts a gateway's control process again with its first command line (after
    /// [`Topology::stop_gateway_control`]) and waits for its [`CONTROL_READY`] line.
    /// Returns its pid.
    pub fn start_gateway_control(&mut self, node: Node) -> anyhow::Result<u32> {
        let (argv, _) = self.gateway_argv(node)?;
        let i = self.gateway_index(node)?;
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut control = self.spawn(node, &argv)?;
        control.wait_for_log(CONTROL_READY, GATEWAY_READY_TIMEOUT)?;
        let pid = control.pid();
        // The old handle was reaped by `stop`: dropping it kills nothing.
        self.gateways.procs[i].1 = control;
        Ok(pid)
    }

    /// [`Topology::start_gateway_control`] with another command line (a CA change, say):
    /// `edit` gets the first one and returns the one to run.
    pub fn start_gateway_control_with(
        &mut self,
        node: Node,
        edit: impl FnOnce(Vec<String>) -> Vec<String>,
    ) -> anyhow::Result<u32> {
        let (argv, _) = self.gateway_argv(node)?;
        let argv = edit(argv);
        let i = self.gateway_index(node)?;
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut control = self.spawn(node, &args)?;
        control.wait_for_log(CONTROL_READY, GATEWAY_READY_TIMEOUT)?;
        let pid = control.pid();
        self.gateways.procs[i].1 = control;
        Ok(pid)
    }

    fn gateway_index(&self, node: Node) -> anyhow::Result<usize> {
        self.gateways
            .procs
            .iter()
            .position(|(n, _, _)| *n == node)
            .with_context(|| format!("no gateway processes on {node:?}"))
    }

    /// The text a gateway's control process has logged so far (empty without one).
    pub fn control_log(&self, node: Node) -> String {
        self.gateway_log(node, |(_, c, _)| c)
    }

    /// The text a gateway's dataplane has logged so far (empty without one).
    pub fn dataplane_log(&self, node: Node) -> String {
        self.gateway_log(node, |(_, _, d)| d)
    }

    fn gateway_log(
        &self,
        node: Node,
        pick: impl FnOnce((Node, PathBuf, PathBuf)) -> PathBuf,
    ) -> String {
        self.gateway_logs()
            .into_iter()
            .find(|(n, _, _)| *n == node)
            .map(pick)
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// Log file paths of the gateway processes: (node, control log, dataplane log).
    pub fn gateway_logs(&self) -> Vec<(Node, PathBuf, PathBuf)> {
        self.gateways
            .procs
            .iter()
            .map(|(n, c, d)| (*n, c.log_path().to_path_buf(), d.log_path().to_path_buf()))
            .collect()
    }

    /// The gateway processes (control, dataplane) that are no longer running, each with
    /// the tail of its log. A dataplane that exits detaches XDP and the kernel takes
    /// the traffic back, so traffic alone cannot tell: harnesses check this.
    pub fn dead_gateway_processes(&self) -> Vec<String> {
        let mut dead = Vec::new();
        for (node, control, dataplane) in &self.gateways.procs {
            for p in [control, dataplane] {
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid()));
                // Field 3 of /proc/PID/stat is the state; Z (zombie) means it exited
                // and was not reaped yet. The command name (field 2) may hold spaces.
                let state = stat
                    .as_deref()
                    .ok()
                    .and_then(|s| s.rsplit_once(')'))
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .map(str::to_owned);
                if matches!(state.as_deref(), None | Some("Z") | Some("X")) {
                    dead.push(format!(
                        "{node:?} {} (pid {}) is not running; log tail:\n{}",
                        p.name(),
                        p.pid(),
                        p.log_tail(30)
                    ));
                }
            }
        }
        dead
    }

    /// Waits until the gateway's counter at `path` reaches `want` (stats are published a
    /// few times per second, so a snapshot just after the traffic may predate it), then
    /// returns the snapshot. Fails with the whole snapshot after `timeout`, also when
    /// the counter passes `want`.
    pub fn wait_stat(
        &self,
        node: Node,
        path: &[&str],
        want: u64,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let s = self.gateway_stats(node)?;
            let got = stat(&s, path);
            if got == want {
                return Ok(s);
            }
            anyhow::ensure!(
                got < want && std::time::Instant::now() < deadline,
                "{node:?}: {path:?} = {got}, want {want}: {s:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls a gateway's stats until `check` accepts a snapshot written at least 500 ms
    /// after this call (stats.json is rewritten every 200 ms from counters the workers
    /// publish every 100 ms, so an older snapshot may predate what the caller just did),
    /// and returns that snapshot. `check` says what is still missing (`Err(why)`).
    /// After `timeout` fails with the last `why` and the last snapshot seen.
    ///
    /// Use this instead of a fixed sleep before exact counter assertions.
    pub fn wait_for_stats(
        &self,
        node: Node,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> Result<(), String>,
    ) -> anyhow::Result<serde_json::Value> {
        let start = stat(&self.gateway_stats(node)?, &["uptime_ms"]);
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.gateway_stats(node)?;
            let fresh = stat(&s, &["uptime_ms"]) >= start + 500;
            let verdict = if fresh {
                check(&s)
            } else {
                Err("no snapshot 500 ms newer than the call yet".into())
            };
            match verdict {
                Ok(()) => return Ok(s),
                Err(why) if Instant::now() >= deadline => {
                    bail!("{node:?}: stats did not settle within {timeout:?}: {why}\nlast snapshot: {s:#}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Sends SIGHUP to a gateway's control process (it rereads its config file) and
    /// waits until the dataplane reports a table generation newer than before, i.e.
    /// every worker runs on the reloaded tables. Fails with the control log's tail
    /// after 10 s (a rejected file keeps the old generation).
    pub fn reload_gateway_config(&self, node: Node) -> anyhow::Result<u64> {
        let (_, control, _) = self
            .gateways
            .procs
            .iter()
            .find(|(n, _, _)| *n == node)
            .with_context(|| format!("no gateway processes on {node:?}"))?;
        let before = stat(&self.gateway_stats(node)?, &["generation"]);
        control.signal(Signal::SIGHUP)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = stat(&self.gateway_stats(node)?, &["generation"]);
            if now > before {
                return Ok(now);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{node:?}: table generation still {before} 10 s after SIGHUP; control log:\n{}",
                control.log_tail(10)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Parsed `/run/xdpmesh/<instance>/stats.json` of a gateway.
    pub fn gateway_stats(&self, node: Node) -> anyhow::Result<serde_json::Value> {
        anyhow::ensure!(
            matches!(node, Node::GatewayA | Node::GatewayB),
            "{node:?} is not a gateway"
        );
        let path = run_dir(&self.instance(node)).join("stats.json");
        // The file is rewritten every 200 ms; retry in case a writer is not atomic.
        let mut attempt = 0;
        loop {
            let parsed = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))
                .and_then(|text| {
                    serde_json::from_str(&text)
                        .with_context(|| format!("parsing {}", path.display()))
                });
            attempt += 1;
            if parsed.is_ok() || attempt >= 5 {
                return parsed;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The counter at `path` in a gateway's stats JSON; panics with the whole JSON when it is
/// missing (a renamed counter must fail the test that reads it, loudly).
pub fn stat(stats: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = stats;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no counter {path:?} in {stats:#}"))
}

impl Topology {
    /// Asserts that connections that ended cleanly left nothing behind: once the freed
    /// keys' 2 s linger is over (waits until 5 s after `idle_at`, the moment both
    /// gateways were idle), no peer may still be retransmitting a FIN, which a gateway
    /// would answer with a reset (`no_flow_resets`). A leg freed in TIME-WAIT once
    /// dropped its delayed ACK of the peer's FIN, and the peer was reset about 3 s later.
    pub fn assert_no_stray_resets(&self, idle_at: std::time::Instant) {
        std::thread::sleep(Duration::from_secs(5).saturating_sub(idle_at.elapsed()));
        for node in [Node::GatewayA, Node::GatewayB] {
            let s = self.gateway_stats(node).expect("gateway stats");
            assert_eq!(
                stat(&s, &["totals", "no_flow_resets"]),
                0,
                "{node:?}: {s:#}"
            );
        }
    }

    /// Waits until both gateways report no live connection in a snapshot taken at least
    /// 500 ms after the call (stats are rewritten every 200 ms and workers publish every
    /// 100 ms, so an older snapshot may predate the traffic just sent); returns the
    /// snapshots of gateway A and B. Panics with both snapshots after `timeout`.
    pub fn wait_gateways_idle(&self, timeout: Duration) -> [serde_json::Value; 2] {
        let read = |n| self.gateway_stats(n).expect("gateway stats");
        let uptime = |s: &serde_json::Value| stat(s, &["uptime_ms"]);
        let start = [uptime(&read(Node::GatewayA)), uptime(&read(Node::GatewayB))];
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (a, b) = (read(Node::GatewayA), read(Node::GatewayB));
            let fresh = uptime(&a) >= start[0] + 500 && uptime(&b) >= start[1] + 500;
            let live = stat(&a, &["totals", "live_connections"])
                + stat(&b, &["totals", "live_connections"]);
            if fresh && live == 0 {
                return [a, b];
            }
            assert!(
                std::time::Instant::now() < deadline,
                "connections still live after {timeout:?}:\nA: {a:#}\nB: {b:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
