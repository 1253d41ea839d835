//! The report's charts as SVG text, drawn with plotters' SVG backend (no fonts are embedded: the
//! browser renders the text). Bar charts, box plots per group and a scatter coloured by group.
//! Output depends only on the numbers given, so reports are byte-identical for the same inputs.

use plotters::prelude::*;

/// Ten distinguishable colours (categorical), cycled.
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

pub fn color(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("drawing a chart: {e}")
}

/// Shortens long category names for axes.
fn short(s: &str) -> String {
    if s.chars().count() > 18 { format!("{}…", s.chars().take(17).collect::<String>()) } else { s.to_string() }
}

fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    (lo <= hi).then_some(if lo == hi { (lo - 0.5, hi + 0.5) } else { (lo, hi) })
}

fn width_for(n: usize) -> u32 {
    (160 + 28 * n as u32).clamp(420, 1100)
}

// Segmented axes over 0..n-1 hold exactly n slots (0..n would add an empty one).

/// Vertical bars, one per category; `reference` draws a dashed horizontal line (e.g. 100 %).
pub fn bars(title: &str, labels: &[String], values: &[f64], y_desc: &str, reference: Option<f64>) -> Result<String, String> {
    bars_with(title, labels, values, None, y_desc, reference)
}

/// [`bars`] with an interval (low, high) drawn over each bar where both ends are finite.
pub fn bars_with(
    title: &str,
    labels: &[String],
    values: &[f64],
    intervals: Option<(&[f64], &[f64])>,
    y_desc: &str,
    reference: Option<f64>,
) -> Result<String, String> {
    let n = labels.len().max(1);
    let highs = intervals.map(|(_, h)| h).unwrap_or(&[]);
    let top = values.iter().chain(highs).copied().filter(|v| v.is_finite()).fold(0.0f64, f64::max).max(reference.unwrap_or(0.0)) * 1.1;
    let top = if top > 0.0 { top } else { 1.0 };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (width_for(n), 360)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(if n > 8 { 90 } else { 40 })
            .y_label_area_size(70)
            .build_cartesian_2d((0..n.max(2) - 1).into_segmented(), 0f64..top)
            .map_err(err)?;
        let rotate = n > 8;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) if *i < labels.len() => short(&labels[*i]),
                _ => String::new(),
            })
            .x_label_style(if rotate {
                ("sans-serif", 11).into_font().transform(FontTransform::Rotate90)
            } else {
                ("sans-serif", 12).into_font()
            })
            .y_desc(y_desc)
            .draw()
            .map_err(err)?;
        chart
            .draw_series(values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, v)| {
                let mut bar = Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *v)], color(0).filled());
                bar.set_margin(0, 0, 4, 4);
                bar
            }))
            .map_err(err)?;
        if let Some((lo, hi)) = intervals {
            let whiskers = lo.iter().zip(hi).enumerate().filter(|(_, (l, h))| l.is_finite() && h.is_finite());
            chart
                .draw_series(whiskers.map(|(i, (l, h))| {
                    PathElement::new(vec![(SegmentValue::CenterOf(i), *l), (SegmentValue::CenterOf(i), *h)], BLACK.stroke_width(2))
                }))
                .map_err(err)?;
        }
        if let Some(r) = reference {
            chart
                .draw_series(DashedLineSeries::new(vec![(SegmentValue::Exact(0), r), (SegmentValue::Last, r)], 6, 4, RED.stroke_width(1)))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(buf)
}

/// Box plots (quartiles, whiskers at 1.5 IQR) of `groups` (name, values), NaN left out.
pub fn boxes(title: &str, groups: &[(String, Vec<f64>)], y_desc: &str) -> Result<String, String> {
    let kept: Vec<(String, Vec<f64>)> = groups
        .iter()
        .map(|(g, v)| (g.clone(), v.iter().copied().filter(|x| x.is_finite()).collect::<Vec<f64>>()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let n = kept.len().max(1);
    let (lo, hi) = finite_range(kept.iter().flat_map(|(_, v)| v.iter().copied())).unwrap_or((0.0, 1.0));
    let pad = (hi - lo) * 0.05;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (width_for(n), 340)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(if n > 8 { 90 } else { 40 })
            .y_label_area_size(70)
            .build_cartesian_2d((0..n.max(2) - 1).into_segmented(), (lo - pad) as f32..(hi + pad) as f32)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) if *i < kept.len() => short(&kept[*i].0),
                _ => String::new(),
            })
            .x_label_style(if n > 8 {
                ("sans-serif", 11).into_font().transform(FontTransform::Rotate90)
            } else {
                ("sans-serif", 12).into_font()
            })
            .y_desc(y_desc)
            .draw()
            .map_err(err)?;
        chart
            .draw_series(
                kept.iter()
                    .enumerate()
                    .map(|(i, (_, v))| Boxplot::new_vertical(SegmentValue::CenterOf(i), &Quartiles::new(v)).width(18).style(color(i))),
            )
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}

/// A scatter of (x, y, group index) with a legend of `group_names`. At most `max_points` are
/// drawn (every k-th, deterministically).
pub fn scatter(
    title: &str,
    points: &[(f64, f64, usize)],
    group_names: &[String],
    axes: (&str, &str),
    max_points: usize,
) -> Result<String, String> {
    let step = points.len().div_ceil(max_points.max(1)).max(1);
    let shown: Vec<&(f64, f64, usize)> = points.iter().step_by(step).filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    let (x0, x1) = finite_range(shown.iter().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let (y0, y1) = finite_range(shown.iter().map(|p| p.1)).unwrap_or((0.0, 1.0));
    let (px, py) = ((x1 - x0) * 0.05, (y1 - y0) * 0.05);
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (640, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0 - px..x1 + px, y0 - py..y1 + py)
            .map_err(err)?;
        chart.configure_mesh().x_desc(axes.0).y_desc(axes.1).draw().map_err(err)?;
        for (g, name) in group_names.iter().enumerate() {
            let c = color(g);
            chart
                .draw_series(shown.iter().filter(|p| p.2 == g).map(|p| Circle::new((p.0, p.1), 2, c.mix(0.7).filled())))
                .map_err(err)?
                .label(short(name))
                .legend(move |(x, y)| Circle::new((x, y), 4, c.filled()));
        }
        if group_names.len() <= 20 {
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_and_deterministic() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let b = bars("ratio", &labels, &[50.0, 150.0, f64::NAN], "%", Some(100.0)).unwrap();
        assert!(b.starts_with("<svg") && b.contains("ratio"), "{}", &b[..200.min(b.len())]);
        assert_eq!(b, bars("ratio", &labels, &[50.0, 150.0, f64::NAN], "%", Some(100.0)).unwrap());
        let w = bars_with("ratio", &labels, &[50.0, 150.0, 1.0], Some((&[40.0, 120.0, f64::NAN], &[60.0, 180.0, 2.0])), "%", None).unwrap();
        let whiskers = |svg: &str| svg.split("<polyline").filter(|p| p.split('>').next().unwrap().contains("stroke-width=\"2\"")).count();
        assert_eq!(whiskers(&w), 2, "a whisker per finite interval");
        assert_eq!(whiskers(&bars_with("ratio", &labels, &[50.0, 150.0, 1.0], None, "%", None).unwrap()), 0);
        let g = vec![("s1".to_string(), vec![1.0, 2.0, 3.0, 10.0]), ("s2".to_string(), vec![f64::NAN]), ("s3".to_string(), vec![2.0])];
        assert!(boxes("volume", &g, "um^3").unwrap().contains("<svg"));
        let pts = vec![(0.0, 1.0, 0), (1.0, 0.5, 1), (f64::NAN, 0.0, 1)];
        let s = scatter("PCA", &pts, &labels[..2], ("pc1", "pc2"), 1000).unwrap();
        assert!(s.contains("<circle"), "{s}");
    }
}
