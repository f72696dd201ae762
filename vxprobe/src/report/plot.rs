//! The report's charts over time, drawn by plotters into SVG text (its SVG backend only: no
//! fonts are loaded, labels are SVG text the browser sets). Legends are left to the page
//! (HTML swatches under each chart), so they never cover the data.

use plotters::prelude::*;

use super::join::Timeline;

/// A quiet categorical palette (colour-blind safe in its first entries).
pub const PALETTE: [(u8, u8, u8); 10] = [
    (78, 121, 167),
    (242, 142, 43),
    (225, 87, 89),
    (118, 183, 178),
    (89, 161, 79),
    (237, 201, 72),
    (176, 122, 161),
    (255, 157, 167),
    (156, 117, 95),
    (186, 176, 172),
];

pub fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// One chart: its SVG and its legend (label, colour).
pub struct Chart {
    pub svg: String,
    pub legend: Vec<(String, String)>,
}

const WIDTH: u32 = 960;
const HEIGHT: u32 = 230;
/// Series drawn at most per chart (the largest).
const MAX_SERIES: usize = 8;

/// Seconds on the x axis: m:ss, or seconds with a decimal on short windows.
fn clock(seconds: f64, short: bool) -> String {
    if short {
        return format!("{seconds:.1} s");
    }
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// Rates with SI prefixes: 1.2k, 3.4M.
fn si(v: &f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Draws step lines of `series` (per bin) over the timeline, with the notes as dashed
/// verticals numbered at the top.
fn chart(timeline: &Timeline, series: &[(String, Vec<f64>)], y_desc: &str) -> Chart {
    let bin_s = timeline.bin as f64 / 1e6;
    let x_max = (timeline.bins as f64 * bin_s).max(bin_s);
    let y_top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max);
    let y_max = if y_top > 0.0 { y_top * 1.12 } else { 1.0 };
    let mut svg = String::new();
    let mut legend = Vec::new();
    let short = x_max < 30.0;
    let x_label = move |x: &f64| clock(*x, short);
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .margin_top(14)
                .margin_right(16)
                .x_label_area_size(26)
                .y_label_area_size(58)
                .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
            let grid = RGBColor(225, 228, 232);
            chart
                .configure_mesh()
                .light_line_style(WHITE)
                .bold_line_style(grid)
                .axis_style(RGBColor(150, 155, 160))
                .x_labels(10)
                .y_labels(5)
                .x_label_formatter(&x_label)
                .y_label_formatter(&si)
                .y_desc(y_desc)
                .label_style(("sans-serif", 12).into_font().color(&RGBColor(80, 86, 92)))
                .axis_desc_style(("sans-serif", 12).into_font().color(&RGBColor(80, 86, 92)))
                .draw()?;
            for (n, (at, _, _)) in timeline.notes.iter().enumerate() {
                let x = (*at - timeline.from) as f64 / 1e6;
                if !(0.0..=x_max).contains(&x) {
                    continue;
                }
                let style = RGBColor(160, 165, 170).stroke_width(1);
                chart.draw_series(DashedLineSeries::new([(x, 0.0), (x, y_max)], 4, 4, style))?;
                chart.draw_series(std::iter::once(Text::new(
                    (n + 1).to_string(),
                    (x, y_max),
                    ("sans-serif", 11)
                        .into_font()
                        .color(&RGBColor(110, 115, 120)),
                )))?;
            }
            for (i, (label, values)) in series.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let rgb = RGBColor(color.0, color.1, color.2);
                let steps = values.iter().enumerate().flat_map(|(b, v)| {
                    let x = b as f64 * bin_s;
                    [(x, *v), (x + bin_s, *v)]
                });
                chart.draw_series(LineSeries::new(steps, rgb.stroke_width(2)))?;
                legend.push((label.clone(), hex(color)));
            }
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            // Drawing into a String fails only on a plotters bug: say so in place of the chart.
            legend = vec![(format!("chart not drawn: {e}"), "#999999".to_owned())];
        }
    }
    Chart { svg, legend }
}

/// The series with the largest totals, at most `MAX_SERIES`, dropping all-zero ones.
fn largest(mut series: Vec<(String, Vec<f64>)>) -> Vec<(String, Vec<f64>)> {
    series.retain(|(_, v)| v.iter().any(|x| *x > 0.0));
    series.sort_by(|a, b| {
        let (sa, sb): (f64, f64) = (a.1.iter().sum(), b.1.iter().sum());
        sb.total_cmp(&sa).then(a.0.cmp(&b.0))
    });
    series.truncate(MAX_SERIES);
    series
}

/// Packets lost per second: drops counted at each hop, and the wire between nodes.
pub fn loss(timeline: &Timeline) -> Chart {
    let mut series: Vec<(String, Vec<f64>)> = timeline.wire.clone();
    series.extend(
        timeline
            .hops
            .iter()
            .map(|(label, drops, _)| (format!("{label} (drops)"), drops.clone())),
    );
    chart(timeline, &largest(series), "lost / s")
}

/// Anomaly events per second, by kind.
pub fn anomalies(timeline: &Timeline) -> Chart {
    let series = timeline
        .anomalies
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    chart(timeline, &largest(series), "events / s")
}

/// Bits per second at each hop.
pub fn throughput(timeline: &Timeline) -> Chart {
    let series = timeline
        .hops
        .iter()
        .map(|(label, _, bits)| (label.clone(), bits.clone()))
        .collect();
    chart(timeline, &largest(series), "bit/s")
}
