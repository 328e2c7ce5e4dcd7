//! Facts read from the host at start-up and on the slow path: interface index, MAC,
//! IPv4 and IPv6 addresses and RX queue count (through `ip -json`, so the dataplane
//! does not carry its own netlink client), and the kernel's ARP table (`/proc/net/arp`
//! of the current network namespace) as a neighbour source. Nothing here runs per
//! packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use serde_json::Value;

use crate::wire::Mac;
use crate::worker::PortSpec;

/// Errors describing an interface.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// `ip` could not run.
    #[error("running `ip` failed: {0} (install iproute2)")]
    Ip(std::io::Error),
    /// The interface does not exist.
    #[error("interface {0} not found in this network namespace: check `ip link` (and that the dataplane runs in the gateway's namespace)")]
    NoSuchInterface(String),
    /// Unexpected output.
    #[error("could not read interface {0}: {1}")]
    Parse(String, String),
}

fn ip_json(args: &[&str], ifname: &str) -> Result<Value, HostError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(HostError::Ip)?;
    if !out.status.success() {
        return Err(HostError::NoSuchInterface(ifname.into()));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| HostError::Parse(ifname.into(), e.to_string()))?;
    v.get(0)
        .cloned()
        .ok_or_else(|| HostError::NoSuchInterface(ifname.into()))
}

/// `ip -json <family> addr show dev <ifname>`: the interface's entry, or `null` when
/// it has no address of that family (`ip` then prints `[]`: an IPv4-only or IPv6-only
/// interface is fine). Called after `link show`, which reports a missing interface.
fn addresses(family: &str, ifname: &str) -> Result<Value, HostError> {
    match ip_json(&["-json", family, "addr", "show", "dev", ifname], ifname) {
        Err(HostError::NoSuchInterface(_)) => Ok(Value::Null),
        other => other,
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Describes an interface: index, MAC, first IPv4 address, IPv6 address
/// ([`pick_ipv6`]), RX queue count.
pub fn describe(ifname: &str) -> Result<(PortSpec, u32), HostError> {
    let link = ip_json(
        &["-json", "-details", "link", "show", "dev", ifname],
        ifname,
    )?;
    let ifindex = link["ifindex"]
        .as_u64()
        .ok_or_else(|| HostError::Parse(ifname.into(), "no ifindex".into()))?
        as u32;
    let mac = link["address"]
        .as_str()
        .and_then(parse_mac)
        .ok_or_else(|| {
            HostError::Parse(
                ifname.into(),
                "no Ethernet address (AF_XDP gateways need an Ethernet interface)".into(),
            )
        })?;
    // `num_rx_queues` is what the device was allocated (a veth made without
    // `numrxqueues` gets one per CPU), not what it uses: binding a socket to an unused
    // queue fails. The channels in use come from `ethtool -l`; `num_rx_queues` only for
    // a driver that reports none (it then has no separate current count).
    let allocated = link["num_rx_queues"].as_u64().unwrap_or(1).max(1) as u32;
    let queues = current_rx_queues(ifname)
        .unwrap_or(allocated)
        .min(allocated);
    let ipv4 = addresses("-4", ifname)?["addr_info"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find_map(|i| i["local"].as_str()?.parse::<Ipv4Addr>().ok())
        });
    let ipv6 = pick_ipv6(&addresses("-6", ifname)?);
    let mtu = link["mtu"]
        .as_u64()
        .map_or(crate::stack::DEFAULT_IP_MTU, |m| m as usize);
    Ok((
        PortSpec {
            name: ifname.into(),
            ifindex,
            mac,
            ipv4,
            ipv6,
            mtu,
            tcp_checksum: Default::default(),
        },
        queues,
    ))
}

/// The IPv6 address Neighbor Solicitations go out from, from `ip -json -6 addr show`
/// of one interface: its link-local address, else its first other one. Addresses that
/// failed duplicate address detection are never used.
pub fn pick_ipv6(addr: &Value) -> Option<Ipv6Addr> {
    let infos = addr["addr_info"].as_array()?;
    let usable = || {
        infos.iter().filter_map(|i| {
            if i["dadfailed"].as_bool() == Some(true) {
                return None;
            }
            let ip = i["local"].as_str()?.parse::<Ipv6Addr>().ok()?;
            Some((ip, i["scope"].as_str() == Some("link")))
        })
    };
    usable()
        .find(|&(_, link)| link)
        .or_else(|| usable().next())
        .map(|(ip, _)| ip)
}

/// The RX queues `ifname` uses now (`ethtool -l`), if the driver reports them.
fn current_rx_queues(ifname: &str) -> Option<u32> {
    let out = std::process::Command::new("ethtool")
        .args(["-l", ifname])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_ethtool_channels(&String::from_utf8_lossy(&out.stdout))
}

/// The RX queues in use from `ethtool -l` output: the "Current hardware settings"
/// section's dedicated RX channels plus its combined channels (each has an RX queue).
pub fn parse_ethtool_channels(text: &str) -> Option<u32> {
    let current = text.split("Current hardware settings:").nth(1)?;
    let field = |name: &str| {
        current
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    let (rx, combined) = (field("RX:"), field("Combined:"));
    if rx.is_none() && combined.is_none() {
        return None;
    }
    Some(rx.unwrap_or(0) + combined.unwrap_or(0)).filter(|&n| n > 0)
}

/// Looks `ip` up in the kernel's ARP table for interface `ifname`.
pub fn kernel_arp(ifname: &str, ip: IpAddr) -> Option<Mac> {
    let IpAddr::V4(v4) = ip else { return None };
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_proc_arp(&table, ifname, v4)
}

/// Parses `/proc/net/arp` text. Only complete entries (flag 0x2) count.
pub fn parse_proc_arp(table: &str, ifname: &str, ip: Ipv4Addr) -> Option<Mac> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || f[5] != ifname || f[0].parse::<Ipv4Addr>().ok()? != ip {
            return None;
        }
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
        if flags & 0x2 == 0 {
            return None;
        }
        parse_mac(f[3])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethtool_channels_count_the_queues_in_use() {
        // A veth made without `numrxqueues` on a 2-CPU machine: 2 allocated, 1 used.
        let veth = "Channel parameters for pod0:\nPre-set maximums:\nRX:\t\t2\nTX:\t\t2\n\
                    Other:\t\tn/a\nCombined:\tn/a\nCurrent hardware settings:\nRX:\t\t1\n\
                    TX:\t\t1\nOther:\t\tn/a\nCombined:\tn/a\n";
        assert_eq!(parse_ethtool_channels(veth), Some(1));
        // A NIC with combined channels (and no dedicated RX ones).
        let nic = "Channel parameters for eth0:\nPre-set maximums:\nRX:\t\tn/a\nTX:\t\tn/a\n\
                   Other:\t\t1\nCombined:\t63\nCurrent hardware settings:\nRX:\t\tn/a\n\
                   TX:\t\tn/a\nOther:\t\t1\nCombined:\t8\n";
        assert_eq!(parse_ethtool_channels(nic), Some(8));
        assert_eq!(
            parse_ethtool_channels("netlink error: Operation not supported"),
            None
        );
        let none = "Current hardware settings:\nRX:\t\tn/a\nCombined:\tn/a\n";
        assert_eq!(parse_ethtool_channels(none), None);
    }

    #[test]
    fn the_solicitation_source_is_the_link_local_address() {
        // `ip -json -6 addr show dev pod0` (iproute2 6.x), trimmed to the fields read.
        let both: Value = serde_json::from_str(
            r#"{"ifname":"pod0","addr_info":[
                {"family":"inet6","local":"2001:2:0:1::1","prefixlen":64,"scope":"global","nodad":true},
                {"family":"inet6","local":"fe80::a0b1:c2ff:fed3:e4f5","prefixlen":64,"scope":"link"}]}"#,
        )
        .unwrap();
        assert_eq!(
            pick_ipv6(&both),
            Some("fe80::a0b1:c2ff:fed3:e4f5".parse().unwrap())
        );
        let global: Value = serde_json::from_str(
            r#"{"addr_info":[{"local":"fe80::1","scope":"link","dadfailed":true},
                             {"local":"2001:2::1","scope":"global"}]}"#,
        )
        .unwrap();
        assert_eq!(pick_ipv6(&global), Some("2001:2::1".parse().unwrap()));
        let none: Value = serde_json::from_str(r#"{"addr_info":[]}"#).unwrap();
        assert_eq!(pick_ipv6(&none), None);
    }

    #[test]
    fn proc_arp_parsing() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 198.18.0.2       0x1         0x2         aa:bb:cc:00:11:22     *        up0\n\
                 198.18.0.3       0x1         0x0         00:00:00:00:00:00     *        up0\n\
                 198.18.1.2       0x1         0x2         02:00:00:00:00:05     *        pod0\n";
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(
            parse_proc_arp(t, "up0", ip("198.18.0.2")),
            Some([0xaa, 0xbb, 0xcc, 0, 0x11, 0x22])
        );
        assert_eq!(
            parse_proc_arp(t, "up0", ip("198.18.0.3")),
            None,
            "incomplete entry"
        );
        assert_eq!(
            parse_proc_arp(t, "up0", ip("198.18.1.2")),
            None,
            "other interface"
        );
        assert_eq!(parse_mac("02:00:00:00:00:0g"), None);
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:01:02"), None);
    }
}
