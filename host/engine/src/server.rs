//! The process's one HTTP server: the routes plugins contribute, `/health/live`,
//! `/health/ready` and `/metrics`, behind tracing and request metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use salesflow_plugin_api::axum::extract::{MatchedPath, Request, State};
use salesflow_plugin_api::axum::http::{StatusCode, header};
use salesflow_plugin_api::axum::middleware::{self, Next};
use salesflow_plugin_api::axum::response::{IntoResponse, Response};
use salesflow_plugin_api::axum::routing::get;
use salesflow_plugin_api::axum::{Json, Router};
use salesflow_plugin_api::{Healthcheck, Route};
use tower::ServiceExt as _;

use serde_json::json;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone)]
struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<RouteLabels, Gauge>,
}

/// 250 µs .. ~9 s.
fn latency_buckets() -> Histogram {
    crate::metrics::quarter_steps(0.000_25, 48)
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
            in_flight: Family::default(),
        };
        registry.register(
            "salesflow_http_requests",
            "HTTP requests by route, method and status",
            m.requests.clone(),
        );
        registry.register(
            "salesflow_http_request_seconds",
            "HTTP request latency by route",
            m.latency.clone(),
        );
        registry.register(
            "salesflow_http_in_flight_requests",
            "HTTP requests being handled",
            m.in_flight.clone(),
        );
        m
    }
}

/// A request's method as a label: the standard ones by name, anything else `other`, so
/// that clients cannot add series by inventing methods.
fn method_label(method: &salesflow_plugin_api::axum::http::Method) -> &'static str {
    use salesflow_plugin_api::axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    // The route template the request matched (a bounded set), or `other`.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let route = RouteLabels { route };
    let gauge = metrics.in_flight.get_or_create(&route).clone();
    gauge.inc();
    let started = Instant::now();
    let response = next.run(request).await;
    gauge.dec();
    metrics
        .latency
        .get_or_create(&route)
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Readiness as last checked: every check runs for real in the background (see
/// [`monitor_health`]); `/health/ready` answers from this, so a burst of probes costs the
/// dependencies nothing.
#[derive(Clone, Default)]
pub struct HealthState {
    inner: Arc<Mutex<Option<CheckResults>>>,
}

/// Each check's name and outcome.
type CheckResults = Vec<(String, Result<(), String>)>;

impl HealthState {
    fn set(&self, results: CheckResults) {
        *self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(results);
    }

    fn get(&self) -> Option<CheckResults> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

async fn live() -> Response {
    Json(json!({ "status": "live" })).into_response()
}

/// Runs every check at once, each bounded by a timeout.
async fn run_checks(checks: &[Healthcheck]) -> CheckResults {
    let runs = checks.iter().map(|check| {
        let f = Arc::clone(&check.check);
        async move {
            let result = tokio::time::timeout(Duration::from_secs(4), f())
                .await
                .unwrap_or_else(|_| Err("no answer within 4 s".into()));
            (check.name.clone(), result.map_err(|e| shorten(&e)))
        }
    });
    futures::future::join_all(runs).await
}

/// A check's error as shown: its first line, at most 200 characters (the full text is
/// logged, not served).
fn shorten(error: &str) -> String {
    let line = error.lines().next().unwrap_or_default();
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_owned(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    check: String,
}

/// Runs the readiness checks at once and then every `every`, keeping the results for
/// `/health/ready` and exporting them as `salesflow_dependency_up{check}` and
/// `salesflow_ready`, for alerting.
pub fn monitor_health(
    checks: HealthChecks,
    registry: &mut Registry,
    every: Duration,
    stop: salesflow_plugin_api::CancellationToken,
) -> HealthState {
    let up = Family::<CheckLabels, Gauge>::default();
    let ready = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    registry.register(
        "salesflow_dependency_up",
        "Whether a source's or sink's dependency passed its last check (1) or not (0)",
        up.clone(),
    );
    registry.register(
        "salesflow_ready",
        "Whether every dependency check passed (1) or not (0)",
        ready.clone(),
    );
    let state = HealthState::default();
    let shared = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let results = run_checks(&checks.get()).await;
            // Checks of pipelines stopped by a reload are not shown any more.
            up.clear();
            let mut all = true;
            for (name, result) in &results {
                all &= result.is_ok();
                if let Err(e) = result {
                    tracing::debug!(check = %name, error = %e, "readiness check failed");
                }
                up.get_or_create(&CheckLabels {
                    check: name.clone(),
                })
                .set(i64::from(result.is_ok()));
            }
            ready.set(i64::from(all));
            shared.set(results);
        }
    });
    state
}

async fn ready(State(health): State<HealthState>) -> Response {
    let Some(results) = health.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting", "checks": [] })),
        )
            .into_response();
    };
    let ok = results.iter().all(|(_, r)| r.is_ok());
    let checks: Vec<_> = results
        .into_iter()
        .map(|(name, result)| match result {
            Ok(()) => json!({ "name": name, "status": "up" }),
            Err(e) => json!({ "name": name, "status": "down", "error": e }),
        })
        .collect();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "status": if ok { "ready" } else { "not ready" }, "checks": checks })),
    )
        .into_response()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// The process's own series, refreshed at every scrape.
struct ProcessMetrics {
    uptime: Gauge<f64, std::sync::atomic::AtomicU64>,
    resident: Gauge,
    started: Instant,
}

impl ProcessMetrics {
    fn register(registry: &mut Registry) -> Self {
        let info = Family::<BuildLabels, Gauge>::default();
        info.get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .set(1);
        registry.register(
            "salesflow_build_info",
            "The salesflow build (always 1)",
            info,
        );
        // Sized once, before anything runs: read here, it never changes.
        let workers = Gauge::<i64>::default();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            workers.set(i64::try_from(handle.metrics().num_workers()).unwrap_or(i64::MAX));
        }
        registry.register(
            "salesflow_runtime_worker_threads",
            "Worker threads of the process's async runtime ([runtime] worker_threads, else TOKIO_WORKER_THREADS, else one per core)",
            workers,
        );
        let m = Self {
            uptime: Gauge::default(),
            resident: Gauge::default(),
            started: Instant::now(),
        };
        registry.register(
            "salesflow_uptime_seconds",
            "Seconds since the process started",
            m.uptime.clone(),
        );
        registry.register(
            "salesflow_process_resident_memory_bytes",
            "Resident memory of the process",
            m.resident.clone(),
        );
        m
    }

    fn refresh(&self) {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let kib = procfs::process::Process::myself()
            .and_then(|me| me.status())
            .ok()
            .and_then(|status| status.vmrss);
        if let Some(kib) = kib {
            self.resident
                .set(i64::try_from(kib.saturating_mul(1024)).unwrap_or(i64::MAX));
        }
    }
}

#[derive(Clone)]
struct MetricsState {
    registry: Arc<Mutex<Registry>>,
    pipelines: PipelineRegistries,
    process: Arc<ProcessMetrics>,
}

async fn metrics(State(state): State<MetricsState>) -> Response {
    state.process.refresh();
    let registry = state.registry;
    let encoded = {
        let registry = registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pipelines = state
            .pipelines
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let all: Vec<&Registry> = std::iter::once(&*registry)
            .chain(pipelines.values())
            .collect();
        crate::metrics::exposition_of(&all)
    };
    match encoded {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The paths the host serves itself; no plugin may take them.
pub const HOST_PATHS: &[&str] = &[
    "/health/live",
    "/health/ready",
    "/metrics",
    "/openapi.json",
    crate::tap::PATH,
];

/// The routes of the running pipelines, replaced as pipelines start and stop. A request
/// no host path matches goes to them; while a reload restarts pipelines, a path nobody
/// serves is answered 503 with `Retry-After` (it may be a restarting pipeline's).
#[derive(Clone)]
pub struct PipelineRoutes {
    current: Arc<RwLock<Router>>,
    restarting: Arc<AtomicBool>,
    metrics: HttpMetrics,
}

impl PipelineRoutes {
    /// Serves these routes from now on. Their paths are distinct (checked at start).
    pub fn set(&self, routes: Vec<Route>) {
        let mut app = Router::new();
        for route in routes {
            app = app.merge(route.router);
        }
        let app = app.layer(middleware::from_fn_with_state(self.metrics.clone(), track));
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = app;
    }

    /// Whether pipelines are being restarted (their paths answer 503 meanwhile).
    pub fn set_restarting(&self, restarting: bool) {
        self.restarting.store(restarting, Ordering::Relaxed);
    }

    async fn dispatch(self, request: Request) -> Response {
        let router = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let response = match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if response.status() == StatusCode::NOT_FOUND && self.restarting.load(Ordering::Relaxed) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                Json(json!({ "error": "the pipeline serving this path is restarting for a new configuration; retry" })),
            )
                .into_response();
        }
        response
    }
}

/// The running pipelines' readiness checks, replaced as pipelines start and stop.
#[derive(Clone, Default)]
pub struct HealthChecks {
    inner: Arc<Mutex<Vec<Healthcheck>>>,
}

impl HealthChecks {
    pub fn set(&self, checks: Vec<Healthcheck>) {
        *self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = checks;
    }

    fn get(&self) -> Vec<Healthcheck> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Each running pipeline's metrics registry: a restarted pipeline registers its
/// components' metrics afresh in a new one.
#[derive(Clone, Default)]
pub struct PipelineRegistries {
    inner: Arc<Mutex<BTreeMap<String, Registry>>>,
}

impl PipelineRegistries {
    pub fn insert(&self, pipeline: &str, registry: Registry) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(pipeline.to_owned(), registry);
    }

    pub fn remove(&self, pipeline: &str) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(pipeline);
    }
}

/// What the running pipelines contribute to the server.
#[derive(Clone)]
pub struct Shared {
    pub routes: PipelineRoutes,
    pub health: HealthChecks,
    pub registries: PipelineRegistries,
    pub taps: crate::tap::TapTable,
}

impl Shared {
    /// Nothing yet; the request metrics are registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        Self {
            routes: PipelineRoutes {
                current: Arc::new(RwLock::new(Router::new())),
                restarting: Arc::new(AtomicBool::new(false)),
                metrics: HttpMetrics::register(registry),
            },
            health: HealthChecks::default(),
            registries: PipelineRegistries::default(),
            taps: crate::tap::TapTable::default(),
        }
    }
}

/// The server's router: the host's own paths (and `extra`, such as the tap), then the
/// running pipelines' routes.
pub fn router(
    shared: &Shared,
    extra: Vec<Route>,
    health: HealthState,
    registry: Arc<Mutex<Registry>>,
    openapi: Option<String>,
) -> Router {
    let process = {
        let mut r = registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::new(ProcessMetrics::register(&mut r))
    };
    let mut app = Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready).with_state(health))
        .route(
            "/metrics",
            get(metrics).with_state(MetricsState {
                registry,
                pipelines: shared.registries.clone(),
                process,
            }),
        );
    if let Some(document) = openapi {
        app = app.route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], document) }),
        );
    }
    for route in extra {
        app = app.merge(route.router);
    }
    let routes = shared.routes.clone();
    app.route_layer(middleware::from_fn_with_state(
        shared.routes.metrics.clone(),
        track,
    ))
    .fallback(move |request: Request| routes.clone().dispatch(request))
    .layer(TraceLayer::new_for_http().on_failure(log_failure))
}

/// A 503 is load shed on purpose (counted in `salesflow_http_requests_total` and the
/// sources' shed counters): one error line per shed request would flood the log exactly
/// when the process is busiest. Other server errors are logged as errors.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _span: &tracing::Span) {
    match class {
        ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::debug!(?latency, "request shed (503)");
        }
        class => tracing::error!(%class, ?latency, "response failed"),
    }
}
