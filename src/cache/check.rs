//! Gathers a check's inputs from the snapshot and hands them to the engine.

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

impl EnvCache {
    /// Evaluates `flag` for the company and user the keys identify. Unknown keys evaluate
    /// with no company (or user): only global and standard rules and the default apply.
    pub fn check(
        &self,
        catalog: &Catalog,
        flag: &Arc<engine::Flag>,
        company_keys: &KeyMap,
        user_keys: &KeyMap,
        now: DateTime<Utc>,
    ) -> CheckOutcome {
        let company = (!company_keys.is_empty())
            .then(|| self.find_company(company_keys))
            .flatten();
        let user = (!user_keys.is_empty())
            .then(|| self.find_user(user_keys))
            .flatten();
        self.check_resolved(catalog, flag, company, user, now)
    }

    pub fn check_resolved(
        &self,
        catalog: &Catalog,
        flag: &Arc<engine::Flag>,
        company: Option<(String, Arc<CompanyState>)>,
        user: Option<(String, Arc<UserState>)>,
        now: DateTime<Utc>,
    ) -> CheckOutcome {
        let context = company
            .as_ref()
            .map(|(_, state)| self.effective_context(catalog, state));
        let candidates = match (&flag.feature, &company) {
            (Some(feature), Some((_, state))) => {
                candidates(catalog, state, context.as_deref(), &feature.id)
            }
            _ => Vec::new(),
        };
        let evaluation = engine::evaluate(
            flag,
            context.as_deref(),
            user.as_ref().map(|(_, u)| &u.context),
            &candidates,
            now,
        );
        CheckOutcome {
            flag: flag.clone(),
            company_id: company.map(|(id, _)| id),
            user_id: user.map(|(id, _)| id),
            evaluation,
        }
    }

    /// The company's context with the environment's fallback plan when it has no base plan.
    /// The fallback is a plan key resolved now, so a plan created after start applies.
    fn effective_context<'a>(
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
                ctx.base_plan_id = Some(plan_id.clone());
                ctx.plan_ids.insert(0, plan_id.clone());
                Cow::Owned(ctx)
            }
            None => Cow::Borrowed(&state.context),
        }
    }
}

/// The entitlements of the company's plans for `feature_id`, plus its live override.
fn candidates(
    catalog: &Catalog,
    state: &CompanyState,
    context: Option<&engine::CompanyContext>,
    feature_id: &str,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    let plan_ids = context.map(|c| c.plan_ids.as_slice()).unwrap_or_default();
    for plan_id in plan_ids {
        let Some(info) = catalog
            .entitlements
            .get(&(plan_id.clone(), feature_id.to_string()))
        else {
            continue;
        };
        let mut candidate = info.candidate.clone();
        if info.pay_in_advance {
            let quantity = state
                .memberships
                .iter()
                .find(|m| &m.plan_id == plan_id)
                .map(|m| m.quantity)
                .unwrap_or(0);
            candidate.pay_in_advance_quantity = Some(quantity);
        }
        out.push(candidate);
    }
    if let Some(o) = state.overrides.get(feature_id) {
        out.push(o.clone());
    }
    out
}
