//! The result table of `xdpmesh-demo`.

use std::fmt::Write as _;

/// One measured transfer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ReportRow {
    pub name: String,
    pub bytes: u64,
    pub seconds: f64,
    /// Megabytes (10^6 bytes) per second.
    pub throughput_mb_s: f64,
    pub connections: u64,
    /// `Some(true)` when the bytes were verified (hash / byte-exact echo), `Some(false)`
    /// when verification failed, `None` when not applicable (iperf3).
    pub checksum_ok: Option<bool>,
}

impl ReportRow {
    pub fn new(
        name: &str,
        bytes: u64,
        seconds: f64,
        connections: u64,
        checksum_ok: Option<bool>,
    ) -> Self {
        let throughput_mb_s = if seconds > 0.0 {
            bytes as f64 / seconds / 1e6
        } else {
            0.0
        };
        ReportRow {
            name: name.to_string(),
            bytes,
            seconds,
            throughput_mb_s,
            connections,
            checksum_ok,
        }
    }
}

/// Rows of one demo run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DemoReport {
    pub rows: Vec<ReportRow>,
}

impl DemoReport {
    pub fn push(&mut self, row: ReportRow) {
        self.rows.push(row);
    }

    /// No row has a failed checksum.
    pub fn checksums_ok(&self) -> bool {
        self.rows.iter().all(|r| r.checksum_ok != Some(false))
    }

    /// The table as text.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<10} {:>14} {:>9} {:>10} {:>11} {:>11}",
            "test", "bytes", "seconds", "MB/s", "connections", "checksum OK"
        );
        for r in &self.rows {
            let ok = match r.checksum_ok {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let _ = writeln!(
                s,
                "{:<10} {:>14} {:>9.3} {:>10.1} {:>11} {:>11}",
                r.name, r.bytes, r.seconds, r.throughput_mb_s, r.connections, ok
            );
        }
        s
    }

    /// Prints [`Self::table`] to stdout.
    pub fn print_table(&self) {
        print!("{}", self.table());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_rows_and_flags_failures() {
        let mut r = DemoReport::default();
        r.push(ReportRow::new("download", 2_000_000, 2.0, 1, Some(true)));
        r.push(ReportRow::new("iperf3", 0, 0.0, 1, None));
        assert!(r.checksums_ok());
        assert_eq!(r.rows[0].throughput_mb_s, 1.0);
        assert_eq!(r.rows[1].throughput_mb_s, 0.0);
        let t = r.table();
        assert_eq!(t.lines().count(), 3);
        assert!(t.lines().nth(1).unwrap().starts_with("download"));
        assert!(t.lines().nth(1).unwrap().ends_with("yes"));
        assert!(t.lines().nth(2).unwrap().ends_with('-'));
        r.push(ReportRow::new("upload", 1, 1.0, 1, Some(false)));
        assert!(!r.checksums_ok());
        assert!(r.table().lines().nth(3).unwrap().ends_with("NO"));
    }
}
