//! From a verified OIDC token to a tollgate user: find the user linked to the identity
//! (issuer, subject), or link one by email, or create one (`auto_provision`), and keep the
//! role and group memberships in step with the token's groups (`group_to_role`,
//! `group_to_team`, creating missing teams with `auto_create_teams`).
//!
//! Linking by email hands the identity an existing account, so it needs an email the
//! issuer vouches for: `email_verified: true` in the token, or `trust_email` on the issuer.
//! Anyone can put any address in an account at many issuers.
//!
//! The sync is a store write, so it must not run on every request. It runs when this
//! process sees an identity with claims (email, name, groups) it has not seen within
//! `cache.key_ttl`: a token with new groups takes effect at once, the same token used for
//! many requests costs one write. "Not linked and no `auto_provision`" is remembered for
//! `cache.negative_ttl`.

use super::key_cache::{Invalidation, StoreCache};
use super::oidc::OidcIdentity;
use crate::config::{self, OidcIssuer};
use crate::domain::Role;
use crate::metrics::Metrics;
use crate::store::{Actor, OidcLogin, SharedStore, StoreError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Duration;

/// What an issuer's config says about its users.
#[derive(Debug, Clone)]
struct IssuerPolicy {
    auto_provision: bool,
    /// Every email of this issuer counts as verified.
    trust_email: bool,
    default_role: Role,
    group_to_team: Vec<(String, String)>,
    /// Teams `group_to_team` names that do not exist are created.
    auto_create_teams: bool,
    group_to_role: Vec<(String, Role)>,
    /// The claim that names the user's org (`org_claim`).
    org_claim: Option<String>,
}

impl IssuerPolicy {
    fn from_config(issuer: &OidcIssuer) -> IssuerPolicy {
        // Config validation has checked every role name: built-in roles only.
        let role = |name: &str| Role::built_in(name).unwrap_or(Role::User);
        IssuerPolicy {
            auto_provision: issuer.auto_provision,
            trust_email: issuer.trust_email,
            default_role: issuer.default_role.as_deref().map_or(Role::User, role),
            group_to_team: issuer
                .group_to_team
                .iter()
                .map(|(g, t)| (g.clone(), t.clone()))
                .collect(),
            auto_create_teams: issuer.auto_create_teams,
            group_to_role: issuer
                .group_to_role
                .iter()
                .map(|(g, r)| (g.clone(), role(r)))
                .collect(),
            org_claim: issuer.org_claim.clone(),
        }
    }

    /// The role the groups give: the most privileged mapped one, else `default_role`.
    /// `None` when the issuer maps no groups to roles (roles are then managed by hand).
    fn role_for(&self, groups: &[String]) -> Option<Role> {
        if self.group_to_role.is_empty() {
            return None;
        }
        let mapped = self
            .group_to_role
            .iter()
            .filter(|(group, _)| groups.contains(group))
            .map(|(_, role)| role)
            .min_by_key(|role| privilege_rank(role));
        Some(mapped.unwrap_or(&self.default_role).clone())
    }

    /// The team names the groups map to; `None` when the issuer maps no groups to teams.
    fn teams_for(&self, groups: &[String]) -> Option<Vec<String>> {
        if self.group_to_team.is_empty() {
            return None;
        }
        let mut teams: Vec<String> = self
            .group_to_team
            .iter()
            .filter(|(group, _)| groups.contains(group))
            .map(|(_, team)| team.clone())
            .collect();
        teams.sort();
        teams.dedup();
        Some(teams)
    }
}

/// 0 is the most privileged.
fn privilege_rank(role: &Role) -> u8 {
    match role {
        Role::Admin => 0,
        Role::OrgAdmin => 1,
        Role::Manager => 2,
        Role::User | Role::Custom(_) => 3,
        Role::Viewer => 4,
    }
}

/// What a verified identity is ([`OidcUsers::user_id`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// This user.
    User(String),
    /// Nobody may sign in with these claims; the reason, for the 401.
    Refused(String),
}

/// Maps verified OIDC identities to user ids, provisioning and syncing through the store.
pub struct OidcUsers {
    store: SharedStore,
    issuers: HashMap<String, IssuerPolicy>,
    /// Fingerprint of (issuer, subject, email, name, groups, org) → what it resolved to.
    seen: StoreCache<[u8; 32], Resolved>,
}

impl OidcUsers {
    pub fn new(
        store: SharedStore,
        issuers: &[OidcIssuer],
        cache: &config::Cache,
        timeout: Duration,
        metrics: Metrics,
    ) -> OidcUsers {
        OidcUsers {
            store,
            issuers: issuers
                .iter()
                .map(|i| (i.issuer.clone(), IssuerPolicy::from_config(i)))
                .collect(),
            seen: StoreCache::new("identity", cache, timeout, metrics),
        }
    }

    /// The user this identity is, or `None` when it is linked to nobody and its issuer does
    /// not provision users. With the issuer's `org_claim`, a token whose claim is missing or
    /// names no live org, or whose user belongs to another org, is [`Resolved::Refused`].
    /// `fresh` is told the ids whose record the sync may have changed (role), so their
    /// cached records can be dropped.
    pub async fn user_id(
        &self,
        identity: &OidcIdentity,
        source: Option<&str>,
        fresh: impl FnOnce(&str),
    ) -> Result<Option<Resolved>, StoreError> {
        let Some(policy) = self.issuers.get(&identity.issuer) else {
            // The verifier only accepts configured issuers.
            return Ok(None);
        };
        let mut synced = None;
        let synced_id = &mut synced;
        let mut new_account = false;
        let new_account_seen = &mut new_account;
        let found = self
            .seen
            .get_or_load(&fingerprint(identity), || async move {
                let org = match (&policy.org_claim, &identity.org) {
                    (None, _) => None,
                    (Some(claim), None) => {
                        return Ok(Some(Resolved::Refused(format!(
                            "The token has no `{claim}` claim, which names your organization"
                        ))))
                    }
                    (Some(claim), Some(name)) => match self.store.org_by_name(name).await? {
                        Some(org) => Some(org.id),
                        None => {
                            return Ok(Some(Resolved::Refused(format!(
                                "The token's `{claim}` claim names no organization here: {name:?}"
                            ))))
                        }
                    },
                };
                let login = OidcLogin {
                    issuer: identity.issuer.clone(),
                    subject: identity.subject.clone(),
                    email: identity.email.clone(),
                    email_verified: policy.trust_email || identity.email_verified,
                    name: identity.name.clone(),
                    auto_provision: policy.auto_provision,
                    default_role: policy.default_role.clone(),
                    role_from_groups: policy.role_for(&identity.groups),
                    teams_from_groups: policy.teams_for(&identity.groups),
                    auto_create_teams: policy.auto_create_teams,
                    org_id: org.clone(),
                };
                let actor = Actor::new(
                    format!("oidc:{}", identity.issuer),
                    source.map(str::to_owned),
                );
                let outcome = self.store.oidc_login(&actor, login).await?;
                Ok(outcome.map(|o| {
                    if o.created {
                        tracing::info!(user.id = %o.user.id, user.name = %o.user.username, issuer = %identity.issuer, "created a user from an OIDC login");
                    }
                    for (id, name) in &o.created_teams {
                        tracing::info!(team.id = %id, team.name = %name, issuer = %identity.issuer, "created a team named by group_to_team");
                    }
                    if !o.missing_teams.is_empty() {
                        tracing::warn!(issuer = %identity.issuer, teams = ?o.missing_teams, "group_to_team names teams that do not exist; create them to sync their members");
                    }
                    *synced_id = Some(o.user.id.clone());
                    *new_account_seen = o.created || o.linked;
                    if org.is_some() && o.user.org_id != org {
                        return Resolved::Refused(
                            "This account belongs to another organization than the token names"
                                .to_string(),
                        );
                    }
                    Resolved::User(o.user.id)
                }))
            })
            .await?;
        if let Some(id) = &synced {
            fresh(id);
        }
        if new_account {
            // Other claim sets of this identity (say, the same email not yet verified) may
            // be remembered as linked to nobody; they are not any more.
            self.seen.forget_missing();
        }
        Ok(found.map(|resolved| (*resolved).clone()))
    }

    /// Forgets identities remembered as "linked to nobody": a user just created may be
    /// theirs (linked by email on their next token).
    pub fn user_created(&self) {
        self.seen.forget_missing();
    }

    /// Drops remembered identities of a user an admin changed or deleted, so the next token
    /// syncs (or provisions) again.
    pub fn invalidate(&self, what: &Invalidation) {
        match what {
            Invalidation::All => self.seen.invalidate(None),
            Invalidation::User(id) => {
                let id = id.clone();
                self.seen.invalidate(Some(Box::new(
                    move |_, seen| matches!(seen, Resolved::User(user) if *user == id),
                )));
            }
            // Team writes can change what `group_to_team` resolves to (a team created or
            // renamed): sync again.
            Invalidation::Team(_) => self.seen.invalidate(None),
            // An org created, renamed or deleted changes what `org_claim` names.
            Invalidation::Org(_) => self.seen.invalidate(None),
            Invalidation::Key(_) | Invalidation::Role(_) => {}
        }
    }
}

fn fingerprint(identity: &OidcIdentity) -> [u8; 32] {
    let mut groups = identity.groups.clone();
    groups.sort();
    let mut hash = Sha256::new();
    for part in [
        identity.issuer.as_str(),
        identity.subject.as_str(),
        identity.email.as_deref().unwrap_or(""),
        if identity.email_verified { "1" } else { "0" },
        identity.name.as_deref().unwrap_or(""),
        identity.org.as_deref().unwrap_or(""),
    ]
    .into_iter()
    .chain(groups.iter().map(String::as_str))
    {
        // Length-prefixed, so no two different claim sets hash the same input.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> IssuerPolicy {
        let issuer: OidcIssuer = serde_yaml::from_str(yaml).unwrap();
        IssuerPolicy::from_config(&issuer)
    }

    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn roles_follow_groups_only_when_mapped() {
        let p = policy("{ issuer: i, audiences: [a] }");
        assert_eq!(p.role_for(&groups(&["platform-admin"])), None);

        let p = policy(
            "{ issuer: i, audiences: [a], default_role: viewer, group_to_role: { ops: manager, platform-admin: admin } }",
        );
        assert_eq!(
            p.role_for(&groups(&["ops", "platform-admin"])),
            Some(Role::Admin)
        );
        assert_eq!(p.role_for(&groups(&["ops"])), Some(Role::Manager));
        // Losing the group drops the role back to the default.
        assert_eq!(p.role_for(&groups(&["other"])), Some(Role::Viewer));
    }

    #[test]
    fn teams_follow_groups_only_when_mapped() {
        let p = policy("{ issuer: i, audiences: [a] }");
        assert_eq!(p.teams_for(&groups(&["engineering"])), None);

        let p = policy(
            "{ issuer: i, audiences: [a], group_to_team: { engineering: Eng, eng-oncall: Eng, sales: Sales } }",
        );
        assert_eq!(
            p.teams_for(&groups(&["eng-oncall", "engineering", "x"])),
            Some(vec!["Eng".to_owned()])
        );
        assert_eq!(p.teams_for(&[]), Some(vec![]));
    }

    #[test]
    fn fingerprints_tell_claim_sets_apart() {
        let id = |groups: &[&str], email: Option<&str>| OidcIdentity {
            issuer: "i".into(),
            subject: "s".into(),
            email: email.map(str::to_owned),
            email_verified: false,
            name: None,
            groups: groups.iter().map(|s| s.to_string()).collect(),
            org: None,
        };
        assert_eq!(
            fingerprint(&id(&["a", "b"], None)),
            fingerprint(&id(&["b", "a"], None))
        );
        assert_ne!(
            fingerprint(&id(&["a"], None)),
            fingerprint(&id(&["b"], None))
        );
        assert_ne!(
            fingerprint(&id(&["ab"], None)),
            fingerprint(&id(&["a", "b"], None))
        );
        assert_ne!(
            fingerprint(&id(&[], Some("e@x"))),
            fingerprint(&id(&[], None))
        );
        // A verified email is a new claim set: "not linked" is not remembered across it.
        let verified = OidcIdentity {
            email_verified: true,
            ..id(&[], Some("e@x"))
        };
        assert_ne!(fingerprint(&verified), fingerprint(&id(&[], Some("e@x"))));
    }
}
