//! skyfri-gateway: the HTTP front door. OpenFaaS-compatible admin API under `/system`
//! (basic auth or scoped API tokens, audited), the invoke proxy under `/function`, async calls under `/async-function`
//! (run by the dispatchers of [`async_calls`]), the AWS Lambda Invoke API ([`lambda`]), topic
//! and cron [`triggers`], health and Prometheus metrics, usage metering ([`usage`]), and the
//! dashboard at `/ui` ([`ui`], on a listener of its own) with its per-minute [`stats`].

pub mod access_log;
pub mod api;
pub mod async_calls;
pub mod audit;
pub mod auth;
pub mod autoscale;
pub mod backup;
pub mod error;
pub mod extract;
pub mod invoke;
pub mod lambda;
pub mod limits;
pub mod metrics;
pub mod router;
pub mod secrets;
pub mod server;
pub mod state;
pub mod stats;
pub mod tokens;
pub mod triggers;
pub mod ui;
pub mod upstream;
pub mod usage;

#[cfg(test)]
mod testing;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tower::ServiceExt;

pub use error::GatewayError;
pub use state::{AppState, GatewayConfig, Locations};

/// Upload limit for artefact archives.
const MAX_ARTEFACT_BYTES: usize = 256 << 20;

/// The gateway's routes: the admin API, calls of functions, health and metrics. The dashboard
/// is not among them: it has its own listener ([`dashboard_router`], [`serve_dashboard`]), so
/// that a function's page, served from this origin, cannot reach it as same-origin.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(system_routes(&state))
        .merge(call_routes(&state))
        .route("/healthz", get(api::system::healthz))
        .route("/metrics", get(api::system::metrics))
        .with_state(state)
}

/// `/system/*`, behind basic or bearer auth (or a dashboard session, see `ui::api`).
fn system_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/system/functions",
            get(api::functions::list)
                .post(api::functions::create)
                .put(api::functions::update)
                .delete(api::functions::delete),
        )
        .route("/system/function/{name}", get(api::functions::get))
        .route("/system/scale-function/{name}", post(api::functions::scale))
        .route(
            "/system/secrets",
            get(api::secrets::list)
                .post(api::secrets::create)
                .put(api::secrets::update)
                .delete(api::secrets::delete),
        )
        .route("/system/async/calls", get(api::async_calls::list))
        .route(
            "/system/async/calls/{id}",
            get(api::async_calls::get).delete(api::async_calls::cancel),
        )
        .route(
            "/system/async/calls/{id}/redrive",
            post(api::async_calls::redrive),
        )
        .route("/system/backup", get(api::backup::backup))
        .route(
            "/system/tokens",
            get(api::tokens::list).post(api::tokens::create),
        )
        .route("/system/tokens/{name}", delete(api::tokens::revoke))
        .route("/system/audit", get(api::audit::list))
        .route("/system/info", get(api::system::info))
        .route("/system/info/residency", get(api::residency::residency))
        .route("/system/usage", get(api::usage::usage))
        .route("/system/cost", get(api::cost::cost))
        .route("/system/stats", get(api::stats::stats))
        .route("/system/namespaces", get(api::system::namespaces))
        .route("/system/logs", get(api::logs::logs))
        .route(
            "/system/artefacts",
            post(api::artefacts::build).layer(DefaultBodyLimit::max(MAX_ARTEFACT_BYTES)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
}

/// Calls of functions, sync and async: each gets an access log line.
fn call_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/function/{name}", any(invoke::invoke))
        .route("/function/{name}/", any(invoke::invoke))
        .route("/function/{name}/{*rest}", any(invoke::invoke))
        .route("/async-function/{name}", any(async_calls::accept::accept))
        .route("/async-function/{name}/", any(async_calls::accept::accept))
        .route(
            "/async-function/{name}/{*rest}",
            any(async_calls::accept::accept),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(lambda::invoke::invoke),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access_log::record,
        ))
}

/// The dashboard's routes, for its own listener (`tls`: whether that listener is HTTPS,
/// which makes the session cookie `Secure`). Its API runs its requests through the
/// gateway's own `/system` and `/function` routes and middleware; requests that change
/// anything must come from the dashboard's own origin ([`ui::session::same_origin`]).
pub fn dashboard_router(state: AppState, tls: bool) -> Router {
    let system_api = ui::api::SystemApi(system_routes(&state).with_state(state.clone()));
    let calls_api = ui::api::CallsApi(call_routes(&state).with_state(state.clone()));
    Router::new()
        .route("/ui", get(ui::assets::index))
        .route("/ui/", get(ui::assets::index))
        .route("/ui/assets/{file}", get(ui::assets::file))
        .route("/ui/login", post(ui::session::login))
        .route("/ui/logout", post(ui::session::logout))
        .route("/ui/session", get(ui::session::current))
        .route(
            "/ui/api/system/{*rest}",
            get(ui::api::system)
                .post(ui::api::system)
                .delete(ui::api::system)
                .layer(Extension(system_api)),
        )
        .route(
            "/ui/api/invoke/{name}",
            post(ui::api::invoke).layer(Extension(calls_api)),
        )
        .route_layer(axum::middleware::from_fn(ui::session::same_origin))
        .layer(Extension(ui::session::Listener { tls }))
        .with_state(state)
}

/// Brings back every stored function (after a restart). Failures are logged per function
/// and do not stop the others.
pub async fn restore(state: &AppState) -> Result<usize, GatewayError> {
    state.tokens.reload(&state.store)?;
    let stored = state.store.list_functions()?;
    let mut started = 0;
    for f in stored {
        let name = f.deployment.spec.name.clone();
        // Stored under other gateway limits: it runs, within these ones.
        if let Err(e) = limits::check_deploy(state, &f.deployment.spec) {
            tracing::warn!(function = %name, "{e}; its calls are held to the gateway's limits");
        }
        state.set_live(f.deployment.clone());
        match state.provider.deploy(&f.deployment).await {
            Ok(()) => started += 1,
            Err(e) => tracing::error!(function = %name, error = %e, "could not restore function"),
        }
    }
    Ok(started)
}

/// Serves the gateway on a bound listener until `shutdown` completes (see `server`).
/// `dashboard`: where the dashboard's own listener is, if it runs, which the gateway's
/// answer to `/ui` names.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    limits: server::ServerLimits,
    tls: Option<std::sync::Arc<server::Tls>>,
    dashboard: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Gateway::new(state, dashboard.map(|addr| (addr, tls.is_some())));
    server::serve(listener, app, limits, tls, server::workers(), shutdown).await
}

/// Serves the dashboard on its own bound listener until `shutdown` completes: the same
/// bounds and certificate as the gateway's, on the caller's runtime (its traffic is a
/// person's, not the calls').
pub async fn serve_dashboard(
    listener: TcpListener,
    state: AppState,
    limits: server::ServerLimits,
    tls: Option<std::sync::Arc<server::Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = dashboard_router(state, tls.is_some()).fallback(|| async {
        GatewayError::not_found(
            "the dashboard's listener serves the dashboard only (/ui); /system, /function and the rest are on the gateway's port",
        )
    });
    server::serve(listener, app, limits, tls, 0, shutdown).await
}

/// What the server runs per request: calls of functions (`/function/NAME[/...]`) go straight
/// to the invoke handler, with their access log line, as the router's `/function` routes
/// would send them; `/ui` is answered 404, naming the dashboard's own listener; everything
/// else goes through [`router`]. The invoke path is the hot one, and the router's matching
/// and layers cost it more than the rest of its own work (see bench/README.md).
#[derive(Clone)]
pub struct Gateway {
    state: AppState,
    router: Router,
    /// The dashboard's listener and whether it is HTTPS; `None` when it is off.
    dashboard: Option<(SocketAddr, bool)>,
}

impl Gateway {
    fn new(state: AppState, dashboard: Option<(SocketAddr, bool)>) -> Gateway {
        Gateway {
            router: router(state.clone()),
            dashboard,
            state,
        }
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl tower::Service<hyper::Request<Body>> for Gateway {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<Body>) -> Answer {
        let path = req.uri().path();
        if invoke::is_call(path) {
            let state = self.state.clone();
            Box::pin(async move {
                let call = |req| invoke::invoke(State(state.clone()), req);
                Ok(access_log::around(&state, req, call).await)
            })
        } else if ui::is_dashboard(path) {
            let answer = ui::elsewhere(self.dashboard, &req).into_response();
            Box::pin(std::future::ready(Ok(answer)))
        } else {
            Box::pin(self.router.clone().oneshot(req))
        }
    }
}
