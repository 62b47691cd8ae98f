//! Applying many customers or subscriptions of one environment at once (a batch of webhook
//! events): a handful of statements for the whole set instead of several per object.
//!
//! The rare cases go through the one-object functions of [`super`]: a customer whose keys are
//! invalid, shared with another customer of the set, split over several companies or new to
//! its company (those need [`keys::upsert`]'s checks and messages), and a subscription whose
//! customer no company has yet.
//!
//! Every object's version is claimed by the caller, object ids are distinct, and memberships
//! are left to the caller ([`Applied::resync`]), which recomputes each company once.

use std::collections::HashMap;

use super::{
    company_for_customer, company_name, customer_applied, customer_keys, customer_row,
    customer_written, put_customer, subscription_applied, subscription_fields, Applied, ApplyError,
    Context, CUSTOMER_KEY,
};
use crate::store::keys::{self, Entity};
use crate::store::stripe::{self as store, CustomerRow};
use sqlx::PgConnection;

use super::super::objects::{Customer, Subscription};

/// How a customer of the set reaches its company.
#[derive(Debug, Clone, PartialEq)]
enum Route {
    /// Every key of the customer already belongs to this company.
    Existing(String),
    /// No key belongs to a company: create one.
    New,
    /// Anything else: [`put_customer`] on its own.
    Alone,
}

type Owners = HashMap<(String, String), String>;

fn route(keys: &[(String, String)], owners: &Owners) -> Route {
    let mut owner: Option<&String> = None;
    let mut missing = false;
    for (k, v) in keys {
        match owners.get(&(k.clone(), v.clone())) {
            None => missing = true,
            Some(o) if owner.is_some_and(|x| x != o) => return Route::Alone,
            Some(o) => owner = Some(o),
        }
    }
    match (owner, missing) {
        (None, _) => Route::New,
        (Some(o), false) => Route::Existing(o.clone()),
        (Some(_), true) => Route::Alone,
    }
}

fn pairs(
    keysets: &[Vec<(String, String)>],
    which: impl Iterator<Item = usize>,
) -> Vec<(&str, &str)> {
    which
        .flat_map(|i| keysets[i].iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect()
}

/// Applies `list` (`(customer, deleted)`), in order.
pub async fn customers(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    list: &[(Customer, bool)],
) -> Result<Vec<Applied>, ApplyError> {
    let env = ctx.environment_id;
    let keysets: Vec<Vec<(String, String)>> = list
        .iter()
        .map(|(c, _)| customer_keys(ctx.config, c))
        .collect();
    // A key two customers of the set name, or an invalid one: those go on their own.
    let mut uses: HashMap<(&str, &str), usize> = HashMap::new();
    for (k, v) in pairs(&keysets, 0..keysets.len()) {
        *uses.entry((k, v)).or_default() += 1;
    }
    let alone = |keys: &[(String, String)]| {
        keys::validate("keys", keys).is_err()
            || keys
                .iter()
                .any(|(k, v)| uses[&(k.as_str(), v.as_str())] > 1)
    };
    let owners = keys::owners(conn, Entity::Company, env, &pairs(&keysets, 0..list.len())).await?;
    let mut routes: Vec<Route> = keysets
        .iter()
        .map(|keys| match alone(keys) {
            true => Route::Alone,
            false => route(keys, &owners),
        })
        .collect();
    // Companies to create: their keys locked (as `keys::upsert` does), then looked up again,
    // since another transaction may have created one in between.
    let new: Vec<usize> = (0..list.len())
        .filter(|&i| routes[i] == Route::New)
        .collect();
    if !new.is_empty() {
        let locked: Vec<(String, String)> = new
            .iter()
            .flat_map(|&i| keysets[i].iter().cloned())
            .collect();
        keys::lock(conn, Entity::Company, env, &locked).await?;
        let owners = keys::owners(
            conn,
            Entity::Company,
            env,
            &pairs(&keysets, new.iter().copied()),
        )
        .await?;
        for &i in &new {
            routes[i] = route(&keysets[i], &owners);
        }
    }
    let mut companies: Vec<Option<String>> = routes
        .iter()
        .map(|r| match r {
            Route::Existing(id) => Some(id.clone()),
            Route::New => Some(keys::new_id(Entity::Company)),
            Route::Alone => None,
        })
        .collect();
    let created: Vec<keys::New> = (0..list.len())
        .filter(|&i| routes[i] == Route::New)
        .map(|i| keys::New {
            id: companies[i].as_deref().unwrap_or_default(),
            name: company_name(&list[i].0),
            traits: None,
            keys: &keysets[i],
        })
        .collect();
    if !created.is_empty() {
        keys::create_many(conn, Entity::Company, env, &created).await?;
    }
    let renames: Vec<(&str, &str)> = (0..list.len())
        .filter_map(|i| match (&routes[i], company_name(&list[i].0)) {
            (Route::Existing(id), Some(n)) => Some((id.as_str(), n)),
            _ => None,
        })
        .collect();
    let renamed = if renames.is_empty() {
        Default::default()
    } else {
        keys::rename_many(conn, Entity::Company, env, &renames).await?
    };
    let set: Vec<usize> = (0..list.len())
        .filter(|&i| companies[i].is_some())
        .collect();
    let rows: Vec<CustomerRow> = set
        .iter()
        .map(|&i| {
            let (c, deleted) = &list[i];
            customer_row(c, companies[i].as_deref().unwrap_or_default(), *deleted)
        })
        .collect();
    let mut written = vec![None; list.len()];
    if !rows.is_empty() {
        for (&i, w) in set
            .iter()
            .zip(store::upsert_customers(conn, env, &rows).await?)
        {
            let company = companies[i].as_deref().unwrap_or_default();
            written[i] = customer_written(routes[i] == Route::New, renamed.contains(company), w);
        }
    }
    for i in 0..list.len() {
        if routes[i] == Route::Alone {
            let (c, deleted) = &list[i];
            let (company, w) = put_customer(conn, ctx, c, *deleted).await?;
            companies[i] = Some(company);
            written[i] = w;
        }
    }
    Ok(list
        .iter()
        .zip(companies)
        .zip(written)
        .map(|(((_, deleted), company), w)| {
            customer_applied(ctx, company.unwrap_or_default(), w, *deleted)
        })
        .collect())
}

/// Applies `list` (re-read from Stripe already, when the environment asks for it), in order.
pub async fn subscriptions(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    list: Vec<Subscription>,
) -> Result<Vec<Applied>, ApplyError> {
    let env = ctx.environment_id;
    let fields = list
        .into_iter()
        .map(subscription_fields)
        .collect::<Result<Vec<_>, _>>()?;
    let customers: Vec<&str> = fields.iter().map(|f| f.customer_id.as_str()).collect();
    let mut known = keys::companies_by_key_values(conn, env, CUSTOMER_KEY, &customers).await?;
    let mut companies = Vec::with_capacity(fields.len());
    for f in &fields {
        let id = match known.get(&f.customer_id) {
            Some(id) => id.clone(),
            None => {
                let id = company_for_customer(conn, ctx, &f.customer_id).await?;
                known.insert(f.customer_id.clone(), id.clone());
                id
            }
        };
        companies.push(id);
    }
    let ids: Vec<&str> = companies.iter().map(String::as_str).collect();
    let puts = store::put_subscriptions(conn, env, &ids, &fields).await?;
    Ok(companies
        .into_iter()
        .zip(puts)
        .map(|(company, put)| subscription_applied(company, put))
        .collect())
}
