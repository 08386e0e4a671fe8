//! The usage page, `/ui/usage`, and its CSV, `/ui/usage.csv`.
//!
//! Both read one usage report, the API's: admins and viewers `GET /admin/usage` (the whole
//! gateway, or one team), everyone else their own, `GET /v1/user/usage`. The query is the
//! same for both, `since`, `until` (dates or RFC 3339; `since` defaults to the first day of
//! this month, `until` to now; a date as `until` counts its whole day), `group` (`day`,
//! `model`, `team`, `key`, and `user` for admins and viewers) and, for admins and viewers,
//! `team`.
//!
//! The chart is SVG drawn here, in the page's markup: no script, no chart library, and
//! nothing the Content-Security-Policy would have to allow (no inline style: the bars take
//! their geometry from attributes and their colours from the stylesheet's classes). A
//! table of the same numbers follows it, and a sentence says what it shows.
//!
//! The CSV has one row per group of the report, `group,requests,input_tokens,
//! output_tokens,cost_usd`, with the API's values: `group` as the report has it (an id, a
//! model, a day), numbers as the API's JSON has them, so that the rows add up to the API's
//! `total`. A text cell that a spreadsheet would run as a formula (starting with `=`, `+`,
//! `-`, `@`, a tab or a carriage return) is prefixed with `'`; cells are quoted as RFC 4180
//! says (a comma, a quote or a line break inside; quotes doubled), lines end in CRLF.

use super::form::StrictQuery;
use super::layout::{render_with_status, Layout, PageResult};
use super::session::Session;
use super::show::{self, Choice, Names, Pick};
use super::web::UiError;
use super::UiState;
use crate::admin::usage::{self as api, AdminQuery, OwnQuery};
use crate::admin::{AppState, Caller, SignedIn, Who};
use crate::domain::{self, rfc3339};
use crate::store::{GroupBy, SpendKind, UsageReport, UsageRow, NO_GROUP};
use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

pub fn routes() -> Router<UiState> {
    Router::new()
        .route("/ui/usage", get(page))
        .route("/ui/usage.csv", get(csv))
}

/// The most bars the chart draws; the table has every group.
const MAX_BARS: usize = 40;

/// The longest `since` or `until` read, in characters.
const MAX_TIME_CHARS: usize = 64;

/// The page's and the CSV's query, as the form sends it.
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct UsageForm {
    since: String,
    until: String,
    /// `day`, `model`, `team`, `key` or `user`; empty: `day`.
    group: String,
    /// What the chart measures: `cost`, `requests` or `tokens`; empty: `cost`.
    metric: String,
    /// A team id (admins and viewers).
    team: String,
}

/// The groupings, and who is offered each.
const GROUPS: [(&str, &str); 5] = [
    ("day", "Day"),
    ("model", "Model"),
    ("team", "Team"),
    ("key", "Key"),
    ("user", "User"),
];

const METRICS: [(&str, &str); 3] = [
    ("cost", "Cost in USD"),
    ("requests", "Requests"),
    ("tokens", "Tokens (input and output)"),
];

/// What the chart measures.
#[derive(Clone, Copy, PartialEq)]
enum Metric {
    Cost,
    Requests,
    Tokens,
}

impl Metric {
    fn parse(text: &str) -> Result<Metric, UiError> {
        match text.trim() {
            "" | "cost" => Ok(Metric::Cost),
            "requests" => Ok(Metric::Requests),
            "tokens" => Ok(Metric::Tokens),
            other => Err(UiError::bad_request(format!(
                "`metric` must be cost, requests or tokens, not `{}`.",
                show::clip(other)
            ))),
        }
    }

    fn of(self, row: &UsageRow) -> f64 {
        match self {
            Metric::Cost => row.cost_usd,
            Metric::Requests => row.requests as f64,
            Metric::Tokens => (row.input_tokens + row.output_tokens) as f64,
        }
    }

    fn shown(self, row: &UsageRow) -> String {
        match self {
            Metric::Cost => show::usd(row.cost_usd),
            Metric::Requests => show::count(row.requests),
            Metric::Tokens => show::count(row.input_tokens + row.output_tokens),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Metric::Cost => "Cost in USD",
            Metric::Requests => "Requests",
            Metric::Tokens => "Tokens",
        }
    }
}

/// Who reads which report.
enum Reader {
    /// Admins, viewers and custom roles with `usage:read`: `GET /admin/usage`.
    All,
    /// Everyone else: their own, `GET /v1/user/usage`.
    Own(SignedIn),
}

fn reader_of(caller: &Caller) -> Result<Reader, UiError> {
    if caller.reads_usage() {
        return Ok(Reader::All);
    }
    match &caller.who {
        Who::User(user) => Ok(Reader::Own(SignedIn {
            user: user.clone(),
            caller: Caller {
                who: Who::User(user.clone()),
                actor: caller.actor.clone(),
            },
        })),
        // Only people have usage of their own; every other caller reads everything.
        _ => Err(UiError::forbidden("There is no usage of your own to show.")),
    }
}

/// The query, checked and in the API's terms.
struct Asked {
    group: GroupBy,
    metric: Metric,
    /// As the API takes them.
    since: String,
    until: Option<String>,
    team: Option<String>,
    /// The period in words: `2026-12-01 to now`.
    period: String,
}

/// The first day of this month, UTC: `2026-12-01`.
fn month_start() -> String {
    let today = show::day(domain::now());
    format!("{}-01", today.get(..7).unwrap_or(&today))
}

/// Whether `text` is a bare date (`2026-12-07`).
fn is_date(text: &str) -> bool {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
}

impl Asked {
    fn of(form: &UsageForm, reader: &Reader) -> Result<Asked, UiError> {
        let since = show::filter_text("since", &form.since, MAX_TIME_CHARS)?;
        let until = show::filter_text("until", &form.until, MAX_TIME_CHARS)?;
        let since = match since.is_empty() {
            true => month_start(),
            false => since,
        };
        // A date as `until` means to the end of that day.
        let until_api = match until.as_str() {
            "" => None,
            d if is_date(d) => Some(format!("{d}T23:59:59Z")),
            t => Some(t.to_owned()),
        };
        if let (Ok(from), Some(Ok(to))) = (
            rfc3339::parse(&since),
            until_api.as_deref().map(rfc3339::parse),
        ) {
            if from > to {
                return Err(UiError::bad_request(format!(
                    "`since` ({since}) is after `until` ({until}): nothing can be in between."
                )));
            }
        }
        let group = match form.group.trim() {
            "" => GroupBy::Day,
            g => g
                .parse::<GroupBy>()
                .map_err(|e| UiError::bad_request(format!("`group`: {e}.")))?,
        };
        let team = match (reader, form.team.trim()) {
            (_, "") => None,
            (Reader::All, team) => Some(team.to_owned()),
            (Reader::Own(_), _) => {
                return Err(UiError::bad_request(
                    "`team`: your own usage is not filtered by team; group it by team instead.",
                ))
            }
        };
        Ok(Asked {
            group,
            metric: Metric::parse(&form.metric)?,
            period: format!(
                "{} to {}",
                since,
                match until.is_empty() {
                    true => "now",
                    false => &until,
                }
            ),
            since,
            until: until_api,
            team,
        })
    }

    /// The API's report.
    async fn report(
        &self,
        app: &AppState,
        caller: &Caller,
        reader: &Reader,
    ) -> Result<UsageReport, UiError> {
        let report = match reader {
            Reader::All => {
                let query = AdminQuery {
                    group_by: Some(self.group.as_str().to_owned()),
                    since: Some(self.since.clone()),
                    until: self.until.clone(),
                    team_id: self.team.clone(),
                    ..AdminQuery::default()
                };
                api::report(app, caller, query).await?
            }
            Reader::Own(me) => {
                let query = OwnQuery {
                    group_by: Some(self.group.as_str().to_owned()),
                    since: Some(self.since.clone()),
                    until: self.until.clone(),
                };
                api::own(app, me, query, GroupBy::Day).await?
            }
        };
        Ok(report)
    }
}

// ---- the page ---------------------------------------------------------------------------

/// A row of the table.
struct Row {
    label: String,
    /// The group as the report has it, when the label is a name.
    raw: String,
    requests: String,
    input_tokens: String,
    output_tokens: String,
    cost: String,
}

/// A bar of the chart: geometry in the SVG's units.
struct Bar {
    label: String,
    /// The whole label, for the bar's tooltip.
    title: String,
    value: String,
    y: u32,
    text_y: u32,
    width: u32,
    value_x: u32,
}

/// The chart: its size, its bars, and what it says in words.
struct Chart {
    height: u32,
    bars: Vec<Bar>,
    /// The sentence that says what the chart shows (its text alternative).
    summary: String,
}

/// The chart's layout, in SVG units: labels left, bars, values right.
const CHART_WIDTH: u32 = 640;
const LABEL_WIDTH: u32 = 170;
const VALUE_WIDTH: u32 = 90;
const ROW_HEIGHT: u32 = 24;
const BAR_HEIGHT: u32 = 16;
const LABEL_CHARS: usize = 24;

#[derive(Template)]
#[template(path = "ui/usage.html")]
struct UsageView {
    layout: Layout,
    error: Option<String>,
    form: UsageForm,
    groups: Vec<Choice>,
    metrics: Vec<Choice>,
    /// The team filter, for admins and viewers.
    teams: Option<Vec<Pick>>,
    own: bool,
    period: String,
    group_label: &'static str,
    rows: Vec<Row>,
    total: Row,
    chart: Option<Chart>,
    chart_width: u32,
    label_width: u32,
    csv: String,
}

async fn page(
    State(ui): State<UiState>,
    session: Session,
    StrictQuery(form): StrictQuery<UsageForm>,
) -> PageResult {
    let app = &ui.app;
    let caller = &session.caller;
    let reader = reader_of(caller)?;
    let own = matches!(reader, Reader::Own(_));
    let offered: Vec<(&str, &str)> = GROUPS
        .iter()
        .copied()
        .filter(|(g, _)| !(own && *g == "user"))
        .collect();
    let teams = match reader {
        Reader::All => {
            let mut picks = vec![Pick {
                value: String::new(),
                label: "Every team".to_owned(),
                selected: form.team.is_empty(),
            }];
            // Admins and viewers see every team (`GET /admin/teams`); the select needs
            // their names, not their spend.
            for team in app.store.list_teams().await? {
                picks.push(Pick {
                    selected: team.id == form.team,
                    value: team.id,
                    label: team.name,
                });
            }
            Some(picks)
        }
        Reader::Own(_) => None,
    };
    let mut view = UsageView {
        layout: Layout::of(&session, "Usage", "/usage"),
        error: None,
        groups: show::choices(
            &offered,
            if form.group.is_empty() {
                "day"
            } else {
                &form.group
            },
        ),
        metrics: show::choices(
            &METRICS,
            if form.metric.is_empty() {
                "cost"
            } else {
                &form.metric
            },
        ),
        teams,
        own,
        period: String::new(),
        group_label: "Day",
        rows: Vec::new(),
        total: Row {
            label: "Total".to_owned(),
            raw: String::new(),
            requests: String::new(),
            input_tokens: String::new(),
            output_tokens: String::new(),
            cost: String::new(),
        },
        chart: None,
        chart_width: CHART_WIDTH,
        label_width: LABEL_WIDTH,
        csv: csv_link(&form),
        form: UsageForm {
            since: match form.since.is_empty() {
                true => month_start(),
                false => form.since.clone(),
            },
            ..form.clone()
        },
    };
    let answered = async {
        let asked = Asked::of(&form, &reader)?;
        let report = asked.report(app, caller, &reader).await?;
        Ok::<_, UiError>((asked, report))
    }
    .await;
    let (asked, report) = match answered {
        Ok(answer) => answer,
        // A query that cannot be used, or the API's refusal: said on the page that asked.
        Err(e) => {
            view.error = Some(e.message);
            return Ok(render_with_status(e.status, &view));
        }
    };
    view.group_label = GROUPS
        .iter()
        .find(|(g, _)| *g == asked.group.as_str())
        .map_or("Group", |(_, label)| label);
    let labels = labels(app, caller, &reader, asked.group, &report.data).await?;
    view.rows = report
        .data
        .iter()
        .zip(&labels)
        .map(|(row, label)| Row {
            raw: match label == &row.group {
                true => String::new(),
                false => row.group.clone(),
            },
            label: label.clone(),
            requests: show::count(row.requests),
            input_tokens: show::count(row.input_tokens),
            output_tokens: show::count(row.output_tokens),
            cost: show::usd(row.cost_usd),
        })
        .collect();
    view.total = Row {
        label: "Total".to_owned(),
        raw: String::new(),
        requests: show::count(report.total.requests),
        input_tokens: show::count(report.total.input_tokens),
        output_tokens: show::count(report.total.output_tokens),
        cost: show::usd(report.total.cost_usd),
    };
    view.chart = chart(&asked, &report, &labels);
    view.period = asked.period;
    Ok(render_with_status(StatusCode::OK, &view))
}

/// `/usage.csv` with the page's query.
fn csv_link(form: &UsageForm) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in [
        ("since", &form.since),
        ("until", &form.until),
        ("group", &form.group),
        ("team", &form.team),
    ] {
        if !value.is_empty() {
            query.append_pair(name, value);
        }
    }
    match query.finish() {
        q if q.is_empty() => "/usage.csv".to_owned(),
        q => format!("/usage.csv?{q}"),
    }
}

/// What each group is called on the page: names for ids (keys, users, teams) where the
/// reader may read the record, the day or model as it is, and words for the records
/// without one.
async fn labels(
    app: &AppState,
    caller: &Caller,
    reader: &Reader,
    group: GroupBy,
    rows: &[UsageRow],
) -> Result<Vec<String>, UiError> {
    let mut names = Names::default();
    // The names of every group in one read per kind rather than one read each: keys for
    // everyone, users and teams for those who read every user and team.
    let kind = match (group, reader) {
        (GroupBy::Key, _) => Some(SpendKind::Key),
        (GroupBy::User, Reader::All) => Some(SpendKind::User),
        (GroupBy::Team, Reader::All) => Some(SpendKind::Team),
        _ => None,
    };
    if let Some(kind) = kind {
        let wanted: Vec<(SpendKind, &str)> = rows
            .iter()
            .filter(|r| r.group != NO_GROUP)
            .map(|r| (kind, r.group.as_str()))
            .collect();
        names.load(app, &wanted).await?;
    }
    let mut labels = Vec::with_capacity(rows.len());
    for row in rows {
        let id = row.group.as_str();
        let label = if id == NO_GROUP {
            match group {
                GroupBy::Key => "no key".to_owned(),
                GroupBy::User => "no user".to_owned(),
                GroupBy::Team => "no team".to_owned(),
                GroupBy::Org => "no org".to_owned(),
                GroupBy::Model => "no model".to_owned(),
                GroupBy::Day => "no day".to_owned(),
            }
        } else {
            let name = match (group, reader) {
                (GroupBy::Key, _) => names.key(app, id).await?,
                (GroupBy::User, Reader::All) => names.user(app, id).await?,
                (GroupBy::Team, Reader::All) => names.team(app, id).await?,
                // A person's own usage names the teams they see.
                (GroupBy::Team, Reader::Own(_)) if caller.sees_team(app, id).await? => {
                    names.team(app, id).await?
                }
                _ => None,
            };
            match (name, group) {
                (Some(name), _) => name,
                (None, GroupBy::Key) => format!("key {}", show::short(id)),
                (None, GroupBy::User) => format!("user {}", show::short(id)),
                (None, GroupBy::Team) => format!("team {}", show::short(id)),
                (None, _) => id.to_owned(),
            }
        };
        labels.push(label);
    }
    Ok(labels)
}

/// The chart of a report, or `None` when it has no rows. Days are drawn in order (the
/// last [`MAX_BARS`] of them); other groups largest first (the [`MAX_BARS`] largest).
fn chart(asked: &Asked, report: &UsageReport, labels: &[String]) -> Option<Chart> {
    if report.data.is_empty() {
        return None;
    }
    let metric = asked.metric;
    let mut shown: Vec<(&UsageRow, &String)> = report.data.iter().zip(labels).collect();
    let all = shown.len();
    if asked.group == GroupBy::Day {
        shown.drain(..all.saturating_sub(MAX_BARS));
    } else {
        shown.sort_by(|a, b| metric.of(b.0).total_cmp(&metric.of(a.0)));
        shown.truncate(MAX_BARS);
    }
    let max = shown
        .iter()
        .map(|(row, _)| metric.of(row))
        .fold(0.0_f64, f64::max);
    let span = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH;
    let bars: Vec<Bar> = shown
        .iter()
        .enumerate()
        .map(|(i, (row, label))| {
            let y = i as u32 * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2;
            let width = match max > 0.0 {
                // At least a sliver for anything above zero, so that it shows.
                true => ((metric.of(row) / max) * f64::from(span)).round() as u32,
                false => 0,
            };
            let width = match metric.of(row) > 0.0 {
                true => width.max(1),
                false => 0,
            };
            Bar {
                label: match label.chars().count() > LABEL_CHARS {
                    true => format!(
                        "{}…",
                        label.chars().take(LABEL_CHARS - 1).collect::<String>()
                    ),
                    false => (*label).clone(),
                },
                title: format!("{label}: {}", metric.shown(row)),
                value: metric.shown(row),
                y,
                text_y: i as u32 * ROW_HEIGHT + ROW_HEIGHT / 2 + 5,
                width,
                value_x: LABEL_WIDTH + width + 6,
            }
        })
        .collect();
    let total = match metric {
        Metric::Cost => show::usd(report.total.cost_usd),
        Metric::Requests => show::count(report.total.requests),
        Metric::Tokens => show::count(report.total.input_tokens + report.total.output_tokens),
    };
    let largest = report
        .data
        .iter()
        .zip(labels)
        .max_by(|a, b| metric.of(a.0).total_cmp(&metric.of(b.0)));
    let mut summary = format!(
        "{} by {}, {}: {} {}, {} in all",
        metric.label(),
        asked.group.as_str(),
        asked.period,
        all,
        match all {
            1 => "group",
            _ => "groups",
        },
        total,
    );
    if let Some((row, label)) = largest {
        summary.push_str(&format!(
            "; the largest is {label} with {}",
            metric.shown(row)
        ));
    }
    if all > shown.len() {
        summary.push_str(&match asked.group {
            GroupBy::Day => format!(
                "; the chart shows the last {} days, the table every one",
                shown.len()
            ),
            _ => format!(
                "; the chart shows the {} largest, the table every one",
                shown.len()
            ),
        });
    }
    summary.push('.');
    Some(Chart {
        height: bars.len() as u32 * ROW_HEIGHT,
        bars,
        summary,
    })
}

// ---- the CSV ----------------------------------------------------------------------------

/// The header of the CSV: the usage report's fields.
pub const CSV_HEADER: &str = "group,requests,input_tokens,output_tokens,cost_usd";

async fn csv(
    State(ui): State<UiState>,
    session: Session,
    StrictQuery(form): StrictQuery<UsageForm>,
) -> Result<Response, UiError> {
    let caller = &session.caller;
    let reader = reader_of(caller)?;
    let asked = Asked::of(&form, &reader)?;
    let report = asked.report(&ui.app, caller, &reader).await?;
    let body = csv_of(&report);
    let filename = format!(
        "tollgate-usage-by-{}-{}-to-{}.csv",
        asked.group.as_str(),
        file_part(&asked.since),
        match form.until.trim() {
            "" => "now".to_owned(),
            until => file_part(until),
        }
    );
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
        .map_err(|_| UiError::internal("a file name that cannot be a header"))?;
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// A time as part of a file name: letters, digits and `-` only.
fn file_part(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(32)
        .collect()
}

/// The report as CSV: the header, then one line per row, CRLF after each.
fn csv_of(report: &UsageReport) -> String {
    let mut out = String::with_capacity(64 * (report.data.len() + 1));
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    for row in &report.data {
        let cells = [
            cell(&row.group),
            row.requests.to_string(),
            row.input_tokens.to_string(),
            row.output_tokens.to_string(),
            // Rust writes the shortest text that reads back as the same number, as the
            // API's JSON does, and never an exponent.
            row.cost_usd.to_string(),
        ];
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

/// A text cell: defused for spreadsheets (a leading `=`, `+`, `-`, `@`, tab or carriage
/// return gets a `'` in front), then quoted when RFC 4180 needs it.
fn cell(text: &str) -> String {
    let defused = match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_owned(),
    };
    if defused.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_defused_and_quoted() {
        assert_eq!(cell("gpt-4o"), "gpt-4o");
        assert_eq!(cell(""), "");
        assert_eq!(cell("=1+1"), "'=1+1");
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("-1"), "'-1");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\tx"), "'\tx");
        assert_eq!(cell("\rx"), "\"'\rx\"");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(
            cell("=HYPERLINK(\"x\",\"y\")"),
            "\"'=HYPERLINK(\"\"x\"\",\"\"y\"\")\""
        );
        assert_eq!(cell("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn the_csv_has_the_report_s_numbers() {
        let report = UsageReport::from_rows(vec![
            UsageRow {
                group: "2026-12-01".into(),
                requests: 3,
                input_tokens: 30,
                output_tokens: 3,
                cost_usd: 0.1,
            },
            UsageRow {
                group: "2026-12-02".into(),
                requests: 1,
                input_tokens: 10,
                output_tokens: 1,
                cost_usd: 1e-7,
            },
        ]);
        assert_eq!(
            csv_of(&report),
            "group,requests,input_tokens,output_tokens,cost_usd\r\n\
             2026-12-01,3,30,3,0.1\r\n\
             2026-12-02,1,10,1,0.0000001\r\n"
        );
    }

    #[test]
    fn dates_and_metrics_are_read_or_refused_with_their_name() {
        let all = Reader::All;
        let form = |since: &str, until: &str| UsageForm {
            since: since.into(),
            until: until.into(),
            ..UsageForm::default()
        };
        let asked = Asked::of(&form("2026-12-01", "2026-12-07"), &all)
            .ok()
            .unwrap();
        assert_eq!(asked.since, "2026-12-01");
        assert_eq!(asked.until.as_deref(), Some("2026-12-07T23:59:59Z"));
        assert_eq!(asked.group, GroupBy::Day);
        let e = Asked::of(&form("2026-12-08", "2026-12-07"), &all)
            .err()
            .unwrap();
        assert!(e.message.contains("after"), "{}", e.message);
        let e = Asked::of(&form(&"9".repeat(100), ""), &all).err().unwrap();
        assert!(e.message.contains("`since`"), "{}", e.message);
        let mut bad = form("", "");
        bad.metric = "pie".into();
        assert!(Asked::of(&bad, &all)
            .err()
            .unwrap()
            .message
            .contains("`metric`"));
        assert_eq!(
            Asked::of(&form("", ""), &all).ok().unwrap().since,
            month_start()
        );
    }
}
