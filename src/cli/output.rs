//! How admin commands print answers: `table` (aligned columns for people) or `json` (the
//! response body, pretty-printed, for scripts).

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// How to fill one column from a record.
#[derive(Clone, Copy)]
pub enum Cell {
    /// The field's value, as [`text`] shows it.
    Field(&'static str),
    /// Computed from the whole record.
    With(fn(&Value) -> String),
}

pub type Column = (&'static str, Cell);

/// Prints `body` as JSON, or as `render` lays it out for a terminal. An empty answer
/// (204) prints nothing as JSON.
pub fn print(output: Output, body: &Value, render: impl FnOnce(&Value) -> String) {
    match output {
        Output::Json if body.is_null() => {}
        Output::Json => emit(&json(body)),
        Output::Table => {
            let text = render(body);
            if !text.is_empty() {
                emit(text.trim_end_matches('\n'));
            }
        }
    }
}

/// Writes `text` and a newline to stdout. A closed pipe (`tollgate … | head`) is not an
/// error worth a panic: the reader has what it wanted.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
}

pub fn json(body: &Value) -> String {
    serde_json::to_string_pretty(body).expect("JSON values serialize")
}

/// A value for a cell: `-` for null, missing and empty, lists joined by commas, objects as
/// compact JSON.
pub fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "-".into(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| text(Some(item)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(map)) if map.is_empty() => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// Aligned columns: widths from the widest cell, two spaces between, no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The records of a `{"data":[…]}` answer as a table of `columns`.
pub fn list_table(body: &Value, columns: &[Column]) -> String {
    let items = body
        .get("data")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    rows_table(items, columns)
}

/// Records as a table of `columns`.
pub fn rows_table(items: &[Value], columns: &[Column]) -> String {
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            columns
                .iter()
                .map(|(_, cell)| match cell {
                    Cell::Field(name) => text(item.get(*name)),
                    Cell::With(f) => f(item),
                })
                .collect()
        })
        .collect();
    table(&headers, &rows)
}

/// One record, one `field  value` line per field: `order` first, then any other fields
/// the server sent (so nothing is hidden when the API grows).
pub fn record(value: &Value, order: &[&str]) -> String {
    let Some(map) = value.as_object() else {
        return text(Some(value));
    };
    let mut names: Vec<&str> = order
        .iter()
        .copied()
        .filter(|name| map.contains_key(*name))
        .collect();
    names.extend(
        map.keys()
            .map(String::as_str)
            .filter(|name| !order.contains(name)),
    );
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for name in names {
        let shown = text(map.get(name));
        out.push_str(format!("{name:<width$}  {shown}").trim_end());
        out.push('\n');
    }
    out
}

/// `max_budget` per `budget_duration`, with the period's `spend` when the API reports it:
/// `1.25 of 10.00/30d`.
pub fn budget(item: &Value) -> String {
    let Some(max) = item.get("max_budget").and_then(Value::as_f64) else {
        return "-".into();
    };
    let mut shown = format!("{max:.2}");
    if let Some(period) = item.get("budget_duration").and_then(Value::as_str) {
        shown.push('/');
        shown.push_str(period);
    }
    if let Some(spend) = item.get("spend").and_then(Value::as_f64) {
        shown = format!("{spend:.2} of {shown}");
    }
    shown
}

/// `blocked` as a word.
pub fn standing(item: &Value) -> String {
    if item.get("blocked").and_then(Value::as_bool) == Some(true) {
        "blocked".into()
    } else {
        "active".into()
    }
}

/// A box around lines, to make a one-time secret hard to miss.
pub fn boxed(lines: &[String]) -> String {
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let rule = format!("+{}+", "-".repeat(width + 2));
    let mut out = format!("{rule}\n");
    for line in lines {
        let pad = width - line.chars().count();
        out.push_str(&format!("| {line}{} |\n", " ".repeat(pad)));
    }
    out.push_str(&rule);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns_without_trailing_blanks() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "alpha".into()],
                vec!["200".into(), "b".into()],
            ],
        );
        assert_eq!(t, "ID   NAME\n1    alpha\n200  b\n");
    }

    #[test]
    fn text_renders_nulls_lists_and_objects() {
        assert_eq!(text(None), "-");
        assert_eq!(text(Some(&json!(null))), "-");
        assert_eq!(text(Some(&json!(["a", "b"]))), "a,b");
        assert_eq!(text(Some(&json!([]))), "-");
        assert_eq!(text(Some(&json!({"k": 1}))), r#"{"k":1}"#);
        assert_eq!(text(Some(&json!(3))), "3");
    }

    #[test]
    fn record_puts_known_fields_first_and_keeps_the_rest() {
        let r = record(&json!({"z": 1, "name": "n", "id": "i"}), &["id", "name"]);
        assert_eq!(r, "id    i\nname  n\nz     1\n");
    }

    #[test]
    fn budget_shows_period_and_spend() {
        assert_eq!(
            budget(&json!({"max_budget": 10, "budget_duration": "30d"})),
            "10.00/30d"
        );
        assert_eq!(
            budget(&json!({"max_budget": 5.5, "spend": 1.25})),
            "1.25 of 5.50"
        );
        assert_eq!(budget(&json!({"max_budget": null})), "-");
    }
}
