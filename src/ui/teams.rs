//! The teams pages: `/ui/teams` (the teams the caller sees, with budget, spend and member
//! count; a create form for admins and managers) and `/ui/teams/{id}` (one team: its
//! settings, its members; edit and delete for those who manage it, members added and
//! removed by its owners).
//!
//! Every read and write is the API's (`crate::admin::teams`) with the session's `Caller`:
//! the page offers what [`Caller::manages_team`] and [`Caller::owns_team`] allow, and a
//! forged post is refused by the API's function all the same.
//!
//! Members are named by username to those who may read users through the API (admins,
//! viewers, managers); to others (a team owner with the role `user`) the API shows only
//! ids, and so does the page, with the reader's own row marked. For the same reason the
//! add-member form looks a username or email up only for those who may read users; others
//! give the user's id.

use super::form::{Confirmed, Posted, StrictQuery};
use super::layout::{render, render_with_status, ConfirmView, Layout, PageResult};
use super::session::Session;
use super::show::{self, Choice, Names, PathId};
use super::web::UiError;
use super::UiState;
use crate::admin::teams::{self as api, AddMember, CreateTeam, UpdateTeam};
use crate::admin::{AppState, Caller};
use crate::domain::{Role, Team, TeamRole};
use crate::store::SpendKind;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

pub fn routes() -> Router<UiState> {
    Router::new()
        .route("/ui/teams", get(list).post(create))
        .route("/ui/teams/{id}", get(show))
        .route("/ui/teams/{id}/edit", post(edit))
        .route("/ui/teams/{id}/delete", post(delete))
        .route("/ui/teams/{id}/members", post(add_member))
        .route("/ui/teams/{id}/members/remove", post(remove_member))
}

/// Whether the API lets the caller create teams (the form is offered only then).
fn creates_teams(caller: &Caller) -> bool {
    caller.is_admin() || caller.role() == Role::Manager
}

/// The message of a `done=` word (only these: nothing a link carries is shown as text).
fn done_message(done: &str) -> Option<&'static str> {
    match done {
        "created" => Some("The team is created."),
        "updated" => Some("The team's settings are saved."),
        "deleted" => Some("The team is deleted, and its keys are revoked."),
        "member_added" => Some("The member is added (or their role in the team changed)."),
        "member_removed" => Some("The member is removed from the team."),
        _ => None,
    }
}

// ---- the form of a team's settings --------------------------------------------------------

/// The create and edit forms, as posted: every field as typed.
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct TeamForm {
    name: String,
    /// Separated by commas or spaces; empty: every model.
    models: String,
    rpm: String,
    tpm: String,
    max_budget: String,
    budget_duration: String,
    max_parallel: String,
}

impl TeamForm {
    fn of(team: &Team) -> TeamForm {
        TeamForm {
            name: team.name.clone(),
            models: team.models.join(", "),
            rpm: team.limits.rpm.map(|n| n.to_string()).unwrap_or_default(),
            tpm: team.limits.tpm.map(|n| n.to_string()).unwrap_or_default(),
            max_budget: team
                .limits
                .max_budget
                .map(|n| n.to_string())
                .unwrap_or_default(),
            budget_duration: team
                .limits
                .budget_duration
                .map(|d| d.to_string())
                .unwrap_or_default(),
            max_parallel: team
                .limits
                .max_parallel
                .map(|n| n.to_string())
                .unwrap_or_default(),
        }
    }

    /// The body of `POST /admin/teams`.
    fn create(&self) -> Result<CreateTeam, UiError> {
        Ok(CreateTeam {
            name: self.name.clone(),
            models: show::models(&self.models),
            rpm: show::whole("rpm", &self.rpm)?,
            tpm: show::whole("tpm", &self.tpm)?,
            max_budget: show::amount("max_budget", &self.max_budget)?,
            budget_duration: show::duration(&self.budget_duration)?,
            max_parallel: show::whole("max_parallel", &self.max_parallel)?,
            metadata: None,
            org_id: None,
        })
    }

    /// The body of `PATCH /admin/teams/{id}`: every field of the form, an empty one
    /// clearing its limit.
    fn update(&self) -> Result<UpdateTeam, UiError> {
        Ok(UpdateTeam {
            name: Some(self.name.clone()),
            models: Some(show::models(&self.models)),
            rpm: Some(show::whole("rpm", &self.rpm)?),
            tpm: Some(show::whole("tpm", &self.tpm)?),
            max_budget: Some(show::amount("max_budget", &self.max_budget)?),
            budget_duration: Some(show::duration(&self.budget_duration)?),
            max_parallel: Some(show::whole("max_parallel", &self.max_parallel)?),
            ..UpdateTeam::default()
        })
    }
}

// ---- the listing ------------------------------------------------------------------------

/// A team as a row of the listing shows it.
struct TeamRow {
    /// `/teams/{id}`, under the UI.
    path: String,
    name: String,
    budget: String,
    spend: String,
    members: usize,
    models: String,
    blocked: bool,
}

#[derive(Template)]
#[template(path = "ui/teams.html")]
struct TeamsView {
    layout: Layout,
    done: Option<&'static str>,
    error: Option<String>,
    rows: Vec<TeamRow>,
    can_create: bool,
    form: TeamForm,
    durations: Vec<Choice>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DoneQuery {
    done: String,
}

async fn list(
    State(ui): State<UiState>,
    session: Session,
    StrictQuery(q): StrictQuery<DoneQuery>,
) -> PageResult {
    listing(
        &ui.app,
        &session,
        done_message(&q.done),
        None,
        TeamForm::default(),
    )
    .await
}

/// The listing, with a message, or after a refused create its error and what was typed.
async fn listing(
    app: &AppState,
    session: &Session,
    done: Option<&'static str>,
    error: Option<UiError>,
    form: TeamForm,
) -> PageResult {
    let caller = &session.caller;
    let teams = api::listed(app, caller).await?;
    let mut rows = Vec::with_capacity(teams.len());
    for team in teams {
        // The members `GET /admin/teams/{id}` shows this caller (the listing shows only
        // teams the caller sees).
        let members = app.store.list_members(&team.item.id).await?.len();
        rows.push(TeamRow {
            path: format!("/teams/{}", team.item.id),
            budget: show::budget(&team.item.limits),
            spend: show::usd(team.spend),
            models: match team.item.models.is_empty() {
                true => "every model".to_owned(),
                false => team.item.models.join(", "),
            },
            blocked: team.item.blocked,
            name: team.item.name,
            members,
        });
    }
    let status = error.as_ref().map_or(StatusCode::OK, |e| e.status);
    let view = TeamsView {
        layout: Layout::of(session, "Teams", "/teams"),
        done,
        error: error.map(|e| e.message),
        rows,
        can_create: creates_teams(caller),
        durations: show::choices(&show::DURATIONS, &form.budget_duration),
        form,
    };
    Ok(render_with_status(status, &view))
}

/// `POST /ui/teams`: the form as `POST /admin/teams` takes it.
async fn create(State(ui): State<UiState>, posted: Posted<TeamForm>) -> PageResult {
    let Posted { session, form } = posted;
    let app = &ui.app;
    let created = match form.create() {
        Ok(body) => api::create_team(app, &session.caller, body)
            .await
            .map_err(UiError::from),
        Err(e) => Err(e),
    };
    match created {
        Ok(team) => Ok(session
            .site
            .redirect(&format!("/teams/{}?done=created", team.id))),
        Err(e) => listing(app, &session, None, Some(e), form).await,
    }
}

// ---- one team ---------------------------------------------------------------------------

/// A member as the team's page shows them.
struct MemberRow {
    user_id: String,
    /// The username, for those who may read users; else empty.
    name: String,
    /// `/users/{id}` when the reader may open it.
    path: Option<String>,
    role: &'static str,
    source: &'static str,
    since: String,
    you: bool,
}

#[derive(Template)]
#[template(path = "ui/team.html")]
struct TeamView {
    layout: Layout,
    done: Option<&'static str>,
    error: Option<String>,
    team: Team,
    budget: String,
    spend: String,
    models: String,
    created: String,
    members: Vec<MemberRow>,
    /// Edit and delete (admins; managers who own the team).
    can_edit: bool,
    /// Add and remove members (admins; the team's owners but viewers).
    can_manage_members: bool,
    /// Whether the add-member form takes a username or email, or only an id.
    names_users: bool,
    /// The keys page filtered to this team, when the API lets the reader list them.
    keys_link: bool,
    form: TeamForm,
    durations: Vec<Choice>,
    /// What was typed in the add-member form, after a refusal.
    member_user: String,
    member_roles: Vec<Choice>,
}

const TEAM_ROLES: [(&str, &str); 2] = [("member", "member"), ("owner", "owner")];

async fn show(
    State(ui): State<UiState>,
    session: Session,
    PathId(id): PathId,
    StrictQuery(q): StrictQuery<DoneQuery>,
) -> PageResult {
    team_page(&ui.app, &session, &id, Page::done(&q.done)).await
}

/// What a team's page shows beside the team: a message, or after a refused post its error
/// and what was typed.
#[derive(Default)]
struct Page {
    done: Option<&'static str>,
    error: Option<UiError>,
    form: Option<TeamForm>,
    member_user: String,
    member_role: String,
}

impl Page {
    fn done(word: &str) -> Page {
        Page {
            done: done_message(word),
            ..Page::default()
        }
    }
}

async fn team_page(app: &AppState, session: &Session, id: &str, page: Page) -> PageResult {
    let caller = &session.caller;
    let found = api::read_team(app, caller, id).await?;
    let team = found.team;
    let names_users = caller.reads_users();
    let mut names = Names::default();
    if names_users {
        let wanted: Vec<(SpendKind, &str)> = found
            .members
            .iter()
            .map(|m| (SpendKind::User, m.user_id.as_str()))
            .collect();
        names.load(app, &wanted).await?;
    }
    let mut members = Vec::with_capacity(found.members.len());
    for m in found.members {
        let you = caller.is_user(&m.user_id);
        let name = match (names_users, caller.user()) {
            (true, _) => names
                .user(app, &m.user_id)
                .await?
                .unwrap_or_else(|| format!("deleted user {}", show::short(&m.user_id))),
            // Their own name everyone knows.
            (false, Some(me)) if you => me.username.clone(),
            (false, _) => String::new(),
        };
        members.push(MemberRow {
            path: (names_users || you).then(|| format!("/users/{}", m.user_id)),
            name,
            role: m.role.as_str(),
            source: m.source.as_str(),
            since: show::day(m.created_at),
            you,
            user_id: m.user_id,
        });
    }
    let can_edit = caller.manages_team(app, id).await?;
    let can_manage_members = caller.owns_team(app, id).await?;
    let status = page.error.as_ref().map_or(StatusCode::OK, |e| e.status);
    let form = page.form.unwrap_or_else(|| TeamForm::of(&team));
    let view = TeamView {
        layout: Layout::of(session, format!("Team {}", team.name), "/teams"),
        done: page.done,
        error: page.error.map(|e| e.message),
        budget: show::budget(&team.limits),
        spend: show::usd(found.spend),
        models: match team.models.is_empty() {
            true => "every model".to_owned(),
            false => team.models.join(", "),
        },
        created: show::when(team.created_at),
        members,
        can_edit,
        can_manage_members,
        names_users,
        // `GET /admin/keys?team_id=` answers admins, viewers and the team's owners.
        keys_link: caller.reads_all() || can_manage_members,
        durations: show::choices(&show::DURATIONS, &form.budget_duration),
        form,
        member_user: page.member_user,
        member_roles: show::choices(
            &TEAM_ROLES,
            match page.member_role.as_str() {
                "" => "member",
                role => role,
            },
        ),
        team,
    };
    Ok(render_with_status(status, &view))
}

/// `POST /ui/teams/{id}/edit`: the form as `PATCH /admin/teams/{id}` takes it.
async fn edit(
    State(ui): State<UiState>,
    PathId(id): PathId,
    Posted { session, form }: Posted<TeamForm>,
) -> PageResult {
    let app = &ui.app;
    let updated = match form.update() {
        Ok(body) => api::update_team(app, &session.caller, &id, body)
            .await
            .map_err(UiError::from),
        Err(e) => Err(e),
    };
    match updated {
        Ok(_) => Ok(session.site.redirect(&format!("/teams/{id}?done=updated"))),
        // A refusal of the caller's role is the API's 403 page; anything else is shown on
        // the team's page, with what was typed.
        Err(e) if e.status == StatusCode::FORBIDDEN || e.status == StatusCode::NOT_FOUND => Err(e),
        Err(e) => {
            let page = Page {
                error: Some(e),
                form: Some(form),
                ..Page::default()
            };
            team_page(app, &session, &id, page).await
        }
    }
}

/// `POST /ui/teams/{id}/delete`: after a confirmation (the browser's, or else this page's),
/// as `DELETE /admin/teams/{id}`.
async fn delete(
    State(ui): State<UiState>,
    PathId(id): PathId,
    Posted { session, form }: Posted<Confirmed>,
) -> PageResult {
    let app = &ui.app;
    if !form.is_confirmed() {
        // Ask only those the API would let delete it.
        let caller = &session.caller;
        let manages = caller.manages_team(app, &id).await?;
        caller.allow(manages, "delete a team they do not own")?;
        let team = api::read_team(app, caller, &id).await?.team;
        let view = ConfirmView {
            layout: Layout::of(&session, format!("Delete team {}", team.name), "/teams"),
            heading: format!("Delete the team {}?", team.name),
            message:
                "Its members leave it and its keys are revoked at once. This cannot be undone."
                    .into(),
            action: format!("/teams/{}/delete", team.id),
            button: "Delete the team",
            cancel: format!("/teams/{}", team.id),
            fields: Vec::new(),
        };
        return Ok(render(&view));
    }
    api::delete_team(app, &session.caller, &id).await?;
    Ok(session.site.redirect("/teams?done=deleted"))
}

/// The add-member form.
#[derive(Deserialize, Default)]
#[serde(default)]
struct MemberForm {
    /// A username, an email or an id (an id only, for those who may not read users).
    user: String,
    /// `member` or `owner`.
    role: String,
}

/// `POST /ui/teams/{id}/members`: as `POST /admin/teams/{id}/members`.
async fn add_member(
    State(ui): State<UiState>,
    PathId(id): PathId,
    Posted { session, form }: Posted<MemberForm>,
) -> PageResult {
    let app = &ui.app;
    let added = async {
        let role = match form.role.trim() {
            "" | "member" => TeamRole::Member,
            "owner" => TeamRole::Owner,
            other => {
                return Err(UiError::bad_request(format!(
                    "`role` must be member or owner, not `{}`.",
                    show::clip(other)
                )))
            }
        };
        let user_id = member_id(app, &session.caller, &form.user).await?;
        api::add_member_as(app, &session.caller, &id, AddMember { user_id, role })
            .await
            .map_err(UiError::from)
    }
    .await;
    match added {
        Ok(_) => Ok(session
            .site
            .redirect(&format!("/teams/{id}?done=member_added#members"))),
        Err(e) if e.status == StatusCode::FORBIDDEN => Err(e),
        Err(e) => {
            let page = Page {
                error: Some(e),
                member_user: form.user,
                member_role: form.role,
                ..Page::default()
            };
            team_page(app, &session, &id, page).await
        }
    }
}

/// The id of the user the add-member form names: looked up by username, email or id for
/// those who may read users, taken as an id from others.
async fn member_id(app: &AppState, caller: &Caller, typed: &str) -> Result<String, UiError> {
    let typed = typed.trim();
    if typed.is_empty() {
        return Err(UiError::bad_request("Name the user to add."));
    }
    if !caller.reads_users() {
        return Ok(typed.to_owned());
    }
    if let Some(found) = app.store.find_login_user(typed).await? {
        return Ok(found.user.id);
    }
    match app.store.get_user(typed).await? {
        Some(user) => Ok(user.id),
        None => Err(UiError::bad_request(format!(
            "No user is named, or has the email or id, `{}`.",
            show::clip(typed)
        ))),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RemoveForm {
    user_id: String,
}

/// `POST /ui/teams/{id}/members/remove`: as `DELETE /admin/teams/{id}/members/{user_id}`.
async fn remove_member(
    State(ui): State<UiState>,
    PathId(id): PathId,
    Posted { session, form }: Posted<RemoveForm>,
) -> PageResult {
    api::remove_member_as(&ui.app, &session.caller, &id, form.user_id.trim()).await?;
    Ok(session
        .site
        .redirect(&format!("/teams/{id}?done=member_removed#members")))
}
