//! Hand-written SVG charts: grouped bars and lines, with axes, ticks and a legend. No dependencies.

use std::fmt::Write;

/// Colours of the series, in order (Tableau 10).
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// Width of the plot area.
const PLOT: f64 = 520.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 90.0;

/// A named series of values.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn black and thicker (a summary such as the mean).
    pub bold: bool,
    /// One label per point (e.g. the method that made it), in its tooltip; empty: none.
    pub labels: Vec<String>,
    /// Whether the labels are also written beside the points.
    pub show_labels: bool,
    /// One group per point: lines join only the points of a group (in order of x), so points of
    /// different kinds (int8, low rank, 4-bit) are not joined as if one were a step towards the other.
    /// Empty: one group.
    pub groups: Vec<usize>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// About 5 round tick values within `[lo, hi]`.
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut v = Vec::new();
    while t <= hi + step * 1e-9 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    v
}

fn fmt_tick(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

struct Frame {
    /// Total width and the legend's column, which fits the longest series name.
    w: f64,
    right: f64,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn new(names: &[&str], x: (f64, f64), y: (f64, f64)) -> Frame {
        let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        let right = (40.0 + 7.0 * longest as f64).max(100.0);
        Frame {
            w: LEFT + PLOT + right,
            right,
            x0: x.0,
            x1: x.1,
            y0: y.0,
            y1: y.1,
        }
    }
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * PLOT
    }
    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)
    }
}

fn header(out: &mut String, f: &Frame, title: &str) {
    let w = f.w;
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{H}" viewBox="0 0 {w} {H}" font-family="sans-serif" font-size="12">
<rect width="{w}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{}</text>
"#,
        w / 2.0,
        esc(title)
    );
}

fn y_axis(out: &mut String, f: &Frame, yt: &[f64], label: &str) {
    for &t in yt {
        let y = f.py(t);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            f.w - f.right,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        H - BOTTOM,
        (TOP + H - BOTTOM) / 2.0,
        esc(label)
    );
    if f.y0 < 0.0 && f.y1 > 0.0 {
        let y = f.py(0.0);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333"/>"##,
            f.w - f.right
        );
    }
}

/// The colour of series `i`.
fn colour(i: usize, bold: bool) -> &'static str {
    if bold {
        "#000"
    } else {
        PALETTE[i % PALETTE.len()]
    }
}

fn legend(out: &mut String, f: &Frame, entries: &[(&str, &str)]) {
    for (i, (n, c)) in entries.iter().enumerate() {
        let y = TOP + 8.0 + 18.0 * i as f64;
        let x = f.w - f.right + 14.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{}" y="{:.1}">{}</text>"#,
            y - 10.0,
            c,
            x + 18.0,
            y,
            esc(n)
        );
    }
}

fn range(vals: impl Iterator<Item = f64>, include_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = if include_zero {
        (0.0, 0.0)
    } else {
        (f64::INFINITY, f64::NEG_INFINITY)
    };
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (
        if include_zero && lo >= 0.0 {
            0.0
        } else {
            lo - pad
        },
        hi + pad,
    )
}

/// Writes `label` beside the point at pixel `(cx, cy)`: to its right (to its left near the plot's right
/// edge), moved up or down, with a leader line, until it overlaps no label placed before.
fn place_label(
    out: &mut String,
    placed: &mut Vec<(f64, f64, f64, f64)>,
    f: &Frame,
    (cx, cy): (f64, f64),
    label: &str,
    colour: &str,
) {
    const CHAR_W: f64 = 6.0;
    const LINE_H: f64 = 12.0;
    let w = CHAR_W * label.chars().count() as f64;
    let right_edge = f.w - f.right;
    let left = cx + 6.0 + w > right_edge;
    let x0 = if left { cx - 6.0 - w } else { cx + 6.0 };
    let overlaps = |y: f64, placed: &[(f64, f64, f64, f64)]| {
        placed
            .iter()
            .any(|&(a, b, c, d)| x0 < c && a < x0 + w && y - LINE_H < d && b < y)
    };
    // Baselines tried: beside the point, then further and further up and down.
    let mut y = cy + 4.0;
    for k in 0..24 {
        let step = LINE_H * ((k + 1) / 2) as f64;
        let t = if k % 2 == 0 {
            cy + 4.0 - step
        } else {
            cy + 4.0 + step
        };
        let t = t.clamp(TOP + LINE_H, H - BOTTOM - 2.0);
        if !overlaps(t, placed) {
            y = t;
            break;
        }
    }
    placed.push((x0, y - LINE_H, x0 + w, y + 2.0));
    if (y - (cy + 4.0)).abs() > 1.0 {
        let _ = writeln!(
            out,
            r#"<line x1="{cx:.1}" y1="{cy:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="0.5"/>"#,
            if left { x0 + w } else { x0 },
            y - 4.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{x0:.1}" y="{y:.1}" font-size="10" fill="{colour}">{}</text>"#,
        esc(label)
    );
}

/// Grouped bars: one group per category, one bar per series (`values[series][category]`).
pub fn bar_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let mut out = String::new();
    let (lo, hi) = range(series.iter().flat_map(|(_, v)| v.iter().copied()), true);
    let yt = ticks(lo, hi);
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    let f = Frame::new(&names, (0.0, categories.len().max(1) as f64), (lo, hi));
    header(&mut out, &f, title);
    y_axis(&mut out, &f, &yt, y_label);
    let n = series.len().max(1) as f64;
    let slot = f.px(1.0) - f.px(0.0);
    let bw = slot * 0.8 / n;
    for (c, cat) in categories.iter().enumerate() {
        for (s, (_, vals)) in series.iter().enumerate() {
            let Some(&v) = vals.get(c) else { continue };
            if !v.is_finite() {
                continue;
            }
            let x = f.px(c as f64) + slot * 0.1 + bw * s as f64;
            let (ya, yb) = (f.py(v.max(0.0).max(f.y0)), f.py(v.min(0.0).max(f.y0)));
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{ya:.1}" width="{bw:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                (yb - ya).max(0.5),
                PALETTE[s % PALETTE.len()],
                esc(cat),
                fmt_tick(v)
            );
        }
        let (x, y) = (f.px(c as f64 + 0.5), H - BOTTOM + 16.0);
        if categories.len() > 9 {
            // Many categories: slanted labels.
            let _ = writeln!(
                out,
                r#"<text transform="translate({x:.1},{:.1}) rotate(-35)" text-anchor="end" font-size="10">{}</text>"#,
                y - 6.0,
                esc(cat)
            );
        } else {
            let _ = writeln!(
                out,
                r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle">{}</text>"#,
                esc(cat)
            );
        }
    }
    let entries: Vec<(&str, &str)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, colour(i, false)))
        .collect();
    legend(&mut out, &f, &entries);
    out.push_str("</svg>\n");
    out
}

/// Lines with markers, one per series; `x` and `y` axes linear.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let mut out = String::new();
    let (xlo, xhi) = range(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        false,
    );
    let (ylo, yhi) = range(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
        true,
    );
    let (xt, yt) = (ticks(xlo, xhi), ticks(ylo, yhi));
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    let f = Frame::new(&names, (xlo, xhi), (ylo, yhi));
    header(&mut out, &f, title);
    y_axis(&mut out, &f, &yt, y_label);
    for &t in xt.iter().filter(|&&t| t >= xlo && t <= xhi) {
        let x = f.px(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 5.0,
            H - BOTTOM + 18.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        H - BOTTOM,
        f.w - f.right,
        H - BOTTOM,
        (LEFT + f.w - f.right) / 2.0,
        H - 16.0,
        esc(x_label)
    );
    let mut placed: Vec<(f64, f64, f64, f64)> = Vec::new();
    let mut label_svg = String::new();
    for (i, s) in series.iter().enumerate() {
        let (colour, width) = (colour(i, s.bold), if s.bold { 3 } else { 2 });
        // (x, y, label, group) of the finite points.
        let pts: Vec<(f64, f64, &str, usize)> = s
            .points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.0.is_finite() && p.1.is_finite())
            .map(|(k, &(x, y))| {
                (
                    x,
                    y,
                    s.labels.get(k).map_or("", String::as_str),
                    s.groups.get(k).copied().unwrap_or(0),
                )
            })
            .collect();
        let mut groups: Vec<usize> = pts.iter().map(|p| p.3).collect();
        groups.sort_unstable();
        groups.dedup();
        for g in groups {
            let mut line: Vec<(f64, f64)> = pts
                .iter()
                .filter(|p| p.3 == g)
                .map(|p| (p.0, p.1))
                .collect();
            if line.len() < 2 {
                continue;
            }
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            let path: Vec<String> = line
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", f.px(x), f.py(y)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="{width}"/>"#,
                path.join(" ")
            );
        }
        for &(x, y, label, _) in &pts {
            let what = if label.is_empty() {
                esc(&s.name)
            } else {
                format!("{}, {}", esc(&s.name), esc(label))
            };
            let (cx, cy) = (f.px(x), f.py(y));
            let _ = writeln!(
                out,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3.5" fill="{colour}"><title>{what}: ({}, {})</title></circle>"#,
                fmt_tick(x),
                fmt_tick(y)
            );
            if s.show_labels && !label.is_empty() {
                place_label(&mut label_svg, &mut placed, &f, (cx, cy), label, colour);
            }
        }
    }
    // Labels last, above every line.
    out.push_str(&label_svg);
    let entries: Vec<(&str, &str)> = series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), colour(i, s.bold)))
        .collect();
    legend(&mut out, &f, &entries);
    out.push_str("</svg>\n");
    out
}
