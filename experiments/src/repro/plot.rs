//! Figures for the reproduction report: line charts and grouped bar charts, each written as a PNG
//! and an SVG.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (`experiments/assets/fonts/`, Bitstream
//! Vera licence, see `LICENSE-DejaVu.txt`) and registered with plotters' `ab_glyph` backend under
//! the family name `sans-serif`, so drawing never looks for a system font (CI machines have none).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context as _, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// DejaVu Sans 2.37, unmodified.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Family name the embedded font is registered under (plotters' default label family).
const FAMILY: &str = "sans-serif";

/// Pixel size of every figure.
const SIZE: (u32, u32) = (800, 500);

/// Okabe–Ito colours: distinguishable under the common colour-vision deficiencies.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(0, 0, 0),
];

/// How an axis maps values to positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AxisScale {
    /// Evenly spaced values.
    Linear,
    /// Evenly spaced powers of ten; every value must be positive.
    Log,
}

/// One line of a line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// `(x, y)` points, drawn in the order given.
    pub points: Vec<(f64, f64)>,
}

/// Registers the embedded font once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).map_err(|_| "the embedded DejaVu Sans font failed to parse".to_string()))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The two file names written for `stem`.
fn file_names(stem: &str) -> Vec<String> {
    vec![format!("{stem}.png"), format!("{stem}.svg")]
}

/// A chart that can draw itself on any plotters backend.
trait Figure {
    /// Draws the whole chart on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Draws `figure` once on a PNG and once on an SVG backend under `dir`.
fn render_both(dir: &Path, stem: &str, figure: &impl Figure) -> Result<Vec<String>> {
    ensure_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names = file_names(stem);
    let png = dir.join(&names[0]);
    let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
    figure.draw(&root).with_context(|| format!("drawing {}", png.display()))?;
    root.present().map_err(|e| anyhow!("writing {}: {e}", png.display()))?;
    let svg = dir.join(&names[1]);
    let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
    figure.draw(&root).with_context(|| format!("drawing {}", svg.display()))?;
    root.present().map_err(|e| anyhow!("writing {}: {e}", svg.display()))?;
    Ok(names)
}

/// Padded `[lo, hi]` around `values`; starts at zero when the data are non-negative and zero is
/// close enough to keep the bars/lines honest.
fn linear_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo = if lo >= 0.0 && lo <= 0.5 * hi { 0.0 } else { lo };
    let pad = if hi > lo { 0.06 * (hi - lo) } else { hi.abs().max(1.0) * 0.1 };
    let lo = if lo == 0.0 { 0.0 } else { lo - pad };
    (lo, hi + pad)
}

/// Log-axis bounds: one step below and above the data on a ×/÷ 1.25 scale.
fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (lo / 1.25, hi * 1.25)
}

/// Rejects empty, non-finite and (on a log axis) non-positive data.
fn validate_lines(series: &[Series], x_scale: AxisScale) -> Result<()> {
    if series.iter().all(|s| s.points.is_empty()) {
        bail!("line chart has no points: give at least one series with one (x, y) point");
    }
    for s in series {
        for &(x, y) in &s.points {
            if !x.is_finite() || !y.is_finite() {
                bail!("series {:?} has a non-finite point ({x}, {y})", s.label);
            }
            if x_scale == AxisScale::Log && x <= 0.0 {
                bail!("series {:?} has x = {x} on a log axis: use AxisScale::Linear", s.label);
            }
        }
    }
    Ok(())
}

/// Text of one chart's title and axis labels.
struct Labels<'a> {
    title: &'a str,
    x: &'a str,
    y: &'a str,
}

/// Writes `<stem>.png` and `<stem>.svg` under `dir`: one line per series, with a legend.
///
/// Returns the two file names (not paths), PNG first.
pub fn line_chart(dir: &Path, stem: &str, title: &str, x_label: &str, y_label: &str, series: &[Series], x_scale: AxisScale) -> Result<Vec<String>> {
    validate_lines(series, x_scale)?;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x = match x_scale {
        AxisScale::Linear => linear_bounds(xs),
        AxisScale::Log => log_bounds(xs),
    };
    let y = linear_bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let labels = Labels { title, x: x_label, y: y_label };
    render_both(dir, stem, &Lines { labels, x_scale, x, y, series })
}

/// A line chart ready to draw.
struct Lines<'a> {
    labels: Labels<'a>,
    x_scale: AxisScale,
    x: (f64, f64),
    y: (f64, f64),
    series: &'a [Series],
}

impl Figure for Lines<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (lo, hi) = self.x;
        match self.x_scale {
            AxisScale::Linear => draw_lines(root, &self.labels, lo..hi, self.y, self.series),
            AxisScale::Log => draw_lines(root, &self.labels, (lo..hi).log_scale(), self.y, self.series),
        }
    }
}

/// Draws the line chart on one backend, whatever the x coordinate type.
fn draw_lines<DB, X>(root: &DrawingArea<DB, Shift>, labels: &Labels<'_>, x: X, y: (f64, f64), series: &[Series]) -> Result<()>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(labels.title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y.0..y.1)
        .map_err(err)?;
    chart.configure_mesh().x_desc(labels.x).y_desc(labels.y).x_label_formatter(&|v| tick(*v)).label_style((FAMILY, 14)).draw().map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let style = colour.stroke_width(2);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(move |(px, py)| PathElement::new([(px, py), (px + 18, py)], style));
        let marks = s.points.iter().map(move |&p| Circle::new(p, 3, colour.filled()));
        chart.draw_series(marks).map_err(err)?;
    }
    draw_legend(&mut chart).map_err(err)
}

/// A tick label: up to four significant digits, no trailing zeros (`16`, `0.25`, `1.5e6`).
fn tick(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        return format!("{v:.2e}");
    }
    let digits = (3 - v.abs().log10().floor().max(-4.0) as i32).clamp(0, 6) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// The legend box in the upper-right corner.
fn draw_legend<'a, DB, X, Y>(chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    X: plotters::coord::ranged1d::Ranged,
    Y: plotters::coord::ranged1d::Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 14))
        .draw()
}

/// Rejects shapes that do not match and non-finite or negative bars.
fn validate_bars(groups: &[String], series: &[(String, Vec<f64>)]) -> Result<()> {
    if groups.is_empty() || series.is_empty() {
        bail!("bar chart needs at least one group and one series");
    }
    for (label, values) in series {
        if values.len() != groups.len() {
            bail!("bar series {label:?} has {} values for {} groups: give one value per group", values.len(), groups.len());
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite() || **v < 0.0) {
            bail!("bar series {label:?} has value {v}: bars must be finite and non-negative");
        }
    }
    Ok(())
}

/// Writes `<stem>.png` and `<stem>.svg` under `dir`: one cluster of bars per group, one colour
/// per series (`(legend label, one value per group)`).
///
/// Returns the two file names (not paths), PNG first.
pub fn bar_chart(dir: &Path, stem: &str, title: &str, y_label: &str, groups: &[String], series: &[(String, Vec<f64>)]) -> Result<Vec<String>> {
    validate_bars(groups, series)?;
    let labels = Labels { title, x: "", y: y_label };
    render_both(dir, stem, &Bars { labels, groups, series })
}

/// A grouped bar chart ready to draw.
struct Bars<'a> {
    labels: Labels<'a>,
    groups: &'a [String],
    series: &'a [(String, Vec<f64>)],
}

impl Figure for Bars<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        draw_bars(root, &self.labels, self.groups, self.series)
    }
}

/// Horizontal units per bar group (integer x coordinates keep plotters' default tick formatting).
const GROUP_UNITS: i32 = 1000;

/// Draws the grouped bars on one backend. Group `g` spans `[g, g + 1)·GROUP_UNITS` on the x axis.
fn draw_bars<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, labels: &Labels<'_>, groups: &[String], series: &[(String, Vec<f64>)]) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(err)?;
    let n = groups.len();
    let top = series.iter().flat_map(|s| s.1.iter().copied()).fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.25 } else { 1.0 };
    let centres: Vec<i32> = (0..n as i32).map(|g| g * GROUP_UNITS + GROUP_UNITS / 2).collect();
    let group_of = |v: &i32| groups.get((v / GROUP_UNITS) as usize).cloned().unwrap_or_default();
    let mut chart = ChartBuilder::on(root)
        .caption(labels.title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(72)
        .build_cartesian_2d((0..n as i32 * GROUP_UNITS).with_key_points(centres), 0.0..top)
        .map_err(err)?;
    chart.configure_mesh().disable_x_mesh().x_label_formatter(&group_of).y_desc(labels.y).label_style((FAMILY, 14)).draw().map_err(err)?;
    let width = (GROUP_UNITS * 8 / 10) / series.len() as i32;
    for (s, (label, values)) in series.iter().enumerate() {
        let colour = PALETTE[s % PALETTE.len()];
        let bars = values.iter().enumerate().map(move |(g, &v)| {
            let x0 = g as i32 * GROUP_UNITS + GROUP_UNITS / 10 + s as i32 * width;
            Rectangle::new([(x0, 0.0), (x0 + width * 9 / 10, v)], colour.filled())
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(px, py)| Rectangle::new([(px, py - 6), (px + 14, py + 6)], colour.filled()));
    }
    draw_legend(&mut chart).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        (be(16), be(20))
    }

    fn check_outputs(dir: &Path, names: &[String], title: &str) {
        let png = std::fs::read(dir.join(&names[0])).unwrap();
        assert_eq!(png_size(&png), SIZE);
        assert!(png.len() > 5_000, "PNG of {} bytes is too small to hold a chart", png.len());
        let svg = std::fs::read_to_string(dir.join(&names[1])).unwrap();
        assert!(svg.contains(title), "SVG lacks the title {title:?}");
    }

    #[test]
    fn line_chart_writes_png_and_svg_on_both_scales() {
        let dir = tempfile::tempdir().unwrap();
        let series = vec![
            Series { label: "recall".into(), points: vec![(4.0, 0.5), (16.0, 0.8), (64.0, 0.95)] },
            Series { label: "dense".into(), points: vec![(4.0, 1.0), (64.0, 1.0)] },
        ];
        for (scale, stem) in [(AxisScale::Log, "log"), (AxisScale::Linear, "lin")] {
            let title = format!("Recall vs experts {stem}");
            let names = line_chart(dir.path(), stem, &title, "experts", "recall@K", &series, scale).unwrap();
            assert_eq!(names, vec![format!("{stem}.png"), format!("{stem}.svg")]);
            check_outputs(dir.path(), &names, &title);
        }
    }

    #[test]
    fn bar_chart_writes_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let groups = vec!["MEFT".to_string(), "full offload".to_string()];
        let series = vec![("H2D".to_string(), vec![1.0, 4.0]), ("D2H".to_string(), vec![0.5, 4.0])];
        let names = bar_chart(dir.path(), "bytes", "Bytes per step", "MiB", &groups, &series).unwrap();
        check_outputs(dir.path(), &names, "Bytes per step");
        let svg = std::fs::read_to_string(dir.path().join(&names[1])).unwrap();
        assert!(svg.contains("full offload"), "group names label the x axis");
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(16.0), "16");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(1234.4), "1234");
        assert_eq!(tick(0.12345), "0.1235");
        assert_eq!(tick(2.5e6), "2.50e6");
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let neg = vec![Series { label: "a".into(), points: vec![(0.0, 1.0)] }];
        let e = line_chart(dir.path(), "x", "t", "x", "y", &neg, AxisScale::Log).unwrap_err();
        assert!(e.to_string().contains("log axis"), "{e}");
        assert!(line_chart(dir.path(), "x", "t", "x", "y", &[], AxisScale::Linear).is_err());
        let groups = vec!["a".to_string()];
        let short = vec![("s".to_string(), vec![1.0, 2.0])];
        let e = bar_chart(dir.path(), "b", "t", "y", &groups, &short).unwrap_err();
        assert!(e.to_string().contains("one value per group"), "{e}");
    }
}
