//! PNG plots with plotters' bitmap backend. Text is rendered with ab_glyph from a font
//! embedded in the binary (DejaVu Sans, from the `dejavu` crate), so no system font
//! and no fontconfig is needed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::{figure_meta, BenchReport};
use crate::stats;

const FONT: &str = "sans-serif";

fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    anyhow::ensure!(ok, "the embedded DejaVu Sans font did not load");
    Ok(())
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

/// Writes every plot into `dir`; returns the files written.
pub fn write_all(report: &BenchReport, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for size in ["64", "1024"] {
        let p = dir.join(format!("latency-cdf-{size}.png"));
        if latency_cdf(report, size, &p)? {
            out.push(p);
        }
    }
    let p = dir.join("throughput.png");
    if throughput_bars(report, &p)? {
        out.push(p);
    }
    Ok(out)
}

/// The CDF of the round whose p50 is the median p50 of that gateway type.
fn representative_cdf<'a>(
    g: &'a crate::report::GatewayReport,
    size: &str,
) -> Option<&'a Vec<[f64; 2]>> {
    let key = format!("latency_{size}_p50_us");
    let med = g.medians.get(&key)?;
    g.rounds
        .iter()
        .filter(|r| r.latency_cdf.contains_key(size))
        .min_by(|a, b| {
            let d = |r: &crate::report::RoundReport| {
                (r.figures.get(&key).copied().unwrap_or(f64::MAX) - med).abs()
            };
            d(a).total_cmp(&d(b))
        })
        .and_then(|r| r.latency_cdf.get(size))
}

/// Latency CDF per gateway type (x: round trip µs, log scale; y: quantile). Returns
/// false when no gateway measured latency for `size`.
pub fn latency_cdf(report: &BenchReport, size: &str, path: &Path) -> anyhow::Result<bool> {
    register_font()?;
    // Colours follow the gateway's position in the run, the same in every plot.
    let series: Vec<(usize, String, &Vec<[f64; 2]>)> = report
        .gateways
        .iter()
        .enumerate()
        .filter_map(|(i, g)| representative_cdf(g, size).map(|c| (i, g.name.clone(), c)))
        .filter(|(_, _, c)| !c.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let lo = series
        .iter()
        .flat_map(|(_, _, c)| c.iter().map(|p| p[0]))
        .fold(f64::MAX, f64::min)
        .max(0.1);
    let hi = series
        .iter()
        .flat_map(|(_, _, c)| c.iter().map(|p| p[0]))
        .fold(0.0, f64::max)
        .max(lo * 2.0);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Round-trip latency CDF, {size} B ping-pong"),
            (FONT, 22),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("round trip (µs, log scale)")
        .y_desc("fraction of round trips ≤ x")
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for (i, name, cdf) in &series {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                cdf.iter().map(|p| (p[0].max(lo * 0.8), p[1])),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

/// Grouped bars: one group per throughput figure, one bar per gateway type (median;
/// the ratio to kernel printed above). Returns false when nothing was measured.
pub fn throughput_bars(report: &BenchReport, path: &Path) -> anyhow::Result<bool> {
    register_font()?;
    let figures = [
        "throughput_1s_fwd_mbps",
        "throughput_1s_rev_mbps",
        "throughput_8s_fwd_mbps",
        "throughput_8s_rev_mbps",
    ];
    let figures: Vec<&str> = figures
        .into_iter()
        .filter(|f| report.gateways.iter().any(|g| g.medians.contains_key(*f)))
        .collect();
    if figures.is_empty() {
        return Ok(false);
    }
    let max = report
        .gateways
        .iter()
        .flat_map(|g| figures.iter().filter_map(|f| g.medians.get(*f)))
        .fold(0.0f64, |a, b| a.max(*b))
        .max(1.0);
    let measured: Vec<(usize, &crate::report::GatewayReport)> = report
        .gateways
        .iter()
        .enumerate()
        .filter(|(_, g)| figures.iter().any(|f| g.medians.contains_key(*f)))
        .collect();
    let n = measured.len().max(1) as f64;
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Bulk throughput (iperf3, median of rounds)", (FONT, 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..figures.len() as f64, 0.0..max * 1.15)
        .map_err(err)?;
    let labels: Vec<String> = figures
        .iter()
        .map(|f| {
            figure_meta(f)
                .label
                .replace("throughput ", "")
                .replace(" (-R)", "")
        })
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(figures.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 && i < labels.len() {
                labels[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc("Mbit/s")
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for (slot, &(gi, g)) in measured.iter().enumerate() {
        let color = COLORS[gi % COLORS.len()];
        let width = 0.8 / n;
        let bars: Vec<(f64, f64, f64, Option<f64>)> = figures
            .iter()
            .enumerate()
            .filter_map(|(fi, f)| {
                g.medians.get(*f).map(|v| {
                    let x0 = fi as f64 + 0.1 + slot as f64 * width;
                    (x0, x0 + width * 0.95, *v, g.ratios.get(*f).copied())
                })
            })
            .collect();
        chart
            .draw_series(
                bars.iter()
                    .map(|&(x0, x1, v, _)| Rectangle::new([(x0, 0.0), (x1, v)], color.filled())),
            )
            .map_err(err)?
            .label(g.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart
            .draw_series(bars.iter().map(|&(x0, _, v, ratio)| {
                let text = match ratio {
                    Some(r) if g.name != crate::report::KERNEL => format!("{r:.2}x"),
                    _ => format!("{v:.0}"),
                };
                Text::new(text, (x0, v + max * 0.02), (FONT, 13).into_font())
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

/// Used by the tests: a CDF from a synthetic histogram.
pub fn synthetic_cdf(base_us: u64) -> Vec<[f64; 2]> {
    let mut h = stats::new_histogram();
    for i in 0..1000u64 {
        stats::record(&mut h, (base_us + i % 50 + i / 990 * 500) * 1000);
    }
    stats::cdf(&h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{GatewayReport, RoundReport, KERNEL};
    use std::collections::BTreeMap;

    #[test]
    fn plots_render_with_embedded_font() {
        let mk = |name: &str, base: u64, tput: f64| {
            let mut figures = BTreeMap::new();
            figures.insert("latency_64_p50_us".to_string(), base as f64 + 25.0);
            figures.insert("throughput_1s_fwd_mbps".to_string(), tput);
            figures.insert("throughput_8s_rev_mbps".to_string(), tput * 1.5);
            let mut cdf = BTreeMap::new();
            cdf.insert("64".to_string(), synthetic_cdf(base));
            GatewayReport {
                name: name.into(),
                status: "ok".into(),
                rounds: vec![RoundReport {
                    status: "ok".into(),
                    figures,
                    latency_cdf: cdf,
                    ..Default::default()
                }],
                medians: BTreeMap::new(),
                ratios: BTreeMap::new(),
                not_applicable: BTreeMap::new(),
            }
        };
        let mut r = BenchReport {
            schema: crate::report::SCHEMA.into(),
            started_unix: 0,
            finished_unix: 0,
            machine: Default::default(),
            git_commit: String::new(),
            versions: BTreeMap::new(),
            config: serde_json::Value::Null,
            mtu: Default::default(),
            gateways: vec![mk(KERNEL, 20, 9000.0), mk("xdpmesh-tcp", 60, 3000.0)],
            targets: Vec::new(),
        };
        r.finish();
        let dir = std::env::temp_dir().join(format!("xdpmesh-plot-{}", std::process::id()));
        let files = write_all(&r, &dir).unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            assert_eq!(&bytes[1..4], b"PNG");
            assert!(bytes.len() > 5000, "{} is suspiciously small", f.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn embedded_font_draws_glyphs() {
        // Text really renders (a missing font would draw nothing or fail): count
        // non-white pixels of a caption-only image.
        register_font().unwrap();
        let mut buf = vec![255u8; 200 * 50 * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (200, 50)).into_drawing_area();
            root.draw_text(
                "Latency 99%",
                &(FONT, 20).into_font().color(&BLACK),
                (5, 10),
            )
            .unwrap();
            root.present().unwrap();
        }
        let dark = buf.chunks(3).filter(|p| p[0] < 128).count();
        assert!(dark > 100, "only {dark} dark pixels: text did not render");
    }
}
