//! The plots (SVG, `plotters`), per workload:
//!
//! - `latency-<workload>.svg`: CDF of the fault latency of each strategy
//!   (log µs on x, fraction of faults on y), from its last run;
//! - `answers-kvserver.svg`: CDF of the latency of kvserver's first N answers;
//! - `rss-<workload>.svg`: resident memory (MiB) over time (ms since the start
//!   of the restore), from each strategy's last run.
//!
//! Curves come from the warm-cache runs when there are any, else the cold.

use std::path::Path;

use plotters::prelude::*;

use super::results::{BenchResults, Latency, Run, StrategyResult, WorkloadResult};
use super::{BenchError, CacheState};

const SIZE: (u32, u32) = (900, 540);

/// One curve: its label, its color index, its points.
type Series = (String, usize, Vec<(f64, f64)>);

/// The palette (one color per strategy, in report order).
const COLORS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

/// Writes every plot of `results` into `out`.
pub(crate) fn write_all(results: &BenchResults, out: &Path) -> Result<(), BenchError> {
    for w in &results.workloads {
        let name = w.workload_name();
        let series = |f: fn(&Run) -> Option<&Latency>| -> Vec<Series> {
            shown(w)
                .filter_map(|(i, r)| {
                    let l = r.runs.last().and_then(f)?;
                    Some((
                        format!("{} ({})", r.strategy_name(), l.kind),
                        i,
                        l.cdf.iter().map(|p| (p[1].max(0.01), p[0])).collect(),
                    ))
                })
                .collect()
        };
        cdf(
            &out.join(format!("latency-{name}.svg")),
            &format!("{name}: fault latency CDF"),
            &series(|r| r.fault_latency.as_ref().or(r.touch_latency.as_ref())),
        )?;
        let answers = series(|r| r.answer_latency.as_ref());
        if !answers.is_empty() {
            cdf(
                &out.join(format!("answers-{name}.svg")),
                &format!("{name}: latency of the first answers, CDF"),
                &answers,
            )?;
        }
        let rss: Vec<Series> = shown(w)
            .filter_map(|(i, r)| {
                let run = r.runs.last()?;
                Some((
                    r.strategy_name().to_owned(),
                    i,
                    run.rss.iter().map(|p| (p[0], p[1])).collect(),
                ))
            })
            .collect();
        lines(
            &out.join(format!("rss-{name}.svg")),
            &format!("{name}: resident memory after the restore"),
            &rss,
        )?;
    }
    Ok(())
}

/// The strategies plotted (with their color index): measured ones of the
/// warm cache state if any, else of the cold.
fn shown(w: &WorkloadResult) -> impl Iterator<Item = (usize, &StrategyResult)> {
    let warm = w
        .results
        .iter()
        .any(|r| r.cache == CacheState::Warm && r.status == "ok");
    let cache = if warm {
        CacheState::Warm
    } else {
        CacheState::Cold
    };
    w.results
        .iter()
        .filter(move |r| r.cache == cache && r.status == "ok")
        .map(|r| (r.strategy_index(), r))
}

fn draw_err(path: &Path) -> impl Fn(String) -> BenchError + '_ {
    move |e| BenchError::Output {
        what: format!("plot {}", path.display()),
        source: std::io::Error::other(e),
    }
}

/// Draws `series` as lines in their colors on `chart`, with a legend.
fn draw_curves<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    series: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (label, i, pts) in series {
        let color = COLORS[*i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
}

/// A CDF plot: x log µs, y fraction.
fn cdf(path: &Path, title: &str, series: &[Series]) -> Result<(), BenchError> {
    let err = draw_err(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(10.0f64, f64::max);
    let min = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(max, f64::min)
        .max(0.01);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min * 0.8..max * 1.25).log_scale(), 0.0f64..1.0)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("latency, µs (log)")
        .y_desc("fraction")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    draw_curves(&mut chart, series).map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

/// A line plot: x ms, y MiB.
fn lines(path: &Path, title: &str, series: &[Series]) -> Result<(), BenchError> {
    let err = draw_err(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let xmax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax * 1.02, 0.0..ymax * 1.1)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("ms since the start of the restore")
        .y_desc("resident MiB")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    draw_curves(&mut chart, series).map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}
