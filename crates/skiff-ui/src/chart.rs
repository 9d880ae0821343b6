//! SVG charts rendered on the server: lines over time, stacked bars per category and
//! horizontal phase bars, each a standalone `<svg>` string that needs no JavaScript.
//!
//! Every chart scales to its container (a fixed `viewBox`, `width="100%"`) and takes its
//! colours from CSS classes: `s0`…`s7` per series (cycling), `axis`, `grid`, `threshold`,
//! `title`, `unit`, `legend`, `empty`. Shapes paint with `currentColor`, so a class only sets
//! `color`; [`STYLE`] is a default palette. Times are Unix seconds, shown in UTC.

use std::fmt::{self, Write};

/// Width of every chart's `viewBox`; heights depend on the chart and its legend.
const W: f64 = 480.0;
/// Right edge of the plot area.
const RIGHT: f64 = W - 10.0;
/// Top of the plot area, below the title.
const TOP: f64 = 28.0;
/// Height of line and bar charts without their legend.
const BASE_H: f64 = 200.0;
/// Estimated average glyph width at the chart's font size (11).
const CHAR_W: f64 = 6.2;
const LEGEND_ROW: f64 = 16.0;
/// Number of series classes (`s0`…`s7`) before they cycle.
const PALETTE: usize = 8;
const DAY: i64 = 86_400;
const EMPTY: &str = "No data in this range";

/// A default stylesheet for the charts' classes (light and dark). Pages may use their own.
pub const STYLE: &str = "\
.chart{color:#334155;font-family:system-ui,sans-serif}\
.chart .s0{color:#4e79a7}.chart .s1{color:#f28e2b}.chart .s2{color:#e15759}\
.chart .s3{color:#76b7b2}.chart .s4{color:#59a14f}.chart .s5{color:#edc948}\
.chart .s6{color:#b07aa1}.chart .s7{color:#ff9da7}.chart .threshold{color:#b91c1c}\
@media (prefers-color-scheme:dark){.chart{color:#cbd5e1}.chart .threshold{color:#f87171}}";

/// How a chart's values are measured, which decides how they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Durations in seconds, written as µs, ms, s, or minutes, hours and days.
    Seconds,
    /// Durations in milliseconds, written like [`Unit::Seconds`].
    Milliseconds,
    /// Ratios (1.0 is 100%), written as percentages.
    Percent,
    /// Rates, e.g. requests per second.
    PerSecond,
    /// US dollars.
    Dollars,
    /// Plain counts.
    Count,
    /// Bytes, written with binary prefixes (KiB, MiB…).
    Bytes,
    /// CPU cores.
    Cores,
}

impl Unit {
    /// The unit's name, shown next to a chart's title.
    fn label(self) -> &'static str {
        match self {
            Unit::Seconds | Unit::Milliseconds => "duration",
            Unit::Percent => "%",
            Unit::PerSecond => "per second",
            Unit::Dollars => "USD",
            Unit::Count => "count",
            Unit::Bytes => "bytes",
            Unit::Cores => "CPU cores",
        }
    }
}

/// One line of a [`Line`] chart.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Shown in the legend and tooltips (escaped).
    pub name: String,
    /// `(unix seconds, value)`; `None`, NaN and infinities are gaps that break the line.
    pub points: Vec<(i64, Option<f64>)>,
}

/// A line chart over the time range `from..=to`.
///
/// The y axis covers the values, the threshold and zero; only percentages all within the top
/// sixth of their range (e.g. availability at 99.9%) get an axis that leaves zero out.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub title: String,
    pub unit: Unit,
    pub series: Vec<Series>,
    /// A dashed horizontal line (e.g. an SLO target), labelled with the text and its value.
    pub threshold: Option<(f64, String)>,
    /// Start of the x axis, Unix seconds; points outside `from..=to` are left out.
    pub from: i64,
    /// End of the x axis, Unix seconds.
    pub to: i64,
}

/// One stacked layer of a [`Bars`] chart: a value per category, in the same order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BarSeries {
    pub name: String,
    /// Missing, negative and non-finite values count as zero.
    pub values: Vec<f64>,
}

/// A stacked bar chart: one bar per category, one layer per series.
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    pub title: String,
    pub unit: Unit,
    /// The x labels, e.g. days.
    pub categories: Vec<String>,
    /// Stacked bottom to top in this order.
    pub series: Vec<BarSeries>,
}

/// One row of [`phase_bars`]: e.g. an instance and its start-up phases.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HBar {
    pub label: String,
    /// `(phase, value)` laid end to end; a phase's colour follows its first appearance.
    pub segments: Vec<(String, f64)>,
}

/// Writes a value for people: `0.0123` s is "12.3 ms", `0.9991` % is "99.91%", 1536 bytes
/// is "1.5 KiB", 3.2 req/s is "3.2/s". About three significant digits; non-finite is "n/a".
pub fn format_value(v: f64, unit: Unit) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    match unit {
        Unit::Seconds => duration(v),
        Unit::Milliseconds => duration(v / 1000.0),
        Unit::Percent => percent(v),
        Unit::PerSecond => format!("{}/s", si(v)),
        Unit::Dollars => dollars(v),
        Unit::Count => si(v),
        Unit::Bytes => bytes(v),
        Unit::Cores => match sig(v, 3).as_str() {
            "1" => "1 core".to_owned(),
            s => format!("{s} cores"),
        },
    }
}

/// Renders a line chart: one path per series, gaps where values are missing, a dot for a
/// lone point, and "No data in this range" when no series has a value.
pub fn line_chart(c: &Line) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail.
    let _ = draw_line(&mut out, c);
    out
}

/// Renders a stacked bar chart, e.g. cost per day per Service.
pub fn bar_chart(b: &Bars) -> String {
    let mut out = String::with_capacity(4096);
    let _ = draw_bars(&mut out, b);
    out
}

/// Renders horizontal stacked bars, one row each, e.g. an instance's start-up phases
/// (image, container, ready).
pub fn phase_bars(title: &str, unit: Unit, rows: &[HBar]) -> String {
    let mut out = String::with_capacity(4096);
    let _ = draw_phases(&mut out, title, unit, rows);
    out
}

// ---- Line chart ----

fn draw_line(out: &mut String, c: &Line) -> fmt::Result {
    let (from, to) = (c.from.min(c.to), c.from.max(c.to));
    let series: Vec<Vec<(i64, Option<f64>)>> = c
        .series
        .iter()
        .map(|s| {
            let mut p: Vec<_> = s
                .points
                .iter()
                .filter(|(t, _)| (from..=to).contains(t))
                .map(|&(t, v)| (t, v.filter(|v| v.is_finite())))
                .collect();
            p.sort_by_key(|&(t, _)| t);
            p
        })
        .collect();
    let stats: Vec<Option<Stats>> = series
        .iter()
        .map(|p| Stats::of(p.iter().filter_map(|&(_, v)| v)))
        .collect();
    let summaries: Vec<String> = c
        .series
        .iter()
        .zip(&stats)
        .map(|(s, st)| summary(&s.name, st.as_ref(), c.unit))
        .collect();
    let threshold = c.threshold.as_ref().filter(|(v, _)| v.is_finite());
    let Some(range) = Stats::merge(stats.iter().flatten()) else {
        open(out, "line", BASE_H, &c.title, c.unit, EMPTY)?;
        return empty(out, BASE_H);
    };

    let mut desc = summaries.join("; ");
    if let Some((v, label)) = threshold {
        write!(desc, "; {label} {}", format_value(*v, c.unit))?;
    }
    let legend = Legend::layout(c.series.iter().map(|s| s.name.as_str()));
    let height = BASE_H + legend.height();
    open(out, "line", height, &c.title, c.unit, &desc)?;

    let (mut lo, mut hi) = (range.min, range.max);
    if let Some((v, _)) = threshold {
        (lo, hi) = (lo.min(*v), hi.max(*v));
    }
    // Ratios bunched near the top (availability, success rate) get an axis that starts near
    // them, not at 0%, or every line would lie flat along 100%.
    let ticks = if c.unit == Unit::Percent && lo > 0.0 && hi > lo && lo > hi * 5.0 / 6.0 {
        nice_span(lo, hi, c.unit)
    } else {
        nice_ticks(lo, hi, c.unit)
    };
    let plot = Plot::left_of_labels(&ticks, c.unit, BASE_H - TOP - 22.0);
    let y = plot.y_scale(&ticks);
    let span = to.saturating_sub(from).max(1) as f64;
    let x = |t: i64| plot.x + (t as f64 - from as f64) / span * plot.w;

    y_axis(out, &plot, &ticks, c.unit, &y)?;
    let times = time_ticks(from, to);
    out.push_str(r#"<path class="axis" stroke="currentColor" stroke-opacity=".5" fill="none" d=""#);
    write!(
        out,
        "M{} {}H{}",
        N(plot.x),
        N(plot.bottom()),
        N(plot.right())
    )?;
    for (t, _) in &times {
        write!(out, "M{} {}v4", N(x(*t)), N(plot.bottom()))?;
    }
    out.push_str(r#""/>"#);
    x_labels(
        out,
        &plot,
        times.iter().map(|(t, label)| (x(*t), label.as_str())),
    )?;

    if let Some((v, label)) = threshold {
        let ty = y(*v);
        let text_y = if ty - 4.0 < plot.y + 8.0 {
            ty + 11.0
        } else {
            ty - 4.0
        };
        write!(
            out,
            r#"<g class="threshold"><path stroke="currentColor" stroke-dasharray="4 3" d="M{} {}H{}"/><text x="{}" y="{}" text-anchor="end">"#,
            N(plot.x),
            N(ty),
            N(plot.right()),
            N(plot.right() - 2.0),
            N(text_y)
        )?;
        esc(out, &format!("{label} {}", format_value(*v, c.unit)));
        out.push_str("</text></g>");
    }

    for (i, (points, text)) in series.iter().zip(&summaries).enumerate() {
        let (d, dots) = line_path(points, x, &y);
        write!(
            out,
            r#"<g class="s{}" fill="currentColor"><title>"#,
            i % PALETTE
        )?;
        esc(out, text);
        out.push_str("</title>");
        if !d.is_empty() {
            write!(
                out,
                r#"<path fill="none" stroke="currentColor" stroke-width="1.5" stroke-linejoin="round" d="{d}"/>"#
            )?;
        }
        for (cx, cy) in dots {
            write!(out, r#"<circle cx="{}" cy="{}" r="2.5"/>"#, N(cx), N(cy))?;
        }
        out.push_str("</g>");
    }
    legend.draw(out, BASE_H)?;
    out.push_str("</svg>");
    Ok(())
}

/// The path through `points` (sorted, gaps as `None`): a `M…L…` run per stretch without gaps,
/// and lone points (a stretch of one) returned apart to be drawn as dots.
fn line_path(
    points: &[(i64, Option<f64>)],
    x: impl Fn(i64) -> f64,
    y: impl Fn(f64) -> f64,
) -> (String, Vec<(f64, f64)>) {
    fn flush(run: &mut Vec<(f64, f64)>, d: &mut String, dots: &mut Vec<(f64, f64)>) {
        match run.as_slice() {
            [] => {}
            [p] => dots.push(*p),
            [(x0, y0), rest @ ..] => {
                let _ = write!(d, "M{} {}L", N(*x0), N(*y0));
                for (i, (px, py)) in rest.iter().enumerate() {
                    let sep = if i == 0 { "" } else { " " };
                    let _ = write!(d, "{sep}{} {}", N(*px), N(*py));
                }
            }
        }
        run.clear();
    }
    let (mut d, mut dots, mut run) = (String::new(), Vec::new(), Vec::new());
    for &(t, v) in points {
        match v {
            Some(v) => run.push((x(t), y(v))),
            None => flush(&mut run, &mut d, &mut dots),
        }
    }
    flush(&mut run, &mut d, &mut dots);
    (d, dots)
}

/// A series' range and latest value.
#[derive(Debug, Clone, Copy)]
struct Stats {
    min: f64,
    max: f64,
    last: f64,
}

impl Stats {
    fn of(values: impl Iterator<Item = f64>) -> Option<Stats> {
        values.fold(None, |acc: Option<Stats>, v| {
            Some(match acc {
                None => Stats {
                    min: v,
                    max: v,
                    last: v,
                },
                Some(s) => Stats {
                    min: s.min.min(v),
                    max: s.max.max(v),
                    last: v,
                },
            })
        })
    }

    fn merge<'a>(all: impl Iterator<Item = &'a Stats>) -> Option<Stats> {
        all.copied().reduce(|a, b| Stats {
            min: a.min.min(b.min),
            max: a.max.max(b.max),
            last: b.last,
        })
    }
}

fn summary(name: &str, stats: Option<&Stats>, unit: Unit) -> String {
    match stats {
        Some(s) => format!(
            "{name}: latest {}, min {}, max {}",
            format_value(s.last, unit),
            format_value(s.min, unit),
            format_value(s.max, unit)
        ),
        None => format!("{name}: no data"),
    }
}

// ---- Bar chart ----

fn draw_bars(out: &mut String, b: &Bars) -> fmt::Result {
    let n = b.categories.len();
    if n == 0 || b.series.is_empty() {
        open(out, "bars", BASE_H, &b.title, b.unit, EMPTY)?;
        return empty(out, BASE_H);
    }
    let layers = stacks(b);
    let totals: Vec<f64> = (0..n)
        .map(|i| {
            layers
                .last()
                .and_then(|l| l.get(i))
                .map_or(0.0, |&(_, top)| top)
        })
        .collect();
    let summaries: Vec<String> = b
        .series
        .iter()
        .zip(&layers)
        .map(|(s, l)| {
            let total: f64 = l.iter().map(|(lo, hi)| hi - lo).sum();
            let max = l.iter().map(|(lo, hi)| hi - lo).fold(0.0, f64::max);
            format!(
                "{}: total {}, max {}",
                s.name,
                format_value(total, b.unit),
                format_value(max, b.unit)
            )
        })
        .collect();
    let legend = Legend::layout(b.series.iter().map(|s| s.name.as_str()));
    open(
        out,
        "bars",
        BASE_H + legend.height(),
        &b.title,
        b.unit,
        &summaries.join("; "),
    )?;

    let ticks = nice_ticks(0.0, totals.iter().copied().fold(0.0, f64::max), b.unit);
    let plot = Plot::left_of_labels(&ticks, b.unit, BASE_H - TOP - 22.0);
    let y = plot.y_scale(&ticks);
    y_axis(out, &plot, &ticks, b.unit, &y)?;
    let band = plot.w / n as f64;
    let bar_w = (band * 0.7).max(1.0);
    let bar_x = |i: usize| plot.x + i as f64 * band + (band - bar_w) / 2.0;

    for (i, (layer, text)) in layers.iter().zip(&summaries).enumerate() {
        write!(
            out,
            r#"<g class="s{}" fill="currentColor"><title>"#,
            i % PALETTE
        )?;
        esc(out, text);
        out.push_str(r#"</title><path d=""#);
        for (j, &(lo, hi)) in layer.iter().enumerate() {
            if hi > lo {
                let x0 = bar_x(j);
                write!(
                    out,
                    "M{} {}h{}V{}H{}Z",
                    N(x0),
                    N(y(hi)),
                    N(bar_w),
                    N(y(lo)),
                    N(x0)
                )?;
            }
        }
        out.push_str(r#""/></g>"#);
    }

    // Category labels, thinned so that they do not overlap.
    let label_w = b
        .categories
        .iter()
        .map(|c| clip(c, 10).chars().count())
        .max()
        .unwrap_or(0) as f64
        * CHAR_W
        + 8.0;
    let every = ((label_w / band).ceil() as usize).max(1);
    out.push_str(r#"<path class="axis" stroke="currentColor" stroke-opacity=".5" d=""#);
    write!(
        out,
        "M{} {}H{}",
        N(plot.x),
        N(plot.bottom()),
        N(plot.right())
    )?;
    out.push_str(r#""/>"#);
    let labels: Vec<(f64, String)> = b
        .categories
        .iter()
        .enumerate()
        .step_by(every)
        .map(|(j, cat)| (bar_x(j) + bar_w / 2.0, clip(cat, 10)))
        .collect();
    x_labels(out, &plot, labels.iter().map(|(lx, l)| (*lx, l.as_str())))?;

    // Invisible columns whose tooltips give each category's figures.
    out.push_str(r#"<g class="hit" fill-opacity="0">"#);
    for (j, cat) in b.categories.iter().enumerate() {
        let mut tip = format!("{cat}: {}", format_value(totals[j], b.unit));
        for (s, layer) in b.series.iter().zip(&layers) {
            if let Some(&(lo, hi)) = layer.get(j).filter(|(lo, hi)| hi > lo) {
                write!(tip, "; {} {}", s.name, format_value(hi - lo, b.unit))?;
            }
        }
        write!(
            out,
            r#"<rect x="{}" y="{}" width="{}" height="{}"><title>"#,
            N(plot.x + j as f64 * band),
            N(plot.y),
            N(band),
            N(plot.h)
        )?;
        esc(out, &tip);
        out.push_str("</title></rect>");
    }
    out.push_str("</g>");
    legend.draw(out, BASE_H)?;
    out.push_str("</svg>");
    Ok(())
}

/// Each layer's `(bottom, top)` per category, stacked in series order.
fn stacks(b: &Bars) -> Vec<Vec<(f64, f64)>> {
    let mut base = vec![0.0; b.categories.len()];
    b.series
        .iter()
        .map(|s| {
            base.iter_mut()
                .enumerate()
                .map(|(i, bottom)| {
                    let v = s
                        .values
                        .get(i)
                        .copied()
                        .filter(|v| v.is_finite() && *v > 0.0);
                    let lo = *bottom;
                    *bottom += v.unwrap_or(0.0);
                    (lo, *bottom)
                })
                .collect()
        })
        .collect()
}

// ---- Phase bars ----

const ROW_H: f64 = 18.0;

fn draw_phases(out: &mut String, title: &str, unit: Unit, rows: &[HBar]) -> fmt::Result {
    if rows.is_empty() {
        open(out, "phases", TOP + 80.0, title, unit, EMPTY)?;
        return empty(out, TOP + 80.0);
    }
    let mut phases: Vec<&str> = Vec::new();
    for (phase, _) in rows.iter().flat_map(|r| &r.segments) {
        if !phases.contains(&phase.as_str()) {
            phases.push(phase);
        }
    }
    let value = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
    let totals: Vec<f64> = rows
        .iter()
        .map(|r| r.segments.iter().map(|(_, v)| value(*v)).sum())
        .collect();
    let legend = Legend::layout(phases.iter().copied());
    let plot_h = rows.len() as f64 * ROW_H;
    let axis_h = TOP + plot_h + 22.0;

    let mut desc = format!("{} rows", rows.len());
    for phase in &phases {
        let of_phase = rows
            .iter()
            .flat_map(|r| &r.segments)
            .filter(|(n, _)| n == phase);
        let max = of_phase.map(|(_, v)| value(*v)).fold(0.0, f64::max);
        write!(desc, "; {phase}: max {}", format_value(max, unit))?;
    }
    open(out, "phases", axis_h + legend.height(), title, unit, &desc)?;

    let ticks = nice_ticks(0.0, totals.iter().copied().fold(0.0, f64::max), unit);
    let (lo, hi) = (
        ticks.first().copied().unwrap_or(0.0),
        ticks.last().copied().unwrap_or(1.0),
    );
    let label_chars = rows
        .iter()
        .map(|r| clip(&r.label, 18).chars().count())
        .max()
        .unwrap_or(0);
    let left = 8.0 + label_chars as f64 * CHAR_W + 6.0;
    let plot = Plot {
        x: left,
        y: TOP,
        w: RIGHT - left,
        h: plot_h,
    };
    let x = |v: f64| plot.x + (v - lo) / (hi - lo) * plot.w;

    out.push_str(r#"<path class="grid" stroke="currentColor" stroke-opacity=".15" d=""#);
    for &t in &ticks {
        write!(out, "M{} {}V{}", N(x(t)), N(plot.y), N(plot.bottom()))?;
    }
    out.push_str(r#""/>"#);
    let labels: Vec<(f64, String)> = ticks
        .iter()
        .map(|&t| (x(t), format_value(t, unit)))
        .collect();
    x_labels(out, &plot, labels.iter().map(|(lx, l)| (*lx, l.as_str())))?;
    out.push_str(r#"<g class="axis" text-anchor="end" fill-opacity=".7">"#);
    for (r, row) in rows.iter().enumerate() {
        let ry = plot.y + r as f64 * ROW_H + ROW_H / 2.0 + 3.5;
        write!(out, r#"<text x="{}" y="{}">"#, N(plot.x - 4.0), N(ry))?;
        esc(out, &clip(&row.label, 18));
        out.push_str("</text>");
    }
    out.push_str("</g>");

    // One path per phase, walking each row's segments end to end.
    let mut paths = vec![String::new(); phases.len()];
    for (r, row) in rows.iter().enumerate() {
        let top = plot.y + r as f64 * ROW_H + 3.0;
        let mut at = 0.0;
        for (phase, v) in &row.segments {
            let v = value(*v);
            let Some(p) = phases.iter().position(|n| n == phase) else {
                continue;
            };
            if v > 0.0 {
                let (x0, x1) = (x(at), x(at + v));
                write!(paths[p], "M{} {}H{}v12H{}Z", N(x0), N(top), N(x1), N(x0))?;
            }
            at += v;
        }
    }
    for (p, (phase, d)) in phases.iter().zip(&paths).enumerate() {
        write!(
            out,
            r#"<g class="s{}" fill="currentColor"><title>"#,
            p % PALETTE
        )?;
        esc(out, phase);
        write!(out, r#"</title><path d="{d}"/></g>"#)?;
    }

    // Invisible rows whose tooltips give each row's phases and total.
    out.push_str(r#"<g class="hit" fill-opacity="0">"#);
    for (r, (row, total)) in rows.iter().zip(&totals).enumerate() {
        let parts: Vec<String> = row
            .segments
            .iter()
            .map(|(phase, v)| format!("{phase} {}", format_value(value(*v), unit)))
            .collect();
        let tip = format!(
            "{}: {}; total {}",
            row.label,
            parts.join(", "),
            format_value(*total, unit)
        );
        write!(
            out,
            r#"<rect x="0" y="{}" width="{}" height="{}"><title>"#,
            N(plot.y + r as f64 * ROW_H),
            N(W),
            N(ROW_H)
        )?;
        esc(out, &tip);
        out.push_str("</title></rect>");
    }
    out.push_str("</g>");
    legend.draw(out, axis_h)?;
    out.push_str("</svg>");
    Ok(())
}

// ---- Shared pieces ----

/// The plot area in `viewBox` units.
#[derive(Debug, Clone, Copy)]
struct Plot {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Plot {
    /// A plot area of height `h` below the title, leaving room on the left for the y labels.
    fn left_of_labels(ticks: &[f64], unit: Unit, h: f64) -> Plot {
        let chars = ticks
            .iter()
            .map(|&t| format_value(t, unit).chars().count())
            .max();
        let x = (8.0 + chars.unwrap_or(0) as f64 * CHAR_W + 6.0).max(30.0);
        Plot {
            x,
            y: TOP,
            w: RIGHT - x,
            h,
        }
    }

    fn right(&self) -> f64 {
        self.x + self.w
    }

    fn bottom(&self) -> f64 {
        self.y + self.h
    }

    /// Maps a value to its y coordinate, the first tick at the bottom and the last at the top.
    fn y_scale(&self, ticks: &[f64]) -> impl Fn(f64) -> f64 + use<> {
        let lo = ticks.first().copied().unwrap_or(0.0);
        let hi = ticks
            .last()
            .copied()
            .filter(|&hi| hi > lo)
            .unwrap_or(lo + 1.0);
        let (top, h) = (self.y, self.h);
        move |v| top + (hi - v) / (hi - lo) * h
    }
}

/// Opens the `<svg>` with its accessible `<title>` and `<desc>` and the visible title.
fn open(
    out: &mut String,
    kind: &str,
    height: f64,
    title: &str,
    unit: Unit,
    desc: &str,
) -> fmt::Result {
    write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart {kind}" viewBox="0 0 {} {}" width="100%" preserveAspectRatio="xMidYMid meet" role="img" font-size="11" fill="currentColor"><title>"#,
        N(W),
        N(height)
    )?;
    esc(out, title);
    write!(out, " ({})</title><desc>", unit.label())?;
    esc(out, desc);
    out.push_str(r#"</desc><text class="title" x="8" y="16" font-weight="600">"#);
    esc(out, &clip(title, 56));
    write!(
        out,
        r#"<tspan class="unit" font-weight="400" fill-opacity=".6"> · {}</tspan></text>"#,
        unit.label()
    )
}

/// The empty state: a frame with "No data in this range", then closes the `<svg>`.
fn empty(out: &mut String, height: f64) -> fmt::Result {
    let (x, y, w, h) = (8.0, TOP, W - 16.0, height - TOP - 8.0);
    write!(
        out,
        r#"<rect class="axis" fill="none" stroke="currentColor" stroke-opacity=".3" x="{}" y="{}" width="{}" height="{}"/><text class="empty" x="{}" y="{}" text-anchor="middle" fill-opacity=".7">{EMPTY}</text></svg>"#,
        N(x),
        N(y),
        N(w),
        N(h),
        N(x + w / 2.0),
        N(y + h / 2.0 + 4.0)
    )
}

/// Horizontal grid lines and labels for the y ticks.
fn y_axis(
    out: &mut String,
    plot: &Plot,
    ticks: &[f64],
    unit: Unit,
    y: impl Fn(f64) -> f64,
) -> fmt::Result {
    out.push_str(r#"<path class="grid" stroke="currentColor" stroke-opacity=".15" d=""#);
    for &t in ticks {
        write!(out, "M{} {}H{}", N(plot.x), N(y(t)), N(plot.right()))?;
    }
    out.push_str(r#""/><g class="axis" text-anchor="end" fill-opacity=".7">"#);
    for &t in ticks {
        write!(
            out,
            r#"<text x="{}" y="{}">"#,
            N(plot.x - 4.0),
            N(y(t) + 3.5)
        )?;
        esc(out, &format_value(t, unit));
        out.push_str("</text>");
    }
    out.push_str("</g>");
    Ok(())
}

/// The x axis' labels, each centred under its `x` (kept inside the `viewBox`).
fn x_labels<'a>(
    out: &mut String,
    plot: &Plot,
    labels: impl Iterator<Item = (f64, &'a str)>,
) -> fmt::Result {
    out.push_str(r#"<g class="axis" text-anchor="middle" fill-opacity=".7">"#);
    for (x, label) in labels {
        write!(
            out,
            r#"<text x="{}" y="{}">"#,
            N(clamp_label(x, label)),
            N(plot.bottom() + 14.0)
        )?;
        esc(out, label);
        out.push_str("</text>");
    }
    out.push_str("</g>");
    Ok(())
}

/// Moves a centred label at `x` so that it stays inside the `viewBox`.
fn clamp_label(x: f64, label: &str) -> f64 {
    let half = label.chars().count() as f64 * CHAR_W / 2.0;
    x.min(W - 2.0 - half).max(half + 2.0)
}

/// Legend entries laid out in rows below the plot: `(x, row, clipped name)` per series.
struct Legend {
    items: Vec<(f64, usize, String)>,
}

impl Legend {
    fn layout<'a>(names: impl Iterator<Item = &'a str>) -> Legend {
        let (mut x, mut row, mut items) = (8.0, 0, Vec::new());
        for name in names {
            let label = clip(name, 28);
            let w = 14.0 + label.chars().count() as f64 * CHAR_W + 12.0;
            if x + w > RIGHT && x > 8.0 {
                (x, row) = (8.0, row + 1);
            }
            items.push((x, row, label));
            x += w;
        }
        Legend { items }
    }

    fn height(&self) -> f64 {
        match self.items.last() {
            Some((_, rows, _)) => (*rows + 1) as f64 * LEGEND_ROW + 4.0,
            None => 0.0,
        }
    }

    /// Draws the entries, the first row starting at `top`.
    fn draw(&self, out: &mut String, top: f64) -> fmt::Result {
        if self.items.is_empty() {
            return Ok(());
        }
        out.push_str(r#"<g class="legend">"#);
        for (i, (x, row, label)) in self.items.iter().enumerate() {
            let y = top + *row as f64 * LEGEND_ROW + 2.0;
            write!(
                out,
                r#"<rect class="s{}" fill="currentColor" x="{}" y="{}" width="10" height="10" rx="2"/><text x="{}" y="{}">"#,
                i % PALETTE,
                N(*x),
                N(y),
                N(x + 14.0),
                N(y + 9.0)
            )?;
            esc(out, label);
            out.push_str("</text>");
        }
        out.push_str("</g>");
        Ok(())
    }
}

/// 3–5 evenly spaced "nice" ticks (1, 2 or 5 × 10ⁿ apart) covering `lo..=hi` and zero.
/// Bytes step in binary multiples (KiB, MiB…) so that their labels stay round.
fn nice_ticks(lo: f64, hi: f64, unit: Unit) -> Vec<f64> {
    nice_span(lo.min(0.0), hi.max(0.0), unit)
}

/// Like [`nice_ticks`] without reaching for zero, unless `lo..=hi` is empty.
fn nice_span(lo: f64, hi: f64, unit: Unit) -> Vec<f64> {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo.min(0.0), hi.max(0.0))
    };
    let (lo, hi) = if hi > lo { (lo, hi) } else { (0.0, 1.0) };
    let scale = match unit {
        Unit::Bytes => {
            let e = (lo.abs().max(hi).log2() / 10.0).floor().max(0.0);
            1024f64.powf(e)
        }
        _ => 1.0,
    };
    let (a, b) = (lo / scale, hi / scale);
    if !(b - a).is_finite() {
        return vec![lo, hi];
    }
    let e0 = ((b - a) / 4.0).log10().floor() as i32 - 1;
    for e in e0..=e0 + 3 {
        for m in [1.0, 2.0, 5.0] {
            // Divide for negative exponents: 1 / 1000 is exact where 10^-3 is not.
            let step = if e < 0 {
                m / 10f64.powi(-e)
            } else {
                m * 10f64.powi(e)
            };
            let first = (a / step + 1e-9).floor();
            let last = (b / step - 1e-9).ceil();
            if last - first <= 4.0 {
                return (first as i64..=last as i64)
                    .map(|k| k as f64 * step * scale)
                    .collect();
            }
        }
    }
    vec![lo, hi]
}

/// Time ticks for `from..=to` with their UTC labels: times of day up to two days, then
/// weekdays ("Mon 02") up to two weeks, then dates ("12-05").
fn time_ticks(from: i64, to: i64) -> Vec<(i64, String)> {
    const STEPS: [i64; 21] = [
        1,
        2,
        5,
        10,
        15,
        30,
        60,
        120,
        300,
        600,
        900,
        1800,
        3600,
        7200,
        10_800,
        21_600,
        43_200,
        DAY,
        2 * DAY,
        7 * DAY,
        14 * DAY,
    ];
    let span = to.saturating_sub(from).max(1);
    let min_step = if span > 2 * DAY { DAY } else { 1 };
    let step = STEPS
        .into_iter()
        .find(|&s| s >= min_step && span / s <= 6)
        .unwrap_or((span / 6 / (30 * DAY) + 1) * 30 * DAY);
    let format = if step < 60 {
        "%H:%M:%S"
    } else if span <= 2 * DAY {
        "%H:%M"
    } else if span <= 14 * DAY {
        "%a %d"
    } else if span <= 366 * DAY {
        "%m-%d"
    } else {
        "%Y-%m"
    };
    let mut next = from.checked_add((step - from.rem_euclid(step)) % step);
    let mut ticks = Vec::new();
    while let Some(t) = next.filter(|&t| t <= to) {
        // Midnight on a long time-of-day axis shows the day instead.
        let f = if format == "%H:%M" && span > 6 * 3600 && t.rem_euclid(DAY) == 0 {
            "%a %d"
        } else {
            format
        };
        if let Ok(ts) = jiff::Timestamp::from_second(t) {
            ticks.push((t, ts.strftime(f).to_string()));
        }
        next = t.checked_add(step);
    }
    ticks
}

// ---- Text ----

/// Appends `s` escaped for XML text and attributes, dropping control characters XML forbids.
fn esc(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
}

/// `s` cut to `max` characters, ending in "…" when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A coordinate rounded to one decimal, without a trailing ".0" (and never NaN).
struct N(f64);

impl fmt::Display for N {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = (self.0 * 10.0).round() / 10.0;
        if !r.is_finite() || r == 0.0 {
            f.write_str("0")
        } else if r.fract() == 0.0 {
            write!(f, "{r}")
        } else {
            write!(f, "{r:.1}")
        }
    }
}

// ---- Numbers ----

/// Decimal places that keep `digits` significant digits of `v`.
fn decimals(v: f64, digits: i32) -> usize {
    if v == 0.0 {
        return 0;
    }
    (digits - 1 - v.abs().log10().floor() as i32).max(0) as usize
}

/// `v` rounded to `digits` significant digits.
fn round_sig(v: f64, digits: i32) -> f64 {
    let d = decimals(v, digits) as i32;
    let f = 10f64.powi(d);
    (v * f).round() / f
}

/// `v` with up to `digits` significant digits, trailing zeros trimmed.
fn sig(v: f64, digits: i32) -> String {
    trim(format!("{v:.*}", decimals(v, digits)))
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn sign(v: f64) -> &'static str {
    if v < 0.0 { "-" } else { "" }
}

fn duration(v: f64) -> String {
    let a = round_sig(v.abs(), 3);
    let s = sign(v);
    if a == 0.0 {
        "0 s".to_owned()
    } else if a < 1e-3 {
        format!("{s}{} µs", sig(a * 1e6, 3))
    } else if a < 1.0 {
        format!("{s}{} ms", sig(a * 1e3, 3))
    } else if a < 60.0 {
        format!("{s}{} s", sig(a, 3))
    } else {
        let secs = v.abs().round() as u64;
        let (d, h, m, sec) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
        match (d, h, m, sec) {
            (0, 0, m, 0) => format!("{s}{m}m"),
            (0, 0, m, sec) => format!("{s}{m}m {sec}s"),
            (0, h, 0, _) => format!("{s}{h}h"),
            (0, h, m, _) => format!("{s}{h}h {m}m"),
            (d, 0, _, _) => format!("{s}{d}d"),
            (d, h, _, _) => format!("{s}{d}d {h}h"),
        }
    }
}

fn percent(v: f64) -> String {
    let p = v * 100.0;
    if p != 0.0 && p.abs() < 0.01 {
        return format!("{}%", sig(p, 2));
    }
    let mut s = trim(format!("{p:.2}"));
    // Do not round 99.999% up to a 100% that was not reached.
    for d in 3..=4 {
        if s == "100" && v < 1.0 {
            s = trim(format!("{p:.d$}"));
        }
    }
    format!("{s}%")
}

/// Metric suffixes: 1234 is "1.23k".
fn si(v: f64) -> String {
    let a = round_sig(v.abs(), 3);
    let (x, suffix) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|&(f, _)| a >= f)
        .map_or((a, ""), |(f, s)| (a / f, s));
    format!("{}{}{suffix}", sign(v), sig(x, 3))
}

fn dollars(v: f64) -> String {
    let a = v.abs();
    let body = if a == 0.0 {
        "0".to_owned()
    } else if a < 1.0 {
        // Cents keep two places ("$0.50"); smaller amounts keep three significant digits.
        let mut s = sig(a, 3);
        if s.find('.').is_some_and(|dot| s.len() - dot == 2) {
            s.push('0');
        }
        s
    } else if a < 1000.0 {
        format!("{a:.2}")
    } else {
        si(a)
    };
    format!("{}${body}", sign(v))
}

fn bytes(v: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let (mut a, mut i) = (v.abs(), 0);
    while a >= 1024.0 && i < UNITS.len() - 1 {
        a /= 1024.0;
        i += 1;
    }
    format!("{}{} {}", sign(v), sig(a, 3), UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_733_392_800; // 2024-12-05T10:00:00Z, a Thursday

    fn line(series: Vec<Series>) -> Line {
        Line {
            title: "Latency".into(),
            unit: Unit::Seconds,
            series,
            threshold: None,
            from: T0,
            to: T0 + 3600,
        }
    }

    fn series(name: &str, values: &[Option<f64>]) -> Series {
        Series {
            name: name.into(),
            points: values
                .iter()
                .enumerate()
                .map(|(i, v)| (T0 + 60 * i as i64, *v))
                .collect(),
        }
    }

    /// The `d` of the first path inside the group with class `class`.
    fn path_of<'a>(svg: &'a str, class: &str) -> &'a str {
        let group = &svg[svg.find(&format!(r#"<g class="{class}""#)).expect("group")..];
        let d = &group[group.find(" d=\"").expect("path") + 4..];
        &d[..d.find('"').expect("end of d")]
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn empty_state_says_so_without_nan() {
        let cases = [
            line(vec![]),
            line(vec![series(
                "api",
                &[None, Some(f64::NAN), Some(f64::INFINITY)],
            )]),
            // Values outside the range do not count.
            Line {
                from: T0 + 7200,
                to: T0 + 9000,
                ..line(vec![series("api", &[Some(1.0)])])
            },
        ];
        for c in &cases {
            let svg = line_chart(c);
            assert!(svg.contains("No data in this range"), "{svg}");
            assert!(svg.contains("Latency") && svg.contains("duration"), "{svg}");
            assert!(
                !svg.contains("NaN") && !svg.contains("inf") && !svg.contains("d=\"\""),
                "{svg}"
            );
        }
        // Extreme ranges and values neither panic nor print NaN.
        let extreme = Line {
            from: i64::MIN,
            to: i64::MAX,
            ..line(vec![series(
                "api",
                &[Some(f64::MAX), Some(-f64::MAX), Some(1e-320)],
            )])
        };
        assert!(!line_chart(&extreme).contains("NaN"));
        let bars = bar_chart(&Bars {
            title: "Cost".into(),
            unit: Unit::Dollars,
            categories: vec![],
            series: vec![],
        });
        assert!(bars.contains("No data in this range"));
        let phases = phase_bars("Start-up", Unit::Milliseconds, &[]);
        assert!(phases.contains("No data in this range"));
    }

    #[test]
    fn gaps_break_the_line_and_lone_points_are_dots() {
        let c = line(vec![
            series(
                "api",
                &[
                    Some(0.1),
                    Some(0.2),
                    None,
                    Some(f64::NAN),
                    Some(0.3),
                    Some(0.2),
                ],
            ),
            series("db", &[Some(0.05)]),
        ]);
        let svg = line_chart(&c);
        let d = path_of(&svg, "s0");
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert!(!svg.contains("NaN"));
        // A one-point series is a dot, not an empty path.
        let db = &svg[svg.find(r#"<g class="s1""#).expect("db group")..];
        let db = &db[..db.find("</g>").expect("end")];
        assert!(db.contains("<circle") && !db.contains("<path"), "{db}");
        // Zero is drawn as zero, a gap is not.
        let (d, dots) = line_path(
            &[(0, Some(1.0)), (1, None), (2, Some(0.0)), (3, Some(0.0))],
            |t| t as f64,
            |v| v,
        );
        assert_eq!(d, "M2 0L3 0");
        assert_eq!(dots, vec![(0.0, 1.0)]);
    }

    #[test]
    fn text_is_escaped() {
        let name = r#"<script>alert("x&y's")</script>"#;
        let mut c = line(vec![series(name, &[Some(0.1), Some(0.2)])]);
        c.title = name.into();
        c.threshold = Some((0.15, name.into()));
        let b = Bars {
            title: name.into(),
            unit: Unit::Dollars,
            categories: vec![name.into()],
            series: vec![BarSeries {
                name: name.into(),
                values: vec![1.0],
            }],
        };
        let rows = [HBar {
            label: name.into(),
            segments: vec![(name.into(), 5.0)],
        }];
        for svg in [
            line_chart(&c),
            bar_chart(&b),
            phase_bars(name, Unit::Milliseconds, &rows),
        ] {
            assert!(
                !svg.contains("<script") && !svg.contains("(\"x") && !svg.contains("y's"),
                "{svg}"
            );
            assert!(
                svg.contains("&lt;script&gt;alert(&quot;x&amp;y&#39;s&quot;)"),
                "{svg}"
            );
        }
    }

    #[test]
    fn nice_ticks_for_common_ranges() {
        assert_close(
            &nice_ticks(0.0, 0.0037, Unit::Seconds),
            &[0.0, 0.001, 0.002, 0.003, 0.004],
        );
        assert_close(
            &nice_ticks(0.0, 1234.0, Unit::PerSecond),
            &[0.0, 500.0, 1000.0, 1500.0],
        );
        assert_close(&nice_ticks(0.0, 1.0, Unit::Percent), &[0.0, 0.5, 1.0]);
        assert_close(
            &nice_span(0.9985, 0.9995, Unit::Percent),
            &[0.9985, 0.999, 0.9995],
        );
        assert_close(
            &nice_ticks(0.0, 3.0 * 1024.0 * 1024.0, Unit::Bytes),
            &[0.0, 1048576.0, 2097152.0, 3145728.0],
        );
        assert_close(&nice_ticks(-3.0, 7.0, Unit::Count), &[-5.0, 0.0, 5.0, 10.0]);
        assert_close(&nice_ticks(0.0, 0.0, Unit::Count), &[0.0, 0.5, 1.0]);
        let labels: Vec<String> = nice_ticks(0.0, 0.0037, Unit::Seconds)
            .iter()
            .map(|&t| format_value(t, Unit::Seconds))
            .collect();
        assert_eq!(labels, ["0 s", "1 ms", "2 ms", "3 ms", "4 ms"]);
        for hi in [0.3, 7.0, 42.0, 99.0, 101.0, 12345.0, 0.00071] {
            let n = nice_ticks(0.0, hi, Unit::Count).len();
            assert!((3..=5).contains(&n), "{hi}: {n} ticks");
        }
    }

    #[test]
    fn time_labels_suit_the_range() {
        let hour: Vec<String> = time_ticks(T0, T0 + 3600)
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(
            hour,
            [
                "10:00", "10:10", "10:20", "10:30", "10:40", "10:50", "11:00"
            ]
        );

        let month = time_ticks(T0 - 30 * DAY, T0);
        assert!((3..=6).contains(&month.len()), "{month:?}");
        for (t, label) in &month {
            assert_eq!(t % DAY, 0);
            assert!(label.len() == 5 && label.as_bytes()[2] == b'-', "{label}");
        }
        assert_eq!(month.first().map(|(_, l)| l.as_str()), Some("11-07"));

        let week: Vec<String> = time_ticks(T0 - 7 * DAY, T0)
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(week.first().map(String::as_str), Some("Fri 29"), "{week:?}");

        // A day's axis names midnight by its day.
        let day: Vec<String> = time_ticks(T0 - DAY, T0)
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert!(day.contains(&"Thu 05".to_owned()), "{day:?}");

        let svg = line_chart(&line(vec![series("api", &[Some(0.1), Some(0.2)])]));
        assert!(svg.contains(">10:30</text>"), "{svg}");
    }

    #[test]
    fn bars_stack_to_the_sum() {
        let b = Bars {
            title: "Cost per day".into(),
            unit: Unit::Dollars,
            categories: vec!["Mon 02".into(), "Tue 03".into(), "Wed 04".into()],
            series: vec![
                BarSeries {
                    name: "api".into(),
                    values: vec![1.0, 2.0, f64::NAN],
                },
                BarSeries {
                    name: "web".into(),
                    values: vec![0.5, 1.5],
                },
                BarSeries {
                    name: "db".into(),
                    values: vec![1.0, 0.5, -1.0],
                },
            ],
        };
        let layers = stacks(&b);
        assert_eq!(layers[0][1], (0.0, 2.0));
        assert_eq!(layers[1][1], (2.0, 3.5));
        assert_eq!(layers[2][1], (3.5, 4.0));
        assert_eq!(layers[2][2], (0.0, 0.0));

        // The tallest stack (4.0) reaches the top tick, which is the top of the plot.
        let svg = bar_chart(&b);
        assert!(svg.contains(">$4.00</text>"), "{svg}");
        let top = path_of(&svg, "s2");
        assert!(top.contains(&format!(" {}h", N(TOP))), "{top}");
        for class in ["s0", "s1", "s2"] {
            assert_eq!(svg.matches(&format!(r#"<g class="{class}""#)).count(), 1);
        }
        assert!(
            svg.contains("Tue 03: $4.00; api $2.00; web $1.50; db $0.50"),
            "{svg}"
        );
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn phase_bars_draw_a_path_per_phase() {
        let rows = [
            HBar {
                label: "i-1".into(),
                segments: vec![
                    ("image".into(), 120.0),
                    ("container".into(), 30.0),
                    ("ready".into(), 200.0),
                ],
            },
            HBar {
                label: "i-2".into(),
                segments: vec![("container".into(), 25.0), ("ready".into(), 80.0)],
            },
        ];
        let svg = phase_bars("Start-up", Unit::Milliseconds, &rows);
        assert!(
            svg.contains("i-1: image 120 ms, container 30 ms, ready 200 ms; total 350 ms"),
            "{svg}"
        );
        assert_eq!(path_of(&svg, "s1").matches('M').count(), 2);
        assert!(svg.contains(">image</text>") && svg.contains(">ready</text>"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn format_value_cases() {
        let cases = [
            (0.0123, Unit::Seconds, "12.3 ms"),
            (0.000_45, Unit::Seconds, "450 µs"),
            (1.5, Unit::Seconds, "1.5 s"),
            (0.9996, Unit::Seconds, "1 s"),
            (100.0, Unit::Seconds, "1m 40s"),
            (7200.0, Unit::Seconds, "2h"),
            (250.0, Unit::Milliseconds, "250 ms"),
            (0.9991, Unit::Percent, "99.91%"),
            (0.5, Unit::Percent, "50%"),
            (0.99999, Unit::Percent, "99.999%"),
            (1.0, Unit::Percent, "100%"),
            (0.000_123, Unit::Dollars, "$0.000123"),
            (0.5, Unit::Dollars, "$0.50"),
            (12.5, Unit::Dollars, "$12.50"),
            (0.0, Unit::Dollars, "$0"),
            (-2.0, Unit::Dollars, "-$2.00"),
            (1536.0, Unit::Bytes, "1.5 KiB"),
            (512.0, Unit::Bytes, "512 B"),
            (3.2, Unit::PerSecond, "3.2/s"),
            (1500.0, Unit::PerSecond, "1.5k/s"),
            (1234.0, Unit::Count, "1.23k"),
            (-7.0, Unit::Count, "-7"),
            (1.0, Unit::Cores, "1 core"),
            (0.25, Unit::Cores, "0.25 cores"),
            (f64::NAN, Unit::Seconds, "n/a"),
        ];
        for (v, unit, want) in cases {
            assert_eq!(format_value(v, unit), want, "{v} {unit:?}");
        }
    }

    #[test]
    fn chart_is_responsive_accessible_and_classed() {
        let mut c = line(vec![
            series("api", &[Some(0.1), Some(0.3)]),
            series("db", &[Some(0.2), None]),
        ]);
        c.threshold = Some((0.25, "SLO".into()));
        let svg = line_chart(&c);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(r#"viewBox="0 0 480 "#) && svg.contains(r#"width="100%""#));
        assert!(svg.contains("preserveAspectRatio") && svg.contains(r#"role="img""#));
        let open_tag = &svg[..svg.find('>').expect("svg tag")];
        assert!(
            !open_tag.contains("height=") && !open_tag.contains("width=\"4"),
            "{open_tag}"
        );
        assert!(svg.contains("<title>Latency (duration)</title>"));
        assert!(
            svg.contains("<desc>api: latest 300 ms, min 100 ms, max 300 ms; db: latest 200 ms"),
            "{svg}"
        );
        assert!(svg.contains("<title>api: latest 300 ms"));
        assert!(svg.contains(r#"<g class="threshold">"#) && svg.contains(">SLO 250 ms</text>"));
        assert!(
            svg.contains(r#"<rect class="s1""#) && svg.contains(">db</text>"),
            "legend"
        );
        assert!(!svg.contains('#'), "no inline colours");
        // Classes cycle after eight series.
        let many: Vec<Series> = (0..9)
            .map(|i| series(&format!("s{i}"), &[Some(1.0), Some(2.0)]))
            .collect();
        let svg = line_chart(&line(many));
        assert_eq!(svg.matches(r#"<g class="s0""#).count(), 2);
    }

    #[test]
    fn availability_near_100_percent_is_not_flattened() {
        let c = Line {
            title: "Availability".into(),
            unit: Unit::Percent,
            series: vec![series("api", &[Some(0.9995), Some(0.9987), Some(1.0)])],
            threshold: Some((0.999, "target".into())),
            from: T0,
            to: T0 + 3600,
        };
        let svg = line_chart(&c);
        assert!(
            svg.contains(">99.9%</text>") && !svg.contains(">0%</text>"),
            "{svg}"
        );
        // Latency, cost and the like keep their zero.
        let svg = line_chart(&line(vec![series("api", &[Some(0.1), Some(0.11)])]));
        assert!(svg.contains(">0 s</text>"), "{svg}");
    }

    #[test]
    fn a_360_point_series_stays_small() {
        let points = (0..360)
            .map(|i| (T0 + 10 * i, Some(0.05 + 0.04 * (i as f64 / 9.0).sin())))
            .collect();
        let c = Line {
            from: T0,
            to: T0 + 3600,
            ..line(vec![Series {
                name: "api".into(),
                points,
            }])
        };
        let svg = line_chart(&c);
        println!("360-point chart: {} bytes", svg.len());
        assert!(svg.len() < 20_000, "{} bytes", svg.len());
        assert_eq!(
            svg.matches("<path").count(),
            3,
            "grid, axis and one series path"
        );
    }
}
