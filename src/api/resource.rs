//! What the REST resources share, so that each handler keeps only what is its own (parsing,
//! validation, the store call, its log line):
//! - [`Resource`]: how one object's view is read, what "not found" names, which lifecycle
//!   messages its writes send and which `entitled_writes_total` label they count under;
//! - [`one`], [`show`] and [`lookup`]: reading one view;
//! - [`Edit`]: the shape of every write. Begin, the view before (when a message wants it),
//!   the handler's store calls on `edit.tx`, the view after, the lifecycle message, commit
//!   with the snapshot changes (notify, commit, refresh: `changes`), count.

use std::future::Future;
use std::marker::PhantomData;

use axum::response::Response;
use serde::Serialize;
use serde_json::Value;

use super::auth::Auth;
use super::emit::{self, Kinds};
use super::envelope;
use super::extract::Query;
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::store::keys::{self, Entity};
use crate::store::{self, Conn};

/// One kind of object of the REST API.
pub trait Resource {
    /// What a "not found" error names: `flag`.
    const NOUN: &'static str;
    /// The `resource` label its writes count under in `entitled_writes_total`: `flags`.
    const METRIC: &'static str;
    /// Its lifecycle messages (`<object>.created` …); `None`: its writes send none.
    const KINDS: Option<&'static Kinds>;
    /// The view the API answers with, and messages carry.
    type View: Serialize + Send;

    /// The view of `id` as `conn` sees it (inside a write's transaction too); `None` if absent.
    /// `state`: for views that include what the snapshot answers (a company's entitlements).
    fn find_in(
        conn: &mut Conn,
        state: &AppState,
        auth: &Auth,
        id: &str,
    ) -> impl Future<Output = AppResult<Option<Self::View>>> + Send;
}

/// Declares a resource: `resource::resource!(Flags: FlagView, "flag", "flags", Some(&emit::FLAG),
/// |conn, state, auth, id| <the view of id, as an `AppResult<Option<FlagView>>`>)`. The
/// closure-like tail is the body of [`Resource::find_in`], which may `.await`.
macro_rules! resource {
    ($ty:ident: $view:ty, $noun:literal, $metric:literal, $kinds:expr,
     |$conn:ident, $state:tt, $auth:tt, $id:ident| $body:expr) => {
        #[doc = concat!("The `", $noun, "` resource.")]
        pub struct $ty;

        impl $crate::api::resource::Resource for $ty {
            const NOUN: &'static str = $noun;
            const METRIC: &'static str = $metric;
            const KINDS: Option<&'static $crate::api::emit::Kinds> = $kinds;
            type View = $view;

            async fn find_in(
                $conn: &mut $crate::store::Conn,
                $state: &$crate::api::AppState,
                $auth: &$crate::api::auth::Auth,
                $id: &str,
            ) -> $crate::api::error::AppResult<Option<$view>> {
                $body
            }
        }
    };
}
pub(crate) use resource;

/// The view of `id`, or a 404 naming it.
pub async fn one<R: Resource>(state: &AppState, auth: &Auth, id: &str) -> AppResult<R::View> {
    let mut conn = state.pool.acquire().await?;
    R::find_in(&mut conn, state, auth, id)
        .await?
        .ok_or_else(|| AppError::not_found(R::NOUN, id))
}

/// The answer of a `GET /<resource>/{id}` and of a write: the view of `id`, enveloped.
pub async fn show<R: Resource>(state: &AppState, auth: &Auth, id: &str) -> AppResult<Response> {
    Ok(envelope::ok_empty(one::<R>(state, auth, id).await?))
}

/// The answer of a `GET /<resource>/lookup?keys[…]=…`: the view of the `entity` those keys
/// identify in the caller's environment.
pub async fn lookup<R: Resource>(
    state: &AppState,
    auth: &Auth,
    query: &Query,
    entity: Entity,
) -> AppResult<Response> {
    let keys = query.key_map("keys")?;
    keys::validate("keys", &keys)?;
    let mut conn = state.pool.acquire().await?;
    let id = keys::find(&mut conn, entity, auth.env_id(), &keys)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no {} has these keys", R::NOUN)))?;
    let view = R::find_in(&mut conn, state, auth, &id)
        .await?
        .ok_or_else(|| AppError::not_found(R::NOUN, &id))?;
    Ok(envelope::ok(view, query.params(None)))
}

/// One write of a resource, from its transaction's start to its commit.
pub struct Edit<'a, R: Resource> {
    state: &'a AppState,
    auth: &'a Auth,
    /// The write's transaction: the handler's store calls run on it.
    pub tx: store::Tx,
    /// Whether an endpoint of the environment wants a message of this resource, so the write
    /// builds views (a function that builds its own takes this).
    pub watch: bool,
    before: Option<Value>,
    resource: PhantomData<R>,
}

impl<'a, R: Resource> Edit<'a, R> {
    /// A write that creates: nothing stood before it.
    pub async fn begin(state: &'a AppState, auth: &'a Auth) -> AppResult<Self> {
        let watch = R::KINDS.is_some_and(|kinds| emit::wanted(state, auth, kinds));
        Ok(Edit {
            state,
            auth,
            tx: state.begin().await?,
            watch,
            before: None,
            resource: PhantomData,
        })
    }

    /// A write of `id`: its view before is read first, when a message wants it.
    pub async fn of(state: &'a AppState, auth: &'a Auth, id: &str) -> AppResult<Self> {
        let mut edit = Self::begin(state, auth).await?;
        edit.before = emit::view(edit.watch, R::find_in(&mut edit.tx, state, auth, id)).await?;
        Ok(edit)
    }

    /// Reads the view of `id` before the write, for a write that learns which object it
    /// changes only after it began (an upsert by keys).
    pub async fn read_before(&mut self, id: &str) -> AppResult<()> {
        self.before = emit::view(
            self.watch,
            R::find_in(&mut self.tx, self.state, self.auth, id),
        )
        .await?;
        Ok(())
    }

    /// Ends the write: the view of `id` after it (`None`: the write deleted the object) and
    /// the lifecycle message go into the transaction, which commits with `changes`.
    pub async fn commit(mut self, id: Option<&str>, changes: Vec<Change>) -> AppResult<()> {
        let after = match id {
            Some(id) => {
                emit::view(
                    self.watch,
                    R::find_in(&mut self.tx, self.state, self.auth, id),
                )
                .await?
            }
            None => None,
        };
        let before = self.before.take();
        self.end(before, after, changes).await
    }

    /// Ends a write that a function shared with the console did, which built its own views.
    pub async fn finish(self, written: emit::Written) -> AppResult<()> {
        self.end(written.before, written.after, written.changes)
            .await
    }

    async fn end(
        self,
        before: Option<Value>,
        after: Option<Value>,
        changes: Vec<Change>,
    ) -> AppResult<()> {
        match R::KINDS {
            Some(kinds) => {
                emit::commit(
                    self.state,
                    self.auth,
                    self.tx,
                    kinds,
                    (before, after),
                    changes,
                )
                .await?
            }
            None => self.state.commit(self.tx, &changes).await?,
        }
        crate::metrics::WRITES.inc(R::METRIC);
        Ok(())
    }
}
