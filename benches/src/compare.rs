//! `xdpmesh-bench compare BASELINE.json NEW.json [--threshold 0.10]`.
//!
//! Absolute numbers drift on a shared 2-core machine, so a figure is compared through
//! its ratio to the `kernel` gateway measured in the same run ([`Basis::Ratio`]); only
//! figures the kernel has no value for (memory per connection, gateway CPU, "side stream
//! vs 10 open") are compared as absolute medians. A regression is a figure that got worse
//! by more than `threshold` (relative): throughput or rate lower, latency, CPU or memory
//! higher. Gateways and figures present in only one file are listed, not failed.
//!
//! Results taken at different link MTUs are not compared at all: the MTU moves the
//! kernel's figures and every gateway's differently, so their ratios are not the same
//! quantity.

use crate::report::{figure_meta, Basis, BenchReport, Better, KERNEL};

/// Result of a comparison.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    /// One line per regression, naming gateway and figure.
    pub regressions: Vec<String>,
    /// Improvements beyond the threshold (informational).
    pub improvements: Vec<String>,
    /// Figures compared.
    pub checked: usize,
    /// Gateways/figures that could not be compared.
    pub notes: Vec<String>,
}

impl Comparison {
    /// Human-readable verdict.
    pub fn render(&self, threshold: f64) -> String {
        let mut s = String::new();
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        for i in &self.improvements {
            s.push_str(&format!("improved: {i}\n"));
        }
        for r in &self.regressions {
            s.push_str(&format!("REGRESSION: {r}\n"));
        }
        if self.regressions.is_empty() {
            s.push_str(&format!(
                "compare: OK, {} figures within {:.0}% of the baseline\n",
                self.checked,
                threshold * 100.0
            ));
        } else {
            s.push_str(&format!(
                "compare: {} regression(s) beyond {:.0}% ({} figures checked)\n",
                self.regressions.len(),
                threshold * 100.0,
                self.checked
            ));
        }
        s
    }
}

/// Compares `new` against `base`; an error when they were taken at different MTUs.
pub fn compare(
    base: &BenchReport,
    new: &BenchReport,
    threshold: f64,
) -> anyhow::Result<Comparison> {
    anyhow::ensure!(
        base.mtu == new.mtu,
        "cannot compare results taken at different MTUs: the baseline at {}, the new \
         result at {} (rerun with --pod-mtu {} --uplink-mtu {}, or compare against a \
         baseline taken at the new MTUs)",
        base.mtu,
        new.mtu,
        base.mtu.pod,
        base.mtu.uplink
    );
    let mut out = Comparison::default();
    for bg in &base.gateways {
        if bg.name == KERNEL {
            continue;
        }
        let Some(ng) = new.gateway(&bg.name) else {
            out.notes
                .push(format!("gateway {} is not in the new run", bg.name));
            continue;
        };
        for fig in bg.medians.keys() {
            let meta = figure_meta(fig);
            if meta.better == Better::Neither {
                continue;
            }
            let source = |g: &crate::report::GatewayReport| match meta.basis {
                Basis::Ratio => g.ratios.get(fig).copied(),
                Basis::Absolute => g.medians.get(fig).copied(),
            };
            let (Some(b), Some(n)) = (source(bg), source(ng)) else {
                out.notes.push(format!(
                    "{} {fig}: not in both runs{}",
                    bg.name,
                    if meta.basis == Basis::Ratio {
                        " (as a ratio to kernel)"
                    } else {
                        ""
                    }
                ));
                continue;
            };
            if !(b.is_finite() && n.is_finite()) || b <= 0.0 {
                continue;
            }
            out.checked += 1;
            let change = n / b - 1.0;
            let worse = match meta.better {
                Better::Higher => change < -threshold,
                Better::Lower => change > threshold,
                Better::Neither => false,
            };
            let better = match meta.better {
                Better::Higher => change > threshold,
                Better::Lower => change < -threshold,
                Better::Neither => false,
            };
            let what = if meta.basis == Basis::Ratio {
                "ratio to kernel"
            } else {
                "median"
            };
            let line = format!(
                "{} {fig} ({}): {what} {:.3} -> {:.3} ({:+.1}%, {} is better)",
                bg.name,
                meta.label,
                b,
                n,
                change * 100.0,
                if meta.better == Better::Higher {
                    "higher"
                } else {
                    "lower"
                }
            );
            if worse {
                out.regressions.push(line);
            } else if better {
                out.improvements.push(line);
            }
        }
    }
    for ng in &new.gateways {
        if ng.name != KERNEL && base.gateway(&ng.name).is_none() {
            out.notes
                .push(format!("gateway {} has no baseline yet", ng.name));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Mtus;

    #[test]
    fn different_mtus_are_refused() {
        let base = crate::report::tests::sample_report();
        assert!(compare(&base, &base, 0.1).unwrap().regressions.is_empty());
        for mtu in [
            Mtus {
                pod: 9000,
                uplink: 1500,
            },
            Mtus {
                pod: 1500,
                uplink: 9000,
            },
        ] {
            let mut new = base.clone();
            new.mtu = mtu;
            let e = compare(&base, &new, 0.1).unwrap_err().to_string();
            assert!(e.contains("different MTUs"), "{e}");
            assert!(e.contains("pod MTU 1500, uplink MTU 1500"), "{e}");
            assert!(e.contains(&mtu.to_string()), "{e}");
            // Equal MTUs other than 1500 compare.
            let mut base2 = base.clone();
            base2.mtu = mtu;
            compare(&base2, &new, 0.1).unwrap();
        }
    }
}
