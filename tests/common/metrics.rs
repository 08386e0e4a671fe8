//! Reading one sample out of a Prometheus text exposition (what `/metrics` serves and
//! `Metrics::render` answers).

use tollgate::metrics::Metrics;

/// The value of `series` (`name` or `name{label="value",…}`, labels in any order) in
/// `text`; 0 when it is not there (a counter not yet incremented reads the same).
pub fn sample_in(text: &str, series: &str) -> f64 {
    let wanted = parse_series(series);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (parse_series(series) == wanted).then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0.0)
}

/// The value of `series` in what `metrics` renders now.
pub fn sample(metrics: &Metrics, series: &str) -> f64 {
    sample_in(&metrics.render(), series)
}

/// A series as its name and its labels, sorted.
fn parse_series(series: &str) -> (String, Vec<(String, String)>) {
    let series = series.trim();
    let Some((name, rest)) = series.split_once('{') else {
        return (series.to_owned(), Vec::new());
    };
    let body = rest.trim_end().trim_end_matches('}');
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
    }
    labels.sort();
    (name.trim().to_owned(), labels)
}
