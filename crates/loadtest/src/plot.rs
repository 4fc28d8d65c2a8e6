//! `--plot FILE.svg`: one row per scenario; on the left, requests per second per backend
//! at every concurrency; on the right, latency percentiles per backend at the highest
//! concurrency.

use std::path::Path;

use plotters::prelude::*;

use crate::{
    cli::Scenario,
    error::{Error, Result},
    report::{si, Report},
};

const ROW_HEIGHT: u32 = 440;
const WIDTH: u32 = 1500;

/// Draws the report into an SVG file.
pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| Error::Plot {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut scenarios: Vec<Scenario> = report.measurements.iter().map(|m| m.scenario).collect();
    scenarios.sort_unstable();
    scenarios.dedup();
    let mut concurrencies: Vec<usize> = report.measurements.iter().map(|m| m.concurrency).collect();
    concurrencies.sort_unstable();
    concurrencies.dedup();
    let mut backends: Vec<String> = Vec::new();
    for m in &report.measurements {
        if !backends.contains(&m.backend) {
            backends.push(m.backend.clone());
        }
    }
    if scenarios.is_empty() {
        return Err(fail(&"nothing was measured"));
    }
    let height = ROW_HEIGHT * scenarios.len() as u32 + 40;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (title, body) = root.split_vertically(40);
    title
        .titled(
            &format!(
                "session-loadtest: {} sessions, {} B sessions, {} — {}",
                report.meta.sessions,
                report.meta.payload_bytes,
                report.meta.date,
                report.meta.machine
            ),
            ("sans-serif", 16),
        )
        .map_err(|e| fail(&e))?;
    let rows = body.split_evenly((scenarios.len(), 1));
    let top_c = *concurrencies.last().unwrap_or(&1);
    let n = backends.len();
    for (row, scenario) in rows.iter().zip(&scenarios) {
        let (left, right) = row.split_horizontally(WIDTH * 11 / 20);

        // Throughput: one group of bars per backend, one bar per concurrency.
        let max = report
            .measurements
            .iter()
            .filter(|m| m.scenario == *scenario)
            .map(|m| m.ok_per_sec)
            .fold(1.0_f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(&left)
            .caption(
                format!("{scenario}: successful requests/s (median round)"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(170)
            .build_cartesian_2d(0.0..max, 0.0..n as f64)
            .map_err(|e| fail(&e))?;
        let names = backends.clone();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n * 2 + 1)
            .y_label_formatter(&|y| {
                let i = (n as f64 - y - 0.5).round();
                if (y - y.floor() - 0.5).abs() < 0.01 && i >= 0.0 && (i as usize) < names.len() {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_label_formatter(&|x| si(*x))
            .x_desc("requests/s")
            .draw()
            .map_err(|e| fail(&e))?;
        let slot = 0.8 / concurrencies.len() as f64;
        for (ci, c) in concurrencies.iter().enumerate() {
            let color = Palette99::pick(ci + 1).mix(0.85);
            let bars: Vec<Rectangle<(f64, f64)>> = backends
                .iter()
                .enumerate()
                .filter_map(|(bi, b)| {
                    let m = report.find(b, *scenario, *c)?;
                    let top = n as f64 - bi as f64 - 0.1 - slot * ci as f64;
                    Some(Rectangle::new(
                        [(0.0, top - slot), (m.ok_per_sec, top)],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| fail(&e))?
                .label(format!("concurrency {c}"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| fail(&e))?;

        // Latency percentiles at the highest concurrency, log scale.
        let points = ["p50", "p90", "p99", "p99.9", "max"];
        let series: Vec<(usize, Vec<f64>)> = backends
            .iter()
            .enumerate()
            .filter_map(|(bi, b)| {
                let l = report.find(b, *scenario, top_c)?.latency_us;
                (l.count > 0).then(|| (bi, vec![l.p50, l.p90, l.p99, l.p999, l.max]))
            })
            .collect();
        let (lo, hi) = series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold((f64::MAX, 1.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let lo = if lo == f64::MAX {
            1.0
        } else {
            (lo / 2.0).max(0.5)
        };
        let mut chart = ChartBuilder::on(&right)
            .caption(
                format!("{scenario}: latency at concurrency {top_c} (µs, log)"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.2_f64..4.2_f64, (lo..hi * 2.0).log_scale())
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && (0.0..5.0).contains(&i) {
                    points[i as usize].to_owned()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| si(*y))
            .draw()
            .map_err(|e| fail(&e))?;
        for (bi, values) in series {
            let color = Palette99::pick(bi + 3).to_rgba();
            let line: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, v.max(lo)))
                .collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(backends[bi].clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2))
                });
            chart
                .draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| fail(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
