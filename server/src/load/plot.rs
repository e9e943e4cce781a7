//! `--plot`: Recommend latency percentiles per second of the run as a small hand-written SVG (p50 and
//! p99 lines on linear axes), so that no plotting crate is needed.

use std::fmt::Write;

use super::report::LoadReport;

const W: f64 = 800.0;
const H: f64 = 400.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// The SVG document (a valid, empty chart when the run recorded no latency).
pub fn latency_svg(report: &LoadReport) -> String {
    let points = &report.timeline;
    let t_max = points.last().map_or(1, |p| p.second + 1).max(1) as f64;
    let y_max = nice_ceiling(points.iter().map(|p| p.p99_ms).fold(0.0, f64::max));
    let x = |s: f64| LEFT + (s / t_max) * (W - LEFT - RIGHT);
    let y = |ms: f64| H - BOTTOM - (ms / y_max) * (H - TOP - BOTTOM);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{LEFT}\" y=\"18\" font-size=\"14\">Recommend latency per second — {} ({} requests)</text>",
        escape(&report.target),
        report.requests
    );
    // Axes, gridlines and labels.
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    for i in 0..=5 {
        let s = t_max * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{s:.0}</text>",
            x(s),
            H - BOTTOM + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds since start</text>\
         <text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">ms</text>\
         <polyline points=\"{LEFT},{TOP} {LEFT},{:.1} {:.1},{:.1}\" fill=\"none\" stroke=\"black\"/>",
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0,
        H / 2.0,
        H / 2.0,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM
    );
    for (name, color, value) in [("p50", "#1f77b4", 0usize), ("p99", "#d62728", 1)] {
        let line: Vec<String> = points
            .iter()
            .map(|p| {
                let ms = if value == 0 { p.p50_ms } else { p.p99_ms };
                format!("{:.1},{:.1}", x(p.second as f64 + 0.5), y(ms))
            })
            .collect();
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
            line.join(" ")
        );
        let ly = TOP + 4.0 + 16.0 * value as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{name}</text>",
            W - RIGHT - 70.0,
            W - RIGHT - 50.0,
            W - RIGHT - 44.0,
            ly + 4.0
        );
    }
    svg += "</svg>\n";
    svg
}

/// The smallest of 1, 2, 5 × 10^n at or above `v` (at least 0.1 ms).
fn nice_ceiling(v: f64) -> f64 {
    let v = v.max(0.1);
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * mag)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 0.1);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(50.0), 50.0);
    }
}
