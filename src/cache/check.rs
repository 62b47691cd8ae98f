//! Gathers a check's inputs from the snapshot and hands them to the engine.
//!
//! A request resolves its subject once ([`EnvCache::find`], then [`Found::subject`]: the
//! company, its effective context with the fallback plan, the user) and evaluates any number
//! of flags against it with [`EnvCache::evaluate`], which borrows the catalog's entitlements
//! instead of copying them: an all-flags check costs one lookup of the company, not one per
//! flag.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Catalog, CompanyState, EnvCache, UserState};
use crate::engine::{self, Candidate, Evaluation};

/// Identifying keys as sent by clients: `{"stripe_customer_id": "cus_1"}`.
pub type KeyMap = Vec<(String, String)>;

pub struct CheckOutcome {
    pub flag: Arc<engine::Flag>,
    pub company_id: Option<String>,
    pub user_id: Option<String>,
    pub evaluation: Evaluation,
}

/// The company and user some keys identify, as held by the snapshot when they were looked up.
#[derive(Default)]
pub struct Found {
    pub company: Option<(String, Arc<CompanyState>)>,
    pub user: Option<(String, Arc<UserState>)>,
}

/// What every flag of one request is evaluated against, borrowed from a [`Found`].
pub struct Subject<'a> {
    pub company_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    company: Option<&'a CompanyState>,
    /// The company's context with the fallback plan applied (copied only when it applies).
    context: Option<Cow<'a, engine::CompanyContext>>,
    user: Option<&'a engine::UserContext>,
}

impl Found {
    /// Resolves the fallback plan once, for every flag this subject is checked against.
    pub fn subject<'a>(&'a self, env: &EnvCache, catalog: &Catalog) -> Subject<'a> {
        let company = self.company.as_ref();
        Subject {
            company_id: company.map(|(id, _)| id.as_str()),
            user_id: self.user.as_ref().map(|(id, _)| id.as_str()),
            company: company.map(|(_, s)| &**s),
            context: company.map(|(_, s)| env.effective_context(catalog, s)),
            user: self.user.as_ref().map(|(_, u)| &u.context),
        }
    }
}

impl EnvCache {
    /// The company and user the keys identify. Unknown keys find nothing: such a check
    /// evaluates with no company (or user), so only global and standard rules and the
    /// default apply.
    pub fn find(&self, company_keys: &KeyMap, user_keys: &KeyMap) -> Found {
        Found {
            company: (!company_keys.is_empty())
                .then(|| self.find_company(company_keys))
                .flatten(),
            user: (!user_keys.is_empty())
                .then(|| self.find_user(user_keys))
                .flatten(),
        }
    }

    /// Evaluates `flag` for the company and user the keys identify.
    pub fn check(
        &self,
        catalog: &Catalog,
        flag: &Arc<engine::Flag>,
        company_keys: &KeyMap,
        user_keys: &KeyMap,
        now: DateTime<Utc>,
    ) -> CheckOutcome {
        let found = self.find(company_keys, user_keys);
        self.outcome(catalog, flag, found, now)
    }

    pub fn check_resolved(
        &self,
        catalog: &Catalog,
        flag: &Arc<engine::Flag>,
        company: Option<(String, Arc<CompanyState>)>,
        user: Option<(String, Arc<UserState>)>,
        now: DateTime<Utc>,
    ) -> CheckOutcome {
        self.outcome(catalog, flag, Found { company, user }, now)
    }

    fn outcome(
        &self,
        catalog: &Catalog,
        flag: &Arc<engine::Flag>,
        found: Found,
        now: DateTime<Utc>,
    ) -> CheckOutcome {
        let evaluation = self.evaluate(catalog, flag, &found.subject(self, catalog), now);
        CheckOutcome {
            flag: flag.clone(),
            company_id: found.company.map(|(id, _)| id),
            user_id: found.user.map(|(id, _)| id),
            evaluation,
        }
    }

    /// Evaluates one flag for a resolved subject.
    pub fn evaluate(
        &self,
        catalog: &Catalog,
        flag: &engine::Flag,
        subject: &Subject<'_>,
        now: DateTime<Utc>,
    ) -> Evaluation {
        let context = subject.context.as_deref();
        let candidates = match (&flag.feature, subject.company, context) {
            (Some(feature), Some(state), Some(context)) => {
                candidates(catalog, state, context, &feature.id)
            }
            _ => Vec::new(),
        };
        engine::evaluate(flag, context, subject.user, &candidates, now)
    }

    /// The company's context with the environment's fallback plan when it has no base plan.
    /// The fallback is a plan key resolved now, so a plan created after start applies.
    pub fn effective_context<'a>(
        &self,
        catalog: &Catalog,
        state: &'a CompanyState,
    ) -> Cow<'a, engine::CompanyContext> {
        if state.context.base_plan_id.is_some() || self.config.fallback_plan.is_empty() {
            return Cow::Borrowed(&state.context);
        }
        match catalog.plan_ids_by_key.get(&self.config.fallback_plan) {
            Some(plan_id) => {
                let mut ctx = state.context.clone();
                let plan_id: Arc<str> = Arc::from(plan_id.as_str());
                ctx.base_plan_id = Some(plan_id.clone());
                ctx.plan_ids.insert(0, plan_id);
                Cow::Owned(ctx)
            }
            None => Cow::Borrowed(&state.context),
        }
    }
}

/// The entitlements of the company's plans for `feature_id`, plus its live override:
/// borrowed, except a pay-in-advance entitlement, whose allocation is the company's quantity.
fn candidates<'a>(
    catalog: &'a Catalog,
    state: &'a CompanyState,
    context: &engine::CompanyContext,
    feature_id: &str,
) -> Vec<Cow<'a, Candidate>> {
    let by_plan = catalog.entitlements.get(feature_id);
    let overridden = state.override_for(feature_id);
    let mut out = Vec::new();
    if by_plan.is_none() && overridden.is_none() {
        return out;
    }
    for plan_id in by_plan
        .map(|_| context.plan_ids.as_slice())
        .unwrap_or_default()
    {
        let Some(info) = by_plan.and_then(|m| m.get(&**plan_id)) else {
            continue;
        };
        if info.pay_in_advance {
            let quantity = state
                .memberships
                .iter()
                .find(|m| &m.plan_id == plan_id)
                .map(|m| m.quantity)
                .unwrap_or(0);
            let mut candidate = info.candidate.clone();
            candidate.pay_in_advance_quantity = Some(quantity);
            out.push(Cow::Owned(candidate));
        } else {
            out.push(Cow::Borrowed(&info.candidate));
        }
    }
    if let Some(o) = overridden {
        out.push(Cow::Borrowed(o));
    }
    out
}
