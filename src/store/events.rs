//! Ingesting track and identify events: idempotency, companies and users created on first
//! sight, the event rows, and usage counters per metric window, all in the caller's
//! transaction so a batch applies whole or not at all. And reading stored events back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::companies::{self, UpsertCompany};
use super::credits;
use super::keys::Entity;
use super::meter_events::{self, CounterMoves, MeterContext};
use super::usage;
use super::users::{self, UpsertUser};
use super::Error;
use crate::engine::{period, MetricPeriod, MonthReset, UsageCounter};
use crate::ids;

pub type Keys = Vec<(String, String)>;

#[derive(Debug, Clone)]
pub struct Track {
    pub event: String,
    pub company: Keys,
    pub user: Keys,
    pub quantity: i64,
    pub traits: Option<Map<String, Value>>,
}

#[derive(Debug, Clone)]
pub struct IdentifyCompany {
    pub keys: Keys,
    pub name: Option<String>,
    pub traits: Option<Map<String, Value>>,
}

#[derive(Debug, Clone)]
pub struct Identify {
    /// The user's keys; may be empty when only a company is identified.
    pub keys: Keys,
    pub name: Option<String>,
    pub traits: Option<Map<String, Value>>,
    pub company: Option<IdentifyCompany>,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Track(Track),
    Identify(Identify),
}

/// One validated event, ready to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub environment_id: String,
    pub kind: Kind,
    /// The body as received, kept on the event row.
    pub body: Value,
    pub idempotency_key: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    /// The SDKs' `trusted_client_clock`: `sent_at` is the event's time for billing.
    pub trusted_client_clock: bool,
    /// The SDKs' `backfill`: history, counted for usage but never billed.
    pub backfill: bool,
}

/// What ingesting a batch did, per input event.
#[derive(Debug, Default)]
pub struct Ingested {
    /// The stored event's id, or for a duplicate the id of the first event with its key.
    pub ids: Vec<String>,
    pub duplicate: Vec<bool>,
    /// What the batch changed, for the snapshot.
    pub touched: Touched,
    /// Meter-event rows written or added to (usage billed through Stripe meters).
    pub meter_events: u64,
}

/// The companies, users, credit balances and usage counters a batch changed, each as
/// `(environment_id, id)`, in the order they were written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Touched {
    pub companies: Vec<(String, String)>,
    pub users: Vec<(String, String)>,
    pub credits: Vec<(String, String)>,
    /// New absolute values of counters, per company.
    pub usage: Vec<(String, String, Vec<UsageCounter>)>,
}

impl Touched {
    /// Drops repeated entries, keeping the first of each.
    fn dedup(&mut self) {
        fn first_of_each(v: &mut Vec<(String, String)>) {
            let mut seen = std::collections::HashSet::new();
            v.retain(|k| seen.insert(k.clone()));
        }
        first_of_each(&mut self.companies);
        first_of_each(&mut self.users);
        first_of_each(&mut self.credits);
    }
}

/// What ingestion needs to know about credits: per environment, the fallback plan (a
/// company without a base plan burns credits as that plan says), and whether any credit
/// type exists at all (when none does, no entitlement can burn credits). And about usage
/// billed through Stripe meters.
#[derive(Debug, Clone, Default)]
pub struct CreditContext {
    pub fallback_plans: HashMap<String, String>,
    pub credits_exist: bool,
    pub meters: MeterContext,
}

pub async fn ingest(
    conn: &mut PgConnection,
    events: &[NewEvent],
    credit_ctx: &CreditContext,
    now: DateTime<Utc>,
) -> Result<Ingested, Error> {
    let mut out = Ingested {
        ids: events
            .iter()
            .map(|_| ids::new_sortable_id("evnt"))
            .collect(),
        duplicate: vec![false; events.len()],
        touched: Touched::default(),
        meter_events: 0,
    };
    dedupe(conn, events, &mut out).await?;

    // Identify first: a track later in the same batch may name the company it creates.
    let mut company_of: Vec<Option<String>> = vec![None; events.len()];
    let mut user_of: Vec<Option<String>> = vec![None; events.len()];
    for (i, e) in events.iter().enumerate() {
        let Kind::Identify(ident) = &e.kind else {
            continue;
        };
        if out.duplicate[i] {
            continue;
        }
        let env = &e.environment_id;
        if let Some(c) = &ident.company {
            let (id, _) = companies::upsert(
                conn,
                env,
                &UpsertCompany {
                    keys: c.keys.clone(),
                    name: c.name.clone(),
                    traits: c.traits.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| err.at(i))?;
            out.touched.companies.push((env.clone(), id.clone()));
            company_of[i] = Some(id);
        }
        if !ident.keys.is_empty() {
            let done = users::upsert(
                conn,
                env,
                &UpsertUser {
                    keys: ident.keys.clone(),
                    name: ident.name.clone(),
                    traits: ident.traits.clone(),
                    company_ids: company_of[i].iter().cloned().collect(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| err.at(i))?;
            out.touched.users.push((env.clone(), done.id.clone()));
            user_of[i] = Some(done.id);
        }
    }

    resolve_track_companies(conn, events, &mut out, &mut company_of).await?;
    resolve_track_users(conn, events, &mut out, &company_of, &mut user_of).await?;
    insert_rows(conn, events, &out, &company_of, &user_of).await?;
    let (moves, anchors) = count_usage(conn, events, &mut out, &company_of, now).await?;
    out.meter_events = meter_events::bill(
        conn,
        &credit_ctx.meters,
        events,
        &out.ids,
        &out.duplicate,
        &company_of,
        &moves,
        &anchors,
        now,
    )
    .await?;
    if credit_ctx.credits_exist {
        burn_credits(conn, events, &mut out, &company_of, credit_ctx, now).await?;
    }
    out.touched.dedup();
    Ok(out)
}

/// Marks events whose idempotency key was seen in the last 24 hours (in this batch or
/// before) as duplicates, pointing at the first event's id.
async fn dedupe(
    conn: &mut PgConnection,
    events: &[NewEvent],
    out: &mut Ingested,
) -> Result<(), sqlx::Error> {
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let Some(key) = e.idempotency_key.as_deref() else {
            continue;
        };
        match first.get(&(e.environment_id.as_str(), key)) {
            Some(&j) => {
                out.duplicate[i] = true;
                out.ids[i] = out.ids[j].clone();
            }
            None => {
                first.insert((e.environment_id.as_str(), key), i);
            }
        }
    }
    if first.is_empty() {
        return Ok(());
    }
    let mut claims: Vec<(&str, &str, usize)> =
        first.iter().map(|(&(e, k), &i)| (e, k, i)).collect();
    claims.sort(); // a stable lock order across concurrent batches
    let envs: Vec<&str> = claims.iter().map(|c| c.0).collect();
    let keys: Vec<&str> = claims.iter().map(|c| c.1).collect();
    let event_ids: Vec<&str> = claims.iter().map(|c| out.ids[c.2].as_str()).collect();
    let claimed: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO event_idempotency (environment_id, key, event_id)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
         ON CONFLICT (environment_id, key) DO UPDATE
             SET event_id = EXCLUDED.event_id, created_at = now()
             WHERE event_idempotency.created_at < now() - interval '24 hours'
         RETURNING environment_id, key",
    )
    .bind(&envs)
    .bind(&keys)
    .bind(&event_ids)
    .fetch_all(&mut *conn)
    .await?;
    let claimed: std::collections::HashSet<(String, String)> = claimed.into_iter().collect();
    let seen: Vec<&(&str, &str, usize)> = claims
        .iter()
        .filter(|c| !claimed.contains(&(c.0.to_string(), c.1.to_string())))
        .collect();
    if seen.is_empty() {
        return Ok(());
    }
    let envs: Vec<&str> = seen.iter().map(|c| c.0).collect();
    let keys: Vec<&str> = seen.iter().map(|c| c.1).collect();
    let firsts: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT environment_id, key, event_id FROM event_idempotency
         WHERE (environment_id, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
    )
    .bind(&envs)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    let firsts: HashMap<(String, String), String> =
        firsts.into_iter().map(|(e, k, id)| ((e, k), id)).collect();
    for (i, e) in events.iter().enumerate() {
        let Some(key) = e.idempotency_key.as_deref() else {
            continue;
        };
        if let Some(id) = firsts.get(&(e.environment_id.clone(), key.to_string())) {
            out.duplicate[i] = true;
            out.ids[i] = id.clone();
        }
    }
    Ok(())
}

/// Finds (or creates) the company of every track event, with one query for the common case
/// where all of them exist.
async fn resolve_track_companies(
    conn: &mut PgConnection,
    events: &[NewEvent],
    out: &mut Ingested,
    company_of: &mut [Option<String>],
) -> Result<(), Error> {
    let tracks = tracks_naming(events, &out.duplicate, |t| &t.company);
    let missing = resolve_known(conn, Entity::Company, &tracks, |t| &t.company, company_of).await?;
    for (i, e, t) in missing {
        let (id, created) = companies::upsert(
            conn,
            &e.environment_id,
            &UpsertCompany {
                keys: t.company.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|err| err.at(i))?;
        if created {
            out.touched
                .companies
                .push((e.environment_id.clone(), id.clone()));
        }
        company_of[i] = Some(id);
    }
    // Traits sent with track events update the company, merged per company.
    let mut traits: BTreeMap<(String, String), Map<String, Value>> = BTreeMap::new();
    for &(i, e, t) in &tracks {
        if let (Some(tr), Some(id)) = (&t.traits, &company_of[i]) {
            if !tr.is_empty() {
                traits
                    .entry((e.environment_id.clone(), id.clone()))
                    .or_default()
                    .extend(tr.clone());
            }
        }
    }
    for ((env, id), tr) in traits {
        sqlx::query(
            "UPDATE companies SET traits = jsonb_strip_nulls(traits || $2), updated_at = now() WHERE id = $1",
        )
        .bind(&id)
        .bind(sqlx::types::Json(&tr))
        .execute(&mut *conn)
        .await?;
        out.touched.companies.push((env.clone(), id.clone()));
    }
    Ok(())
}

/// Finds (or creates) the user of every track event that names one, and makes it a member
/// of the event's company.
async fn resolve_track_users(
    conn: &mut PgConnection,
    events: &[NewEvent],
    out: &mut Ingested,
    company_of: &[Option<String>],
    user_of: &mut [Option<String>],
) -> Result<(), Error> {
    let tracks = tracks_naming(events, &out.duplicate, |t| &t.user);
    if tracks.is_empty() {
        return Ok(());
    }
    let missing = resolve_known(conn, Entity::User, &tracks, |t| &t.user, user_of).await?;
    let mut memberships: BTreeMap<(String, String), String> = BTreeMap::new();
    for (i, e, t) in missing {
        let done = users::upsert(
            conn,
            &e.environment_id,
            &UpsertUser {
                keys: t.user.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|err| err.at(i))?;
        out.touched
            .users
            .push((e.environment_id.clone(), done.id.clone()));
        user_of[i] = Some(done.id);
    }
    for &(i, e, _) in &tracks {
        if let (Some(u), Some(c)) = (&user_of[i], &company_of[i]) {
            memberships.insert((c.clone(), u.clone()), e.environment_id.clone());
        }
    }
    if !memberships.is_empty() {
        let (pairs, envs): (Vec<(String, String)>, Vec<String>) = memberships.into_iter().unzip();
        let (companies, users): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
        sqlx::query(
            "INSERT INTO company_memberships (environment_id, company_id, user_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
             ON CONFLICT DO NOTHING",
        )
        .bind(&envs)
        .bind(&companies)
        .bind(&users)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A track event, by its index in the batch.
type TrackAt<'e> = (usize, &'e NewEvent, &'e Track);

/// The track events of the batch (duplicates left out) whose `keys_of` names an entity.
fn tracks_naming<'e>(
    events: &'e [NewEvent],
    duplicate: &[bool],
    keys_of: fn(&Track) -> &Keys,
) -> Vec<TrackAt<'e>> {
    events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.kind {
            Kind::Track(t) if !duplicate[i] && !keys_of(t).is_empty() => Some((i, e, t)),
            _ => None,
        })
        .collect()
}

/// Looks up the entity each track names by `keys_of` with one query: found ids go into
/// `ids_of`; the tracks naming none are answered, in a stable order for creating them (the
/// upsert locks keys, and re-checks under the lock). Keys naming two entities are a 409.
async fn resolve_known<'e>(
    conn: &mut PgConnection,
    entity: Entity,
    tracks: &[TrackAt<'e>],
    keys_of: fn(&Track) -> &Keys,
    ids_of: &mut [Option<String>],
) -> Result<Vec<TrackAt<'e>>, Error> {
    let wanted = tracks.iter().map(|&(_, e, t)| (e, keys_of(t)));
    let known = lookup_keys(conn, entity.table(), entity.column(), wanted).await?;
    let mut missing = Vec::new();
    for &(i, e, t) in tracks {
        match resolve(&known, e, keys_of(t)) {
            Resolved::One(id) => ids_of[i] = Some(id),
            Resolved::None => missing.push((i, e, t)),
            Resolved::Several(ids) => {
                let noun = entity.noun();
                return Err(Error::Conflict(format!(
                    "events[{i}].body.{noun}: keys identify more than one {noun} ({})",
                    ids.join(", ")
                )));
            }
        }
    }
    missing.sort_by(|a, b| {
        (&a.1.environment_id, keys_of(a.2)).cmp(&(&b.1.environment_id, keys_of(b.2)))
    });
    Ok(missing)
}

/// `(environment, key, value)` → entity id, for every key the events name.
async fn lookup_keys<'a>(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
    wanted: impl Iterator<Item = (&'a NewEvent, &'a Keys)>,
) -> Result<HashMap<(String, String, String), String>, sqlx::Error> {
    let mut envs = Vec::new();
    let mut names = Vec::new();
    let mut values = Vec::new();
    for (e, keys) in wanted {
        for (k, v) in keys {
            envs.push(e.environment_id.clone());
            names.push(k.clone());
            values.push(v.clone());
        }
    }
    if envs.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(&format!(
        "SELECT environment_id, key, value, {column} FROM {table}
         WHERE (environment_id, key, value) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))"
    ))
    .bind(&envs)
    .bind(&names)
    .bind(&values)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(e, k, v, id)| ((e, k, v), id))
        .collect())
}

enum Resolved {
    None,
    One(String),
    Several(Vec<String>),
}

fn resolve(
    known: &HashMap<(String, String, String), String>,
    e: &NewEvent,
    keys: &Keys,
) -> Resolved {
    let mut found: Vec<String> = keys
        .iter()
        .filter_map(|(k, v)| {
            known
                .get(&(e.environment_id.clone(), k.clone(), v.clone()))
                .cloned()
        })
        .collect();
    found.sort();
    found.dedup();
    match found.len() {
        0 => Resolved::None,
        1 => Resolved::One(found.remove(0)),
        _ => Resolved::Several(found),
    }
}

/// Event rows as columns, for one `INSERT … SELECT * FROM unnest(…)`.
#[derive(Default)]
struct EventColumns<'a> {
    id: Vec<&'a str>,
    env: Vec<&'a str>,
    kind: Vec<&'static str>,
    name: Vec<Option<&'a str>>,
    company: Vec<Option<&'a str>>,
    user: Vec<Option<&'a str>>,
    quantity: Vec<i64>,
    body: Vec<sqlx::types::Json<&'a Value>>,
    idempotency_key: Vec<Option<&'a str>>,
    sent_at: Vec<Option<DateTime<Utc>>>,
}

async fn insert_rows(
    conn: &mut PgConnection,
    events: &[NewEvent],
    out: &Ingested,
    company_of: &[Option<String>],
    user_of: &[Option<String>],
) -> Result<(), sqlx::Error> {
    let mut c = EventColumns::default();
    for (i, e) in events.iter().enumerate() {
        if out.duplicate[i] {
            continue;
        }
        let (kind, name, quantity) = match &e.kind {
            Kind::Track(t) => ("track", Some(t.event.as_str()), t.quantity),
            Kind::Identify(_) => ("identify", None, 0),
        };
        c.id.push(&out.ids[i]);
        c.env.push(&e.environment_id);
        c.kind.push(kind);
        c.name.push(name);
        c.company.push(company_of[i].as_deref());
        c.user.push(user_of[i].as_deref());
        c.quantity.push(quantity);
        c.body.push(sqlx::types::Json(&e.body));
        c.idempotency_key.push(e.idempotency_key.as_deref());
        c.sent_at.push(e.sent_at);
    }
    if c.id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO events (id, environment_id, event_type, event_name, company_id, user_id,
             quantity, body, idempotency_key, sent_at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
             $7::bigint[], $8::jsonb[], $9::text[], $10::timestamptz[])",
    )
    .bind(&c.id)
    .bind(&c.env)
    .bind(&c.kind)
    .bind(&c.name)
    .bind(&c.company)
    .bind(&c.user)
    .bind(&c.quantity)
    .bind(&c.body)
    .bind(&c.idempotency_key)
    .bind(&c.sent_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Burns credits for track events of features whose entitlement is a credit: quantity ×
/// rate, per event, from the company's grants (see `credits::burn`).
async fn burn_credits(
    conn: &mut PgConnection,
    events: &[NewEvent],
    out: &mut Ingested,
    company_of: &[Option<String>],
    credit_ctx: &CreditContext,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let tracks: Vec<(usize, &Track, &String)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match (&e.kind, &company_of[i]) {
            (Kind::Track(t), Some(c)) if !out.duplicate[i] && t.quantity > 0 => Some((i, t, c)),
            _ => None,
        })
        .collect();
    let mut pairs: Vec<(String, String)> = tracks
        .iter()
        .map(|(_, t, c)| ((*c).clone(), t.event.clone()))
        .collect();
    pairs.sort();
    pairs.dedup();
    let rules = credits::rules_for(conn, &pairs, &credit_ctx.fallback_plans, now).await?;
    if rules.is_empty() {
        return Ok(());
    }
    // (environment, company, credit) → burns in event order; BTreeMap: a stable lock order.
    let mut burns: BTreeMap<(String, String, String), Vec<credits::Burn>> = BTreeMap::new();
    for (i, t, company) in tracks {
        let Some(rs) = rules.get(&(company.clone(), t.event.clone())) else {
            continue;
        };
        for r in rs {
            burns
                .entry((
                    events[i].environment_id.clone(),
                    company.clone(),
                    r.credit_id.clone(),
                ))
                .or_default()
                .push(credits::Burn {
                    micros: credits::to_micros(t.quantity as f64 * r.rate),
                    feature_id: r.feature_id.clone(),
                    event_id: out.ids[i].clone(),
                });
        }
    }
    for ((env, company, credit), list) in burns {
        credits::burn(conn, &env, &company, &credit, &list, now).await?;
        out.touched.credits.push((env, company));
    }
    Ok(())
}

/// Adds every track event's quantity to its company's counters, one row per company and
/// event, and queues the new absolute values for the snapshots. Returns each counter's move
/// (value after, batch delta) and the billing-cycle anchors used, for metered billing.
async fn count_usage(
    conn: &mut PgConnection,
    events: &[NewEvent],
    out: &mut Ingested,
    company_of: &[Option<String>],
    now: DateTime<Utc>,
) -> Result<(CounterMoves, HashMap<String, DateTime<Utc>>), sqlx::Error> {
    // Per company and event (sorted: concurrent groups lock rows in the same order), the
    // environment and the quantity.
    let mut sums: BTreeMap<(&str, &str), (&str, i64)> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        if let (Kind::Track(t), Some(c)) = (&e.kind, &company_of[i]) {
            if !out.duplicate[i] {
                let sum = sums
                    .entry((c.as_str(), t.event.as_str()))
                    .or_insert((e.environment_id.as_str(), 0));
                sum.1 += t.quantity;
            }
        }
    }
    if sums.is_empty() {
        return Ok(Default::default());
    }
    let mut company_ids: Vec<&str> = sums.keys().map(|(c, _)| *c).collect();
    company_ids.dedup();
    // Billing-cycle windows start on the base subscription's period start.
    let anchors: HashMap<String, DateTime<Utc>> = sqlx::query_as::<_, (String, DateTime<Utc>)>(
        "SELECT company_id, period_start FROM company_plans
         WHERE company_id = ANY($1) AND is_base AND ended_at IS NULL AND period_start IS NOT NULL",
    )
    .bind(&company_ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();

    let deltas: Vec<usage::Delta<'_>> = sums
        .iter()
        .map(|(&(company_id, event), &(environment_id, quantity))| {
            let anchor = anchors.get(company_id).copied();
            let starts = usage::WINDOWS.map(|(p, r)| {
                // No subscription: the billing cycle is the calendar month's counter.
                (crate::engine::counter_reset(p, r, anchor) == r)
                    .then(|| period::window(p, r, anchor, now).start)
            });
            usage::Delta {
                company_id,
                event,
                environment_id,
                quantity,
                starts,
            }
        })
        .collect();
    let rows = usage::add(conn, &deltas).await?;

    let mut moves = CounterMoves::with_capacity(rows.len() * 5);
    let mut by_company: BTreeMap<String, (String, Vec<UsageCounter>)> = BTreeMap::new();
    for (company, event, totals) in rows {
        let Ok(i) = deltas
            .binary_search_by(|d| (d.company_id, d.event).cmp(&(company.as_str(), event.as_str())))
        else {
            continue;
        };
        let delta = &deltas[i];
        let all_time = (MetricPeriod::AllTime, MonthReset::FirstOfMonth);
        let key = |(p, r): (MetricPeriod, MonthReset)| {
            (company.clone(), event.clone(), p.as_str(), r.as_str())
        };
        moves.insert(key(all_time), (totals.all_time, delta.quantity));
        for ((window, (start, count)), ours) in usage::WINDOWS
            .into_iter()
            .zip(totals.windows)
            .zip(delta.starts)
        {
            // Only windows this write counted in (not one a later write had moved past).
            if ours.is_some() && start == ours {
                moves.insert(key(window), (count, delta.quantity));
            }
        }
        let event: Arc<str> = Arc::from(event);
        by_company
            .entry(company)
            .or_insert_with(|| (delta.environment_id.to_string(), Vec::new()))
            .1
            .extend(totals.counters(&event, now));
    }
    for (company, (env, counters)) in by_company {
        out.touched.usage.push((env, company, counters));
    }
    Ok((moves, anchors))
}

/// A stored event, with the features whose `event_subtype` is its name.
#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    pub id: String,
    pub event_type: String,
    pub event_name: Option<String>,
    pub environment_id: String,
    pub company_id: Option<String>,
    pub user_id: Option<String>,
    pub quantity: i64,
    pub body: sqlx::types::Json<Value>,
    pub idempotency_key: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    /// Ordered by feature key.
    pub feature_ids: Vec<String>,
}

const EVENT_SELECT: &str =
    "SELECT e.id, e.event_type, e.event_name, e.environment_id, e.company_id,
        e.user_id, e.quantity, e.body, e.idempotency_key, e.sent_at, e.status, e.created_at,
        e.created_at AS processed_at,
        COALESCE((SELECT array_agg(f.id ORDER BY f.key) FROM features f
                  WHERE f.event_subtype = e.event_name), '{}') AS feature_ids
     FROM events e";

/// Which events of an environment to list. `None` and empty lists do not filter.
#[derive(Debug, Default)]
pub struct EventFilter {
    pub company_id: Option<String>,
    pub user_id: Option<String>,
    /// The event name of track events.
    pub event_subtype: Option<String>,
    pub idempotency_key: Option<String>,
    /// `track` and/or `identify`.
    pub event_types: Vec<String>,
}

/// The environment's events `filter` selects, newest first.
pub async fn list(
    conn: &mut PgConnection,
    env_id: &str,
    filter: &EventFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{EVENT_SELECT}
         WHERE e.environment_id = $1
           AND ($2::text IS NULL OR e.company_id = $2)
           AND ($3::text IS NULL OR e.user_id = $3)
           AND ($4::text IS NULL OR e.event_name = $4)
           AND ($5::text IS NULL OR e.idempotency_key = $5)
           AND (cardinality($6::text[]) = 0 OR e.event_type = ANY($6))
         ORDER BY e.created_at DESC, e.id DESC LIMIT $7 OFFSET $8"
    ))
    .bind(env_id)
    .bind(&filter.company_id)
    .bind(&filter.user_id)
    .bind(&filter.event_subtype)
    .bind(&filter.idempotency_key)
    .bind(&filter.event_types)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// The environment's event `id`.
pub async fn get(
    conn: &mut PgConnection,
    env_id: &str,
    id: &str,
) -> Result<Option<EventRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{EVENT_SELECT} WHERE e.environment_id = $1 AND e.id = $2"
    ))
    .bind(env_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}
