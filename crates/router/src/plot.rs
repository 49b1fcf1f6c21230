//! A small hand-written SVG line plot of PGR against the strong-call share.

use std::fmt::Write as _;

/// One curve: (share, pgr) points, drawn as a polyline.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: &'static str,
    pub dashed: bool,
}

/// A single operating point, drawn as a marker.
pub struct Marker {
    pub label: String,
    pub share: f64,
    pub pgr: f64,
    pub color: &'static str,
}

pub const PALETTE: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Keeps at most ~`max` points of a dense curve (every k-th plus the last), enough for a 600 px plot.
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let step = points.len().div_ceil(max);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    if let Some(&last) = points.last()
        && out.last() != Some(&last)
    {
        out.push(last);
    }
    out
}

/// Renders the plot. The y range covers [-0.1, 1.1] widened to include all points.
pub fn render(title: &str, series: &[Series], markers: &[Marker]) -> String {
    let (w, h) = (640.0, 480.0);
    let (left, right, top, bottom) = (60.0, 20.0, 40.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let mut y_min: f64 = -0.1;
    let mut y_max: f64 = 1.1;
    for p in series.iter().flat_map(|s| s.points.iter()) {
        y_min = y_min.min(p.1);
        y_max = y_max.max(p.1);
    }
    for m in markers {
        y_min = y_min.min(m.pgr);
        y_max = y_max.max(m.pgr);
    }
    y_min = (y_min * 10.0).floor() / 10.0;
    y_max = (y_max * 10.0).ceil() / 10.0;
    let sx = |x: f64| left + x.clamp(0.0, 1.0) * pw;
    let sy = |y: f64| top + (y_max - y) / (y_max - y_min) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    // grid and ticks
    for i in 0..=10 {
        let x = i as f64 / 10.0;
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#e5e5e5"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle">{4}</text>"##,
            sx(x),
            top,
            top + ph,
            top + ph + 16.0,
            i * 10
        );
    }
    let steps = ((y_max - y_min) * 10.0).round() as i64;
    for i in 0..=steps {
        let y = y_min + i as f64 / 10.0;
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="{3}"/><text x="{4:.1}" y="{5:.1}" text-anchor="end">{6:.1}</text>"##,
            left,
            sy(y),
            left + pw,
            if y.abs() < 1e-9 || (y - 1.0).abs() < 1e-9 {
                "#b0b0b0"
            } else {
                "#e5e5e5"
            },
            left - 6.0,
            sy(y) + 4.0,
            y
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">strong-model calls (% of prompts)</text>"#,
        left + pw / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">PGR</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    for ser in series {
        let mut pts = String::new();
        for &(x, y) in &ser.points {
            let _ = write!(pts, "{:.1},{:.1} ", sx(x), sy(y));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.6"{} points="{}"/>"#,
            ser.color,
            if ser.dashed { r#" stroke-dasharray="5,4""# } else { "" },
            pts.trim_end()
        );
    }
    for m in markers {
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{}" stroke="black"/>"#,
            sx(m.share),
            sy(m.pgr),
            m.color
        );
    }
    // legend, bottom right
    let entries = series.len() + markers.len();
    let lx = left + pw - 250.0;
    let mut ly = top + ph - 10.0 - 18.0 * entries as f64;
    let _ = writeln!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="240" height="{:.1}" fill="white" fill-opacity="0.9" stroke="#ccc"/>"##,
        lx - 6.0,
        ly - 6.0,
        18.0 * entries as f64 + 8.0
    );
    for ser in series {
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"{}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx,
            ly + 6.0,
            lx + 22.0,
            ly + 6.0,
            ser.color,
            if ser.dashed { r#" stroke-dasharray="5,4""# } else { "" },
            lx + 28.0,
            ly + 10.0,
            esc(&ser.label)
        );
        ly += 18.0;
    }
    for m in markers {
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{}" stroke="black"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 11.0,
            ly + 6.0,
            m.color,
            lx + 28.0,
            ly + 10.0,
            esc(&m.label)
        );
        ly += 18.0;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_well_formed_svg() {
        let pts: Vec<(f64, f64)> = (0..=1000).map(|k| (k as f64 / 1000.0, k as f64 / 1000.0)).collect();
        let svg = render(
            "a <title> & more",
            &[Series {
                label: "random".into(),
                points: thin(&pts, 300),
                color: PALETTE[0],
                dashed: true,
            }],
            &[Marker {
                label: "length > 60".into(),
                share: 0.99,
                pgr: 1.0,
                color: PALETTE[1],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt;title&gt; &amp; more"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(thin(&pts, 300).len() <= 302);
        assert_eq!(thin(&pts, 300).last(), Some(&(1.0, 1.0)));
    }
}
