//! Who pays for a request: the one place that says which key, user and team a request is
//! counted against, for rate limits, budgets, the grant's identity headers and the spend
//! written with its usage record.
//!
//! A virtual key's request is counted against the key, its user (when the key has one), its
//! team (when it has one) and its org (its team's org, else its user's: the two are the
//! same when both exist, since users and teams meet only inside one org); a person signed
//! in with a login token against their own user and their user's org; the master key
//! against nobody.
//!
//! Everything downstream (buckets, budgets, parallel slots, refusals) goes through
//! [`Payers::iter`], [`level`] and [`whose`]: a new kind of payer is a field here and an
//! arm in each of those.

use crate::budget::Charge;
use crate::decision::Principal;
use crate::domain::{KeyOwnerOrg, Limits};
use crate::store::SpendKind;
use crate::usage::UsageRecord;

/// One payer: its kind, id and limits as the store (or cache) returned them.
#[derive(Debug, Clone, Copy)]
pub struct Payer<'a> {
    pub kind: SpendKind,
    pub id: &'a str,
    pub limits: &'a Limits,
}

/// The payers of one request, most general first (org, team, user, key).
#[derive(Debug, Clone, Copy, Default)]
pub struct Payers<'a> {
    pub org: Option<Payer<'a>>,
    pub team: Option<Payer<'a>>,
    pub user: Option<Payer<'a>>,
    pub key: Option<Payer<'a>>,
}

impl<'a> Payers<'a> {
    /// `user_org` is the org of a person signed in with a login token (a key carries its
    /// own); it is ignored for keys.
    pub fn of(principal: &'a Principal, user_org: Option<&'a KeyOwnerOrg>) -> Payers<'a> {
        let org = |o: &'a KeyOwnerOrg| Payer {
            kind: SpendKind::Org,
            id: &o.id,
            limits: &o.limits,
        };
        match principal {
            Principal::Master => Payers::default(),
            Principal::Key(key) => Payers {
                key: Some(Payer {
                    kind: SpendKind::Key,
                    id: &key.id,
                    limits: &key.limits,
                }),
                user: key.user.as_ref().map(|u| Payer {
                    kind: SpendKind::User,
                    id: &u.id,
                    limits: &u.limits,
                }),
                team: key.team.as_ref().map(|t| Payer {
                    kind: SpendKind::Team,
                    id: &t.id,
                    limits: &t.limits,
                }),
                org: key.org.as_deref().map(org),
            },
            Principal::User(user) => Payers {
                user: Some(Payer {
                    kind: SpendKind::User,
                    id: &user.id,
                    limits: &user.limits,
                }),
                org: user_org.map(org),
                ..Payers::default()
            },
        }
    }

    /// Org, team, user, key: the order buckets are listed in.
    pub fn iter(&self) -> impl Iterator<Item = Payer<'a>> {
        [self.org, self.team, self.user, self.key]
            .into_iter()
            .flatten()
    }

    /// The budgets the request is charged against: each payer's `max_budget`, where set.
    pub fn charges(&self) -> Vec<Charge> {
        self.iter()
            .filter_map(|p| Charge::of(p.kind, p.id, p.limits))
            .collect()
    }
}

/// The letter that names a payer's buckets, budgets and slots: `o`, `t`, `u` or `k`.
pub fn level(kind: SpendKind) -> &'static str {
    match kind {
        SpendKind::Team => "t",
        SpendKind::User => "u",
        SpendKind::Key => "k",
        SpendKind::Org => "o",
    }
}

/// How a refusal names a payer to the client.
pub fn whose(kind: SpendKind) -> &'static str {
    match kind {
        SpendKind::Key => "this API key",
        SpendKind::User => "your user",
        SpendKind::Team => "your team",
        SpendKind::Org => "your organization",
    }
}

/// The payers named by a usage record (key, user, team, org; empty ids are nobody), for
/// the spend it adds and the budget alerts it may raise. The store fills in a record's
/// `org_id` from its team or user when it is written.
pub fn of_record(record: &UsageRecord) -> impl Iterator<Item = (SpendKind, &str)> {
    [
        (SpendKind::Key, record.key_id.as_deref()),
        (SpendKind::User, record.user_id.as_deref()),
        (SpendKind::Team, record.team_id.as_deref()),
        (SpendKind::Org, record.org_id.as_deref()),
    ]
    .into_iter()
    .filter_map(|(kind, id)| id.filter(|id| !id.is_empty()).map(|id| (kind, id)))
}
