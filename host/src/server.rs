//! The process's one HTTP server: the routes plugins contribute, `/health/live`,
//! `/health/ready` and `/metrics`, behind tracing and request metrics.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use salesflow_plugin_api::axum::extract::{MatchedPath, Request, State};
use salesflow_plugin_api::axum::http::{StatusCode, header};
use salesflow_plugin_api::axum::middleware::{self, Next};
use salesflow_plugin_api::axum::response::{IntoResponse, Response};
use salesflow_plugin_api::axum::routing::get;
use salesflow_plugin_api::axum::{Json, Router};
use salesflow_plugin_api::{Healthcheck, Route};
use serde_json::json;
use tower_http::trace::TraceLayer;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
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

fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
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

async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let route_labels = RouteLabels {
        route: route.clone(),
    };
    let gauge = metrics.in_flight.get_or_create(&route_labels).clone();
    gauge.inc();
    let started = Instant::now();
    let response = next.run(request).await;
    gauge.dec();
    metrics
        .latency
        .get_or_create(&route_labels)
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

/// Health checks: each runs for real, with a timeout; readiness is 503 when any fails.
#[derive(Clone)]
struct Health {
    checks: Arc<Vec<Healthcheck>>,
}

async fn live() -> Response {
    Json(json!({ "status": "live" })).into_response()
}

async fn ready(State(health): State<Health>) -> Response {
    let runs = health.checks.iter().map(|check| {
        let f = Arc::clone(&check.check);
        async move {
            let result = tokio::time::timeout(Duration::from_secs(4), f())
                .await
                .unwrap_or_else(|_| Err("no answer within 4 s".into()));
            (check.name.clone(), result)
        }
    });
    let results = futures::future::join_all(runs).await;
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

async fn metrics(State(registry): State<Arc<Mutex<Registry>>>) -> Response {
    let mut body = String::new();
    let encoded = {
        let registry = registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        prometheus_client::encoding::text::encode(&mut body, &registry)
    };
    match encoded {
        Ok(()) => (
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

/// The server's router.
pub fn router(
    routes: Vec<Route>,
    checks: Vec<Healthcheck>,
    registry: Arc<Mutex<Registry>>,
    openapi: Option<String>,
) -> Router {
    let http_metrics = {
        let mut r = registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        HttpMetrics::register(&mut r)
    };
    let mut app = Router::new()
        .route("/health/live", get(live))
        .route(
            "/health/ready",
            get(ready).with_state(Health {
                checks: Arc::new(checks),
            }),
        )
        .route("/metrics", get(metrics).with_state(registry));
    if let Some(document) = openapi {
        app = app.route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], document) }),
        );
    }
    for route in routes {
        app = app.merge(route.router);
    }
    app.layer(middleware::from_fn_with_state(http_metrics, track))
        .layer(TraceLayer::new_for_http())
}
