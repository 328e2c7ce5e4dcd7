//! `xdpmesh-dataplane stats --watch`: a live per-worker view, refreshed like `top`.
//!
//! It reads the `stats.json` snapshots the running dataplane writes every 200 ms, so it
//! costs the packet path nothing. Rates are the difference of two snapshots over the
//! dataplane's own uptime between them (not the viewer's clock), so a late read
//! cannot inflate them.

use std::fmt::Write as _;

use serde_json::Value;

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Per second, from `before` to `after` (each a counter), over `ms` milliseconds.
fn rate(after: u64, before: u64, ms: u64) -> f64 {
    if ms == 0 {
        return 0.0;
    }
    after.saturating_sub(before) as f64 * 1000.0 / ms as f64
}

/// Human units: 1.2k, 3.4M, 5.6G.
fn human(x: f64) -> String {
    let (v, unit) = if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    if unit.is_empty() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// Drops of one worker's snapshot: the parser's, the sockets' and handovers lost.
fn drops(w: &Value) -> u64 {
    let parser: u64 = w["rx_dropped"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    parser + n(w, "xsk_rx_dropped") + n(w, "xsk_rx_invalid") + n(w, "handover_dropped")
}

/// The screen for snapshot `now`, with rates since `before` (the previous snapshot, if
/// any): a header line, one row per worker, a totals row, then the XDP verdicts that
/// moved.
pub fn render(instance: &str, before: Option<&Value>, now: &Value) -> String {
    let ms = before.map_or(0, |b| n(now, "uptime_ms").saturating_sub(n(b, "uptime_ms")));
    let tables = &now["tables"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "xdpmesh-dataplane {instance}: up {} s, generation {}{}, rss {} B",
        n(now, "uptime_ms") / 1000,
        n(now, "generation"),
        match tables["control_alive"].as_bool() {
            Some(false) => " (control gone)",
            _ => "",
        },
        human(n(now, "rss_bytes") as f64)
    );
    let _ = writeln!(
        out,
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>8} {:>8} {:>9}",
        "queue",
        "rx pkt/s",
        "rx B/s",
        "tx pkt/s",
        "drops",
        "live",
        "opened/s",
        "tunnels",
        "hand-in",
        "hand-out",
        "ring full"
    );
    let workers = now["workers"].as_array().cloned().unwrap_or_default();
    let prev: Vec<Value> = before
        .and_then(|b| b["workers"].as_array().cloned())
        .unwrap_or_default();
    let mut rows: Vec<(String, &Value, Option<&Value>)> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| (n(w, "queue").to_string(), w, prev.get(i)))
        .collect();
    rows.push(("all".into(), &now["totals"], before.map(|b| &b["totals"])));
    for (name, w, p) in rows {
        let r = |key: &str| rate(n(w, key), p.map_or(n(w, key), |p| n(p, key)), ms);
        let _ = writeln!(
            out,
            "{:>5} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>8} {:>8} {:>9}",
            name,
            human(r("rx_packets")),
            human(r("rx_bytes")),
            human(r("tx_packets")),
            drops(w),
            n(w, "live_connections"),
            human(r("opened_connections")),
            n(w, "hbone_tunnels_live"),
            n(w, "handover_in"),
            n(w, "handover_out"),
            n(w, "xsk_rx_ring_full"),
        );
    }
    if let Some(xdp) = now["xdp"].as_object() {
        let mut moved: Vec<String> = xdp
            .iter()
            .filter_map(|(reason, c)| {
                let pk = c["packets"].as_u64().unwrap_or(0);
                let was = before
                    .map(|b| b["xdp"][reason]["packets"].as_u64().unwrap_or(0))
                    .unwrap_or(pk);
                let per_s = rate(pk, was, ms);
                (pk > 0).then(|| format!("{reason} {} ({}/s)", pk, human(per_s)))
            })
            .collect();
        moved.sort();
        let _ = writeln!(out, "xdp: {}", moved.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot(uptime: u64, rx: u64, bytes: u64, opened: u64, redirect: u64) -> Value {
        let w = json!({"queue": 0, "rx_packets": rx, "rx_bytes": bytes, "tx_packets": rx / 2,
            "live_connections": 3, "opened_connections": opened, "hbone_tunnels_live": 1,
            "handover_in": 0, "handover_out": 0, "xsk_rx_ring_full": 2, "xsk_rx_dropped": 1,
            "rx_dropped": {"bad_tcp_checksum": 4}});
        json!({"uptime_ms": uptime, "generation": 7, "rss_bytes": 30_000_000,
            "tables": {"control_alive": true}, "workers": [w.clone()], "totals": w,
            "xdp": {"redirect_mesh": {"packets": redirect, "bytes": 0}, "pass_arp": {"packets": 0, "bytes": 0}}})
    }

    #[test]
    fn rates_come_from_the_dataplanes_uptime() {
        let a = snapshot(10_000, 1_000, 1_500_000, 10, 900);
        let b = snapshot(12_000, 21_000, 31_500_000, 30, 20_900);
        let text = render("gw-a", Some(&a), &b);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "xdpmesh-dataplane gw-a: up 12 s, generation 7, rss 30.0M B"
        );
        assert!(lines[1].trim_start().starts_with("queue"), "{text}");
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        // 20,000 packets and 30 MB in 2 s; 5 drops (4 parser, 1 socket); 10 s/2 s opened.
        assert_eq!(
            row,
            ["0", "10.0k", "15.0M", "5.0k", "5", "3", "10", "1", "0", "0", "2"]
        );
        assert!(lines[3].starts_with("  all"), "{text}");
        assert_eq!(lines[4], "xdp: redirect_mesh 20900 (10.0k/s)");
        // The first screen has no rates yet.
        let first = render("gw-a", None, &a);
        assert_eq!(
            first
                .lines()
                .nth(2)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["0", "0", "0", "0", "5", "3", "0", "1", "0", "0", "2"]
        );
    }
}
