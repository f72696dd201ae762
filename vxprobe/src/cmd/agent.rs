//! `vxprobe agent`: the node agent. The same pipeline as `record` (device churn followed),
//! into the metrics sink ([`crate::metrics`]), served over HTTP: `/metrics` (OpenMetrics or
//! the Prometheus text format, as the scraper asks), `/healthz`, `/readyz`. SIGTERM or SIGINT
//! end it as they end `record`: the last interval is counted, everything is detached, exit 0.
//!
//! The port is bound before anything is attached, so a port in use fails at once and the
//! kubelet's probes get answers while the programs load (`/readyz` says 503 until then).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    cli::AgentArgs,
    cmd::record::stop_signal,
    error::UsageError,
    observe::pipeline::{self, Sink},
    observe::session::{Session, SessionConfig},
    sinks::metrics::{
        Exposition, MAX_POD_LABELS, MetricsSink, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE,
        prefers_openmetrics,
    },
};

/// What the HTTP handlers know of the agent.
struct Health {
    /// Everything is attached and the pipeline runs.
    ready: AtomicBool,
    /// Unix milliseconds of the last interval closed (the metrics sink writes it).
    last_close: Arc<AtomicU64>,
    /// Unix milliseconds when the agent became ready.
    ready_at: AtomicU64,
    /// No interval closed for this long: `/healthz` fails (the pipeline is stuck).
    stall_after: Duration,
}

#[derive(Clone)]
struct AppState {
    exposition: Arc<Exposition>,
    health: Arc<Health>,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let node = match &args.node {
        Some(node) => node.clone(),
        None => {
            crate::node::hostname().context("reading the hostname (name the node with --node)")?
        }
    };
    // Signals first, as record: a SIGTERM while attaching ends the agent cleanly.
    let stop = stop_signal(None)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| listen_error(args.listen, &e))?;

    let last_close = Arc::new(AtomicU64::new(0));
    let (mut sink, exposition) =
        MetricsSink::new(&node, args.flow_metrics, Arc::clone(&last_close));
    let health = Arc::new(Health {
        ready: AtomicBool::new(false),
        last_close,
        ready_at: AtomicU64::new(0),
        stall_after: (args.stats_interval * 3).max(Duration::from_secs(30)),
    });
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        AppState {
            exposition,
            health: Arc::clone(&health),
        },
        shutdown_rx,
    ));

    let result = async {
        let mut session = Session::start(&SessionConfig {
            node: Some(node.clone()),
            ..args.probe.session(&args.selection, &args.pods)
        })
        .await?;
        health
            .ready_at
            .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        health.ready.store(true, Ordering::Relaxed);
        eprintln!(
            "vxprobe: agent ready on http://{}/metrics, {} devices observed",
            args.listen,
            session.hops().len()
        );
        if args.pod_labels {
            let index = session.pods().clone();
            sink.label_pods(
                MAX_POD_LABELS,
                Box::new(move || {
                    let pods = index.snapshot();
                    pods.pods().map(|(_, pod)| pod.id.to_string()).collect()
                }),
            );
        }
        let mut sinks: [&mut dyn Sink; 1] = [&mut sink];
        let run = pipeline::run(
            &mut session,
            &mut sinks,
            args.stats_interval,
            false,
            None,
            stop,
        )
        .await;
        health.ready.store(false, Ordering::Relaxed);
        // Detach before anything else: a terminating pod must leave no program behind.
        session.stop();
        run
    }
    .await;

    // The server answered while we stopped; let in-flight scrapes finish, briefly.
    let _ = shutdown.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => eprintln!("vxprobe: the HTTP server failed: {e:#}"),
        Ok(Err(e)) => eprintln!("vxprobe: the HTTP server task failed: {e}"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }
    result.map(|_summary| ())
}

/// A `--listen` address that is not this node's is bad input; a port in use is not.
fn listen_error(addr: SocketAddr, e: &std::io::Error) -> anyhow::Error {
    let message = format!("cannot listen on {addr}: {e}");
    if e.kind() == std::io::ErrorKind::AddrNotAvailable {
        UsageError::new(format!("{message} (no such address here)")).into()
    } else {
        anyhow::anyhow!(message)
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = shutdown.await;
        })
        .await
        .context("serving HTTP")
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(prefers_openmetrics);
    let body = state.exposition.encode(openmetrics);
    let content_type = if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        PROMETHEUS_CONTENT_TYPE
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Alive: starting, or closing intervals. A pipeline that closed none for three intervals
/// (30 s at least) is stuck, and a restart is the cure.
async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    let health = &state.health;
    liveness(
        health.ready.load(Ordering::Relaxed),
        health
            .last_close
            .load(Ordering::Relaxed)
            .max(health.ready_at.load(Ordering::Relaxed)),
        unix_ms(SystemTime::now()),
        health.stall_after,
    )
}

/// `/healthz`'s answer: `since` is when the pipeline last showed life (Unix milliseconds: an
/// interval closed, or it became ready).
fn liveness(ready: bool, since: u64, now: u64, stall_after: Duration) -> (StatusCode, String) {
    if !ready {
        return (StatusCode::OK, "ok: not attached yet\n".into());
    }
    let idle = Duration::from_millis(now.saturating_sub(since));
    if idle > stall_after {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: no interval closed for {} s\n", idle.as_secs()),
        );
    }
    (StatusCode::OK, "ok\n".into())
}

/// Ready once every program is attached; not while attaching or stopping.
async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: attaching or stopping\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_fails_only_when_intervals_stop() {
        let stall = Duration::from_secs(30);
        assert_eq!(
            liveness(false, 0, 10_000_000, stall).0,
            StatusCode::OK,
            "attaching"
        );
        assert_eq!(liveness(true, 1_000, 20_000, stall).0, StatusCode::OK);
        let (status, body) = liveness(true, 1_000, 32_000, stall);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("31 s"), "{body}");
    }
}
