//! `--plot`: Recommend (or Score) latency percentiles per second of the run (p50 and p99 lines on linear axes),
//! drawn with plotters' SVG backend.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{LoadReport, TimelinePoint};

const SIZE: (u32, u32) = (800, 400);
const P50: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const P99: RGBColor = RGBColor(0xd6, 0x27, 0x28);

/// A line of the chart: its legend, its colour, and its value at one second.
type Series = (&'static str, RGBColor, fn(&TimelinePoint) -> f64);

/// Why the plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the latency plot: {source}")]
pub struct PlotError {
    #[source]
    source: DrawingAreaErrorKind<std::io::Error>,
}

impl From<DrawingAreaErrorKind<std::io::Error>> for PlotError {
    fn from(source: DrawingAreaErrorKind<std::io::Error>) -> Self {
        PlotError { source }
    }
}

/// The SVG document (a valid chart with empty series when the run recorded no latency).
pub fn latency_svg(report: &LoadReport) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, report)?;
        root.present()?;
    }
    Ok(svg)
}

fn draw(root: &DrawingArea<SVGBackend<'_>, Shift>, report: &LoadReport) -> Result<(), PlotError> {
    root.fill(&WHITE)?;
    let points = &report.timeline;
    let t_max = points.last().map_or(1, |p| p.second + 1).max(1) as f64;
    let y_max = nice_ceiling(points.iter().map(|p| p.p99_ms).fold(0.0, f64::max));
    let title = format!(
        "{} latency per second: {} ({} requests)",
        report.workload.call(),
        report.target,
        report.requests
    );
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("ms")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let series: [Series; 2] = [("p50", P50, |p| p.p50_ms), ("p99", P99, |p| p.p99_ms)];
    for (name, color, value) in series {
        let line = points.iter().map(|p| (p.second as f64 + 0.5, value(p)));
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The smallest of 1, 2, 5 × 10^n at or above `v` (at least 0.1 ms), so the y axis ends on a round
/// number.
fn nice_ceiling(v: f64) -> f64 {
    let v = v.max(0.1);
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * mag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Mode, Workload};

    fn report(timeline: Vec<TimelinePoint>) -> LoadReport {
        LoadReport {
            run_tag: String::new(),
            retried: Default::default(),
            target: "127.0.0.1:1 <&>".to_string(),
            model: String::new(),
            model_version: String::new(),
            mode: Mode::Closed { concurrency: 1 },
            workload: Workload::Score { candidates: 100 },
            sessions_in_log: 0,
            seconds: 0.0,
            requests: timeline.iter().map(|p| p.requests).sum(),
            failed: 0,
            throughput_rps: 0.0,
            events_sent: 0,
            events_applied: 0,
            unknown_items: 0,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            max_ms: 0.0,
            mean_ms: 0.0,
            errors: Default::default(),
            accuracy: lambdarec_trainer::eval::MetricsAccumulator::new(20, 1).finish(),
            timeline,
        }
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 0.1);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(50.0), 50.0);
    }

    #[test]
    fn draws_both_series_with_a_legend() {
        let point = |second, p50_ms, p99_ms| TimelinePoint {
            second,
            requests: 10,
            p50_ms,
            p99_ms,
        };
        let svg = latency_svg(&report(vec![
            point(0, 0.5, 1.5),
            point(1, 0.6, 3.0),
            point(2, 0.4, 2.0),
        ]))
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // One polyline per series with one vertex per second, in each series' colour.
        let lines: Vec<&str> = svg.lines().filter(|l| l.contains("<polyline")).collect();
        for colour in ["#1F77B4", "#D62728"] {
            let line = lines
                .iter()
                .find(|l| l.to_uppercase().contains(colour) && l.matches(',').count() == 3)
                .unwrap_or_else(|| panic!("no 3-point series in {colour} in\n{svg}"));
            assert!(line.contains("points="), "{line}");
        }
        for text in [
            "p50",
            "p99",
            "seconds since start",
            "30 requests",
            "&lt;&amp;&gt;",
        ] {
            assert!(svg.contains(text), "missing {text:?} in\n{svg}");
        }
    }

    #[test]
    fn an_empty_run_is_a_valid_empty_chart() {
        let svg = latency_svg(&report(Vec::new())).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("seconds since start"));
    }
}
