//! The service `entitled serve` runs: flag checks, the requests applications send on every
//! page view, go straight to their handlers; every other request goes through the router.
//!
//! The router answers checks too (the same handlers, reached by `POST /flags/{key}/check`
//! and `POST /flags/check` in [`super::routes`]), so tests that drive the router alone, the
//! OpenAPI document and a key that needs percent-decoding all take that road. What this
//! front skips for the common case is the router's per-request machinery: the path lookup,
//! the matched-path and connection-info extensions, the boxed route and middleware
//! services and their clones of the state. Both roads record the same span, latency series
//! and status count ([`super::Observed`]), and share the handlers' code.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use axum::Router;
use tokio::net::TcpListener;
use tower::Service;

use super::{checks, AppState, Observed};

/// What both the router and the front need, behind one reference count.
struct Inner {
    router: Router,
    state: AppState,
    /// The latency series of `POST /flags/{key}/check` and `POST /flags/check`.
    one: Observed,
    all: Observed,
}

/// Makes one [`Front`] per connection, remembering the client's address for the routes
/// that read `ConnectInfo` (the console's sign-in rate limit).
#[derive(Clone)]
pub struct MakeFront(Arc<Inner>);

impl MakeFront {
    /// `router` must be [`super::router`]'s (merged with others as needed) over `state`.
    pub fn new(router: Router, state: AppState) -> MakeFront {
        MakeFront(Arc::new(Inner {
            router,
            state,
            one: Observed::route(&Method::POST, checks::ONE_PATH),
            all: Observed::route(&Method::POST, checks::ALL_PATH),
        }))
    }
}

impl<'a> Service<IncomingStream<'a, TcpListener>> for MakeFront {
    type Response = Front;
    type Error = Infallible;
    type Future = Ready<Result<Front, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'a, TcpListener>) -> Self::Future {
        ready(Ok(Front {
            inner: self.0.clone(),
            addr: *stream.remote_addr(),
        }))
    }
}

/// One connection's service.
#[derive(Clone)]
pub struct Front {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

/// Which check a request is, if it is one the front answers.
enum Check {
    /// `POST /flags/{key}/check`, with where the key is in the path.
    One(Range<usize>),
    /// `POST /flags/check`.
    All,
}

impl Check {
    fn of(req: &Request) -> Option<Check> {
        const PREFIX: &str = "/flags/";
        const SUFFIX: &str = "/check";
        if req.method() != Method::POST {
            return None;
        }
        let path = req.uri().path();
        if path == checks::ALL_PATH {
            return Some(Check::All);
        }
        // A key with a '%' needs decoding, and one with a '/' is no route: the router's.
        let key = path.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        (!key.is_empty() && !key.contains(['/', '%']))
            .then(|| Check::One(PREFIX.len()..path.len() - SUFFIX.len()))
    }
}

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match Check::of(&req) {
            Some(check) => {
                let inner = self.inner.clone();
                Box::pin(async move { Ok(answer(&inner, check, req).await) })
            }
            None => {
                req.extensions_mut().insert(ConnectInfo(self.addr));
                let mut router = self.inner.router.clone();
                Box::pin(async move { router.call(req).await })
            }
        }
    }
}

/// A check, observed as the router observes its routes.
async fn answer(inner: &Inner, check: Check, req: Request) -> Response {
    let (observed, route) = match check {
        Check::One(_) => (&inner.one, checks::ONE_PATH),
        Check::All => (&inner.all, checks::ALL_PATH),
    };
    let state = &inner.state;
    observed
        .observe("POST", route, async {
            let (parts, body) = req.into_parts();
            let result = match check {
                Check::One(key) => {
                    let key = &parts.uri.path()[key];
                    checks::one(state, &parts.headers, key, body).await
                }
                Check::All => checks::all(state, &parts.headers, body).await,
            };
            result.unwrap_or_else(IntoResponse::into_response)
        })
        .await
}
