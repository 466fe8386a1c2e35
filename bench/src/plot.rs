//! The plot: messages/s and p99 ack latency against messages in flight, for
//! the 1 KiB points of every series (keel's two, and one per peer). Solid
//! lines: acked after fsync on a majority; dashed: keel under its weaker
//! policies. Both axes logarithmic.

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::cluster::keel::{Producing, SYNC_FLUSH};
use crate::report::{Report, Row, all_series};

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 520;
const SIZE: usize = 1024;

/// keel's Batcher series in a policy's full colour, its one record per
/// request series in the paler shade of the same hue, so a policy's pair
/// reads as one family.
fn color(row: &Row, flush: &str) -> RGBColor {
    let batcher = row.series == Producing::Batcher.series();
    match (row.system.as_str(), flush) {
        ("keel", SYNC_FLUSH) if batcher => RGBColor(0xd6, 0x27, 0x28),
        ("keel", SYNC_FLUSH) => RGBColor(0xff, 0x98, 0x96),
        ("keel", "BATCH_FLUSH") if batcher => RGBColor(0x94, 0x67, 0xbd),
        ("keel", "BATCH_FLUSH") => RGBColor(0xc5, 0xb0, 0xd5),
        ("keel", _) if batcher => RGBColor(0x8c, 0x56, 0x4b),
        ("keel", _) => RGBColor(0xc4, 0x9c, 0x94),
        ("etcd", _) => RGBColor(0x1f, 0x77, 0xb4),
        ("nats", _) => RGBColor(0x2c, 0xa0, 0x2c),
        _ => RGBColor(0xff, 0x7f, 0x0e),
    }
}

/// Each (series, flush) with its 1 KiB points, sorted by in flight.
fn series(report: &Report) -> Vec<Series<'_>> {
    let mut out = Vec::new();
    let flushes: [&'static str; 3] = [SYNC_FLUSH, "BATCH_FLUSH", "ASYNC_FLUSH"];
    for flush in flushes {
        for series in all_series() {
            let mut rows: Vec<&Row> = report
                .results
                .iter()
                .filter(|r| r.series == series && r.flush == flush && r.size == SIZE && r.measured.msgs_per_s > 0.0)
                .collect();
            if rows.is_empty() {
                continue;
            }
            rows.sort_by_key(|r| r.inflight);
            let label = if flush == SYNC_FLUSH { series.to_string() } else { format!("{series} {flush} (weaker)") };
            out.push((label, flush, rows));
        }
    }
    out
}

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi { (1.0, 10.0) } else { (lo / 2.0, hi * 2.0) }
}

pub fn render(report: &Report) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
        let title = format!(
            "1 KiB messages, three-node clusters on loopback, {}{}",
            report.date,
            if report.quick { " (quick run)" } else { "" }
        );
        let root = root.titled(&title, ("sans-serif", 20)).map_err(|e| anyhow!("plot: {e}"))?;
        let (left, right) = root.split_horizontally(WIDTH / 2);
        let all = series(report);
        let max_inflight =
            all.iter().flat_map(|(_, _, rows)| rows.iter()).map(|r| r.inflight).max().unwrap_or(256).max(2) as f64;

        panel(
            &left,
            "throughput (messages/s, higher is better)",
            &all,
            max_inflight,
            |r| r.measured.msgs_per_s,
            &|y| format!("{y:.0}"),
            true,
        )?;
        panel(
            &right,
            "p99 ack latency (ms, lower is better)",
            &all,
            max_inflight,
            |r| r.measured.p99_us as f64 / 1000.0,
            &|y| if *y < 1.0 { format!("{y:.2}") } else { format!("{y:.0}") },
            false,
        )?;
        root.present().map_err(|e| anyhow!("plot: {e}"))?;
    }
    Ok(svg)
}

type Series<'r> = (String, &'static str, Vec<&'r Row>);

/// One panel: `y` of every series against messages in flight, both axes
/// logarithmic; `legend` on the first panel only.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    all: &[Series<'_>],
    max_inflight: f64,
    y: impl Fn(&Row) -> f64,
    y_label: &dyn Fn(&f64) -> String,
    legend: bool,
) -> Result<()> {
    let (lo, hi) = span(all.iter().flat_map(|(_, _, rows)| rows.iter()).map(|r| y(r)));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8f64..max_inflight * 1.25).log_scale().base(2.0), (lo..hi).log_scale())
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("messages in flight")
        .max_light_lines(1)
        .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
        .bold_line_style(RGBColor(0xd8, 0xd8, 0xd8))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(y_label)
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    for (label, flush, rows) in all {
        draw(&mut chart, label, flush, rows, &y)?;
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("plot: {e}"))?;
    }
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::combinators::LogCoord<f64>, plotters::coord::combinators::LogCoord<f64>>,
>;

fn draw(chart: &mut Chart<'_, '_>, label: &str, flush: &str, rows: &[&Row], y: impl Fn(&Row) -> f64) -> Result<()> {
    let color = color(rows[0], flush);
    let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.inflight as f64, y(r))).collect();
    let style = color.stroke_width(2);
    if flush == SYNC_FLUSH {
        chart.draw_series(LineSeries::new(points.clone(), style)).map_err(|e| anyhow!("plot: {e}"))?
    } else {
        chart.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style)).map_err(|e| anyhow!("plot: {e}"))?
    }
    .label(label)
    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::keel::BATCH_FLUSH;
    use crate::report::fixtures::{report, row};

    #[test]
    fn both_panels_draw_every_series_and_the_legend_names_each_once() {
        let single = Producing::OneRecordPerRequest.series();
        let batcher = Producing::Batcher.series();
        let report = report(vec![
            row(single, SYNC_FLUSH, SIZE, 1, 160.0, 15_200),
            row(single, SYNC_FLUSH, SIZE, 64, 3_900.0, 30_100),
            row(batcher, SYNC_FLUSH, SIZE, 1, 170.0, 14_900),
            row(batcher, SYNC_FLUSH, SIZE, 64, 14_207.0, 15_400),
            row("nats", SYNC_FLUSH, SIZE, 1, 534.0, 10_600),
            row("nats", SYNC_FLUSH, SIZE, 64, 7_892.0, 43_000),
            row(single, BATCH_FLUSH, SIZE, 64, 590.0, 112_000),
            row(batcher, BATCH_FLUSH, SIZE, 64, 604.0, 110_000),
        ]);
        let svg = render(&report).expect("render");
        assert!(svg.contains("throughput (messages/s, higher is better)"), "left caption");
        assert!(svg.contains("p99 ack latency (ms, lower is better)"), "right caption");
        for label in [
            "keel (1 record/request)",
            "keel (Batcher)",
            "nats",
            "keel (1 record/request) BATCH_FLUSH (weaker)",
            "keel (Batcher) BATCH_FLUSH (weaker)",
        ] {
            let text = format!("\n{label}\n</text>");
            assert_eq!(svg.matches(&text).count(), 1, "legend entry {label}, on the left panel only");
        }
        // Every point is marked in both panels: eight points, sixteen circles.
        assert_eq!(svg.matches("<circle").count(), 16);
    }

    #[test]
    fn the_two_keel_series_of_a_policy_differ_in_colour() {
        let single = row(Producing::OneRecordPerRequest.series(), SYNC_FLUSH, SIZE, 1, 1.0, 1);
        let batcher = row(Producing::Batcher.series(), SYNC_FLUSH, SIZE, 1, 1.0, 1);
        for flush in [SYNC_FLUSH, BATCH_FLUSH, "ASYNC_FLUSH"] {
            assert_ne!(color(&single, flush), color(&batcher, flush), "{flush}");
        }
    }
}
