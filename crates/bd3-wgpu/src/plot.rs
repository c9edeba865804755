//! `bd3-wgpu plot`: the quality-speed figure as SVG written directly (no plotting dependency): Gen PPL
//! against NFE with ± one standard error bars, and entropy against NFE, one series per sampler.
//!
//! Input: a tab-separated table (what `scripts/quality-speed.sh` writes), one row per run, lines
//! starting with `#` ignored:
//!
//!   series  point  nfe  gen_ppl  gen_ppl_se  entropy  entropy_se
//!   DDPM    T=4    128  153.2    4.1         4.31     0.02
//!
//! Rows with the same `series` form one line, ordered by NFE; `point` labels the marker.

use bd3_model::{Error, Result};
use std::fmt::Write as _;
use std::path::PathBuf;

/// One marker: its position, its ± error (standard error) and a short label.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub err: f64,
    pub label: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

/// One panel of a figure.
pub struct Panel<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// A base-2 logarithmic x axis (NFE spans powers of two).
    pub log2_x: bool,
    pub series: &'a [Series],
}

/// The arguments of `plot`.
#[derive(Clone, Debug, clap::Args)]
pub struct PlotArgs {
    /// The tab-separated table (sampler, NFE, Gen PPL, s.e., entropy, s.e.), as
    /// scripts/quality-speed.sh writes it
    #[arg(long, value_name = "FILE")]
    pub table: PathBuf,
    /// Where the SVG goes
    #[arg(long, value_name = "FILE.svg")]
    pub out: PathBuf,
}

/// Colour-blind-safe palette (Okabe–Ito), one colour per series in order.
const COLOURS: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];
const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 340.0;
/// Margins inside a panel: left (y tick labels and title), right, top (title), bottom (x labels).
const MARGIN: (f64, f64, f64, f64) = (62.0, 14.0, 30.0, 46.0);

/// Read the table: (Gen PPL series, entropy series), both keyed by the table's `series` column.
pub fn read_table(text: &str, name: &str) -> Result<(Vec<Series>, Vec<Series>)> {
    let (mut ppl, mut ent): (Vec<Series>, Vec<Series>) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let bad = |m: &str| {
            Error::Invalid(format!("{name} line {}: {m} (expected 7 tab-separated fields: series point nfe gen_ppl gen_ppl_se entropy entropy_se)", i + 1))
        };
        if f.len() != 7 {
            return Err(bad(&format!("{} fields", f.len())));
        }
        let num = |k: usize| {
            f[k].trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() || f[k].trim() == "nan")
                .ok_or_else(|| bad(&format!("`{}` is not a number", f[k])))
        };
        let (x, y, ye, e, ee) = (num(2)?, num(3)?, num(4)?, num(5)?, num(6)?);
        if !(x > 0.0 && y.is_finite() && e.is_finite()) {
            return Err(bad("NFE must be positive and the values finite"));
        }
        // A standard error that is not a number (a single sample) draws no bar.
        let err = |v: f64| if v.is_finite() { v.abs() } else { 0.0 };
        for (set, y, se) in [(&mut ppl, y, ye), (&mut ent, e, ee)] {
            let p = Point {
                x,
                y,
                err: err(se),
                label: f[1].trim().to_string(),
            };
            match set.iter_mut().find(|s| s.name == f[0]) {
                Some(s) => s.points.push(p),
                None => set.push(Series {
                    name: f[0].to_string(),
                    points: vec![p],
                }),
            }
        }
    }
    if ppl.is_empty() {
        return Err(Error::Invalid(format!("{name}: no rows to plot")));
    }
    for s in ppl.iter_mut().chain(ent.iter_mut()) {
        s.points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    Ok((ppl, ent))
}

/// `plot --table FILE --out FILE.svg`: the two-panel quality-speed figure.
pub fn run(args: &PlotArgs) -> Result<()> {
    let bytes = bd3_model::error::read_file(&args.table)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::File {
        path: args.table.to_path_buf(),
        message: "not UTF-8 text".into(),
    })?;
    let (ppl, ent) = read_table(&text, &args.table.display().to_string())?;
    let panels = [
        Panel {
            title: "Generative perplexity (lower is better)",
            x_label: "NFE (model calls that changed the sample)",
            y_label: "Gen PPL ± s.e.",
            log2_x: true,
            series: &ppl,
        },
        Panel {
            title: "Unigram entropy per sample",
            x_label: "NFE (model calls that changed the sample)",
            y_label: "entropy (nats) ± s.e.",
            log2_x: true,
            series: &ent,
        },
    ];
    bd3_model::write_atomically(&args.out, svg_figure(&panels).as_bytes())?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Panels side by side with one shared legend below them.
pub fn svg_figure(panels: &[Panel<'_>]) -> String {
    let names: Vec<&str> = panels
        .first()
        .map(|p| p.series.iter().map(|s| s.name.as_str()).collect())
        .unwrap_or_default();
    let legend_h = 28.0;
    let (w, h) = (PANEL_W * panels.len().max(1) as f64, PANEL_H + legend_h);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for (i, p) in panels.iter().enumerate() {
        panel(&mut s, p, i as f64 * PANEL_W);
    }
    let mut x = MARGIN.0;
    for (i, n) in names.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let y = PANEL_H + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{c}" stroke-width="2"/><circle cx="{}" cy="{y}" r="3.5" fill="{c}"/>"#,
            x + 22.0,
            x + 11.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            x + 28.0,
            y + 4.0,
            esc(n)
        );
        x += 40.0 + 7.0 * n.chars().count() as f64;
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, p: &Panel<'_>, x0: f64) {
    let (l, r, t, b) = MARGIN;
    let (px0, px1, py0, py1) = (x0 + l, x0 + PANEL_W - r, t, PANEL_H - b);
    let pts = || p.series.iter().flat_map(|s| s.points.iter());
    let tx = |x: f64| if p.log2_x { x.log2() } else { x };
    let (mut xmin, mut xmax) = pts()
        .map(|q| tx(q.x))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    let (mut ymin, mut ymax) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), q| {
        (a.min(q.y - q.err), b.max(q.y + q.err))
    });
    if !xmin.is_finite() {
        (xmin, xmax, ymin, ymax) = (0.0, 1.0, 0.0, 1.0);
    }
    // Room around the data: half a doubling on the x axis, 8 % of the range on the y axis.
    let xpad = if p.log2_x {
        0.5
    } else {
        0.05 * (xmax - xmin).max(1.0)
    };
    (xmin, xmax) = (xmin - xpad, xmax + xpad);
    let ypad = 0.08 * (ymax - ymin).max(ymax.abs() * 0.05).max(1e-9);
    (ymin, ymax) = (ymin - ypad, ymax + ypad);
    let sx = |x: f64| px0 + (tx(x) - xmin) / (xmax - xmin) * (px1 - px0);
    let sy = |y: f64| py1 - (y - ymin) / (ymax - ymin) * (py1 - py0);

    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
        (px0 + px1) / 2.0,
        esc(p.title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{px0}" y="{py0}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        px1 - px0,
        py1 - py0
    );
    // x ticks: powers of two on a log axis, else 5 nice steps.
    let xticks: Vec<f64> = if p.log2_x {
        (xmin.ceil() as i32..=xmax.floor() as i32)
            .map(|e| 2f64.powi(e))
            .collect()
    } else {
        nice_ticks(xmin, xmax)
    };
    for x in xticks {
        let xs = sx(x);
        let _ = writeln!(
            s,
            r##"<line x1="{xs:.1}" y1="{py1}" x2="{xs:.1}" y2="{}" stroke="#444"/><line x1="{xs:.1}" y1="{py0}" x2="{xs:.1}" y2="{py1}" stroke="#eee"/>"##,
            py1 + 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{xs:.1}" y="{}" text-anchor="middle">{}</text>"#,
            py1 + 17.0,
            fmt_tick(x)
        );
    }
    for y in nice_ticks(ymin, ymax) {
        let ys = sy(y);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{ys:.1}" x2="{px0}" y2="{ys:.1}" stroke="#444"/><line x1="{px0}" y1="{ys:.1}" x2="{px1}" y2="{ys:.1}" stroke="#eee"/>"##,
            px0 - 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            px0 - 6.0,
            ys + 4.0,
            fmt_tick(y)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (px0 + px1) / 2.0,
        PANEL_H - 10.0,
        esc(p.x_label)
    );
    let (cx, cy) = (x0 + 14.0, (py0 + py1) / 2.0);
    let _ = writeln!(
        s,
        r#"<text x="{cx}" y="{cy}" text-anchor="middle" transform="rotate(-90 {cx} {cy})">{}</text>"#,
        esc(p.y_label)
    );
    for (i, ser) in p.series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        if ser.points.len() > 1 {
            let path: Vec<String> = ser
                .points
                .iter()
                .map(|q| format!("{:.1},{:.1}", sx(q.x), sy(q.y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
                path.join(" ")
            );
        }
        for q in &ser.points {
            let (xs, ys) = (sx(q.x), sy(q.y));
            if q.err > 0.0 {
                let (y1, y2) = (sy(q.y - q.err), sy(q.y + q.err));
                let _ = writeln!(
                    s,
                    r#"<path d="M{xs:.1},{y1:.1}V{y2:.1}M{:.1},{y1:.1}h8M{:.1},{y2:.1}h8" stroke="{c}" stroke-width="1.3"/>"#,
                    xs - 4.0,
                    xs - 4.0
                );
            }
            let _ = writeln!(
                s,
                r#"<circle cx="{xs:.1}" cy="{ys:.1}" r="3.5" fill="{c}"><title>{}: {} NFE {} value {} ± {}</title></circle>"#,
                esc(&ser.name),
                esc(&q.label),
                q.x,
                q.y,
                q.err
            );
            if !q.label.is_empty() {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="{c}">{}</text>"#,
                    xs + 6.0,
                    ys - 6.0,
                    esc(&q.label)
                );
            }
        }
    }
}

/// About six round tick values covering [lo, hi].
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 6.0;
    if !(raw > 0.0 && raw.is_finite()) {
        return vec![lo];
    }
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&st| st >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

fn fmt_tick(v: f64) -> String {
    if v == v.round() && v.abs() < 1e7 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_becomes_series_and_a_well_formed_svg() {
        let table = "# series\tpoint\tnfe\tgen_ppl\tgen_ppl_se\tentropy\tentropy_se\n\
                     DDPM\tT=8\t250\t140\t3\t4.2\t0.02\n\
                     DDPM\tT=4\t128\t150\t4\t4.3\t0.03\n\
                     first-hitting\t\t127\t145\tnan\t4.25\t0.01\n\
                     confidence <K>\tK=2\t64\t170\t5\t4.0\t0.05\n";
        let (ppl, ent) = read_table(table, "t").unwrap();
        assert_eq!(
            ppl.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["DDPM", "first-hitting", "confidence <K>"]
        );
        // Sorted by NFE; the entropy series mirrors the Gen PPL one.
        assert_eq!(
            ppl[0]
                .points
                .iter()
                .map(|p| (p.x, p.y, p.err))
                .collect::<Vec<_>>(),
            [(128.0, 150.0, 4.0), (250.0, 140.0, 3.0)]
        );
        assert_eq!(ent[0].points[1].y, 4.2);
        assert_eq!(ppl[1].points[0].err, 0.0);
        let svg = svg_figure(&[Panel {
            title: "a & b",
            x_label: "NFE",
            y_label: "PPL",
            log2_x: true,
            series: &ppl,
        }]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(
            svg.contains("a &amp; b")
                && svg.contains("confidence &lt;K&gt;")
                && !svg.contains("<K>")
        );
        // Powers-of-two ticks around 64..250 NFE, and 3 error bars (the `nan` one draws none).
        for t in [">64<", ">128<", ">256<"] {
            assert!(svg.contains(t), "tick {t}");
        }
        assert_eq!(svg.matches("<path d=").count(), 3);
        assert_eq!(svg.matches("<polyline").count(), 1);

        assert!(read_table("DDPM\t1\t2\n", "t")
            .unwrap_err()
            .to_string()
            .contains("t line 1"));
        assert!(read_table("A\tx\t0\t1\t1\t1\t1\n", "t").is_err());
        assert!(read_table("# only a header\n", "t").is_err());
    }

    #[test]
    fn nice_ticks_are_round_and_inside() {
        assert_eq!(nice_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = nice_ticks(3.95, 4.41);
        let want = [4.0, 4.1, 4.2, 4.3, 4.4];
        assert_eq!(t.len(), want.len());
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{t:?}"
        );
        assert_eq!(fmt_tick(4.1000000000000005), "4.1");
        assert_eq!(fmt_tick(250.0), "250");
    }
}
