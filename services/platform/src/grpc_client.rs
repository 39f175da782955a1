//! The client side of every gRPC hop (order → product, order → inventory,
//! product → inventory), written once.
//!
//! [`Upstream`] is the stack every generated client runs on. Per call it:
//! opens a client span and injects its W3C context into the metadata; asks
//! the upstream's circuit breaker (an open breaker fails the call at once,
//! UNAVAILABLE with `retry-after`, without touching the network); sends a
//! `grpc-timeout` that is the smaller of the per-call default and what is
//! left of the caller's own deadline, and enforces it; tells the breaker how
//! it went; counts the call per method and code. Calls are spread over every
//! address the upstream's name resolves to (a headless Service gives one per
//! pod; see `balancer.rs`, which also steers calls away from an address
//! whose connection just failed), re-resolved periodically — and at once
//! (then with a short, growing backoff) while the name has no address, or
//! when a call could not reach the upstream, so pods that became ready after
//! the last lookup are found within a call's deadline. A call that never
//! reached the server (its connection closed first: a server going away in a
//! rollout) is sent again at once to another address, whatever the call.
//! [`retry`] adds bounded retries for idempotent calls, within a
//! process-wide retry budget: at once after a connection failure, else after
//! a jittered backoff.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use tokio::sync::watch;
use tonic::body::Body;
use tonic::transport::Endpoint;
use tower::Service;
use tracing::Instrument;

use crate::balancer::{self, Backends, Lookup, Resolver, dns_lookup};
use crate::breaker::{Breaker, BreakerConfig, is_upstream_failure};
use crate::config::EnvReader;
use crate::deadline;
use crate::layers::{grpc_code_name, split_grpc_path};
use crate::metrics::{GrpcLabels, GrpcMethodLabels, Metrics, RequestMetrics};
use crate::telemetry;

/// Metadata key marking a call failed fast by an open breaker.
pub const CIRCUIT_OPEN: &str = "x-circuit-open";

/// Metadata key marking a call that failed because its connection did
/// (refused, reset, closed): [`retry`] sends an idempotent call again at
/// once, and the address that failed is avoided, so it goes to another one.
pub const CONNECTION_FAILED: &str = "x-connection-failed";

/// Shortest pause between two lookups of an upstream's name: a burst of
/// failing calls asks for one lookup, not one each.
const RESOLVE_MIN_GAP: Duration = Duration::from_millis(100);
/// While the name has no address it is looked up again after
/// [`RESOLVE_MIN_GAP`], doubling up to this (and never later than the
/// regular period): right after a rollout the pods appear within a second.
const EMPTY_RESOLVE_MAX: Duration = Duration::from_secs(2);

/// Where an upstream lives and how calls to it behave.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Short name for logs and metrics (`inventory`, `product`).
    pub name: &'static str,
    /// `http://host:port`; a name resolving to several addresses is balanced.
    /// A comma-separated list (`http://a:1,http://b:2`) balances over every
    /// address of every entry: replicas outside Kubernetes, where no single
    /// name lists them (`make bench`'s scale-out step).
    pub url: String,
    /// Deadline of one call when the caller has no tighter one.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub breaker: BreakerConfig,
    /// How often the name is resolved again.
    pub resolve_every: Duration,
}

impl UpstreamConfig {
    /// Reads `<PREFIX>_GRPC_URL`, `<PREFIX>_TIMEOUT_MS`,
    /// `<PREFIX>_CONNECT_TIMEOUT_MS` and the shared `BREAKER_*` settings.
    pub fn read(env: &mut EnvReader, name: &'static str, prefix: &str, default_url: &str) -> Self {
        let url = env.with_default(&format!("{prefix}_GRPC_URL"), default_url.to_owned());
        if targets(&url).is_none() {
            env.problem(format!(
                "{prefix}_GRPC_URL is malformed: expected http://host:port (or a comma-separated list of them)"
            ));
        }
        Self {
            name,
            url,
            timeout: env.millis(&format!("{prefix}_TIMEOUT_MS"), Duration::from_millis(2000)),
            connect_timeout: env.millis(
                &format!("{prefix}_CONNECT_TIMEOUT_MS"),
                Duration::from_millis(1000),
            ),
            breaker: BreakerConfig::read(env),
            resolve_every: env.millis("UPSTREAM_RESOLVE_MS", Duration::from_secs(10)),
        }
    }
}

/// The host and port of every entry of a (comma-separated) upstream URL;
/// `None` when any entry is malformed or the list is empty.
fn targets(urls: &str) -> Option<Vec<(String, u16)>> {
    urls.split(',')
        .map(str::trim)
        .map(|url| {
            Endpoint::from_shared(url.to_owned()).ok()?;
            host_port(url)
        })
        .collect::<Option<Vec<_>>>()
        .filter(|targets| !targets.is_empty())
}

fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((
        host.trim_matches(|c| c == '[' || c == ']').to_owned(),
        port.parse().ok()?,
    ))
}

/// A gRPC upstream with the standard client stack; give it to a generated
/// client: `InventoryServiceClient::new(upstream)`.
#[derive(Clone)]
pub struct Upstream {
    name: &'static str,
    timeout: Duration,
    metrics: RequestMetrics,
    breaker: Breaker,
    /// The addresses the last lookup found, each with its connection.
    backends: watch::Receiver<Backends>,
    /// Wakes the resolver for a lookup now.
    resolve_now: Arc<tokio::sync::Notify>,
}

impl Upstream {
    /// Resolves the upstream's name and keeps re-resolving it in the background.
    pub async fn new(config: &UpstreamConfig, metrics: &Metrics) -> anyhow::Result<Self> {
        Self::with_lookup(config, metrics, dns_lookup()).await
    }

    async fn with_lookup(
        config: &UpstreamConfig,
        metrics: &Metrics,
        lookup: Lookup,
    ) -> anyhow::Result<Self> {
        let targets = targets(&config.url)
            .ok_or_else(|| anyhow::anyhow!("{}: malformed URL", config.name))?;
        let scheme = if config.url.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        let connect_timeout = config.connect_timeout;
        let endpoint = move |addr: SocketAddr| {
            Endpoint::from_shared(format!("{scheme}://{addr}")).map(|e| {
                e.connect_timeout(connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(true)
            })
        };
        let (sender, backends) = watch::channel(Backends::default());
        let resolver = Resolver {
            name: config.name,
            lookup,
            targets,
            endpoint,
            backends: sender,
        };
        resolver.resolve_once().await;
        let resolve_now = Arc::new(tokio::sync::Notify::new());
        let every = config.resolve_every;
        let wake = resolve_now.clone();
        tokio::spawn(async move {
            let mut last = tokio::time::Instant::now();
            let mut empty_backoff = RESOLVE_MIN_GAP;
            loop {
                let empty = resolver.backends.borrow().is_empty();
                let wait = if empty {
                    empty_backoff.min(every)
                } else {
                    every
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = wake.notified() => {
                        tokio::time::sleep_until(last + RESOLVE_MIN_GAP).await;
                    }
                }
                if resolver.backends.is_closed() {
                    return;
                }
                resolver.resolve_once().await;
                last = tokio::time::Instant::now();
                empty_backoff = if resolver.backends.borrow().is_empty() {
                    (empty_backoff * 2).min(EMPTY_RESOLVE_MAX)
                } else {
                    RESOLVE_MIN_GAP
                };
            }
        });
        Ok(Self {
            name: config.name,
            timeout: config.timeout,
            metrics: metrics.requests.clone(),
            // A call is cut off at `timeout` and then records its outcome,
            // so a probe still unanswered a second later is lost for good.
            breaker: Breaker::new(config.name, config.breaker, metrics.breakers.clone())
                .with_probe_timeout(config.timeout + Duration::from_secs(1)),
            backends,
            resolve_now,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The upstream's breaker (state for tests and status pages).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Attempts of one call when the request never reached the server.
const TRANSPARENT_ATTEMPTS: u32 = 3;

/// Sends a unary call to one of the upstream's addresses (waiting, within
/// the caller's deadline, for the name to have one). When the connection
/// fails, the address is avoided for a while and a lookup is asked for at
/// once. A call that was never sent — queued on a connection that closed
/// before writing it, or refused by a server going away (GOAWAY) in a
/// rollout — is sent again at once to another address, whatever the call,
/// since the server never saw it. Any other connection failure is returned
/// as UNAVAILABLE marked [`CONNECTION_FAILED`], for [`retry`] to send an
/// idempotent call again. The body is buffered to be sent again (unary
/// calls only: the platform's upstreams have no streaming calls).
async fn send(
    upstream: &'static str,
    mut backends: watch::Receiver<Backends>,
    resolve_now: &tokio::sync::Notify,
    request: Request<Body>,
) -> Result<Response<Body>, tonic::Status> {
    let (parts, body) = request.into_parts();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|err| tonic::Status::internal(format!("request body: {err}")))?
        .to_bytes();
    let rebuild = || {
        let mut request = Request::new(Body::new(http_body_util::Full::new(bytes.clone())));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = parts.headers.clone();
        *request.extensions_mut() = parts.extensions.clone();
        request
    };
    let mut failed_at = None;
    let mut attempt = 1;
    loop {
        let backend = loop {
            let current = backends.borrow_and_update().clone();
            if let Some(backend) = balancer::pick(&current, failed_at) {
                break backend;
            }
            // No address yet (the pods were not ready at the last lookup):
            // look again now, and take the first one found.
            resolve_now.notify_one();
            if backends.changed().await.is_err() {
                return Err(tonic::Status::unavailable(format!(
                    "{upstream} has no address"
                )));
            }
        };
        let span = tracing::Span::current();
        span.record("server.address", backend.addr.ip().to_string());
        span.record("server.port", backend.addr.port());
        let (mut channel, _in_flight) = backend.checkout();
        let sent = match futures::future::poll_fn(|cx| channel.poll_ready(cx)).await {
            Ok(()) => channel.call(rebuild()).await,
            Err(err) => Err(err),
        };
        let err: BoxError = match sent {
            Ok(response) => {
                backend.trust();
                return Ok(response);
            }
            Err(err) => err.into(),
        };
        // The address may be gone (a pod replaced): steer away from it,
        // and the next lookup should not wait its turn.
        backend.avoid();
        resolve_now.notify_one();
        if attempt < TRANSPARENT_ATTEMPTS && never_sent(&*err) {
            tracing::debug!(attempt, addr = %backend.addr, error = %crate::error::ErrorChain(&*err), "call never sent, sending it again");
            failed_at = Some(backend.addr);
            attempt += 1;
            continue;
        }
        let mut status = tonic::Status::unavailable(format!(
            "{upstream} unreachable at {}: {}",
            backend.addr,
            crate::error::ErrorChain(&*err)
        ));
        if let Ok(value) = "1".parse() {
            status.metadata_mut().insert(CONNECTION_FAILED, value);
        }
        return Err(status);
    }
}

/// Whether a transport error says the server never processed the request,
/// so that sending it again cannot do it twice: hyper cancelled it because
/// the connection closed before it was written, or the server's graceful
/// GOAWAY (reason NO_ERROR, a server going away in a rollout) refused its
/// stream — HTTP/2 reports exactly the streams above the GOAWAY's last
/// stream id this way, and those were not processed (RFC 9113, 6.8).
fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if err.downcast_ref::<h2::Error>().is_some_and(|e| {
            e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR)
        }) {
            return true;
        }
        source = err.source();
    }
    false
}

fn circuit_open(upstream: &str, retry_after: Duration) -> tonic::Status {
    let mut status =
        tonic::Status::unavailable(format!("{upstream} circuit breaker open, failing fast"));
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(value) = secs.to_string().parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    if let Ok(value) = "1".parse() {
        status.metadata_mut().insert(CIRCUIT_OPEN, value);
    }
    status
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited inside `call`, under the deadline: a channel
        // with no reachable address must time out, not hang the caller.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let resolve_now = self.resolve_now.clone();
        let backends = self.backends.clone();
        let metrics = self.metrics.clone();
        let breaker = self.breaker.clone();
        let upstream = self.name;
        let (service, method) = split_grpc_path(request.uri().path());
        let (service, method) = (service.to_owned(), method.to_owned());
        let budget = deadline::remaining()
            .map(|left| left.min(self.timeout))
            .unwrap_or(self.timeout);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = format!("{service}/{method}"),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            peer.service = upstream,
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        Box::pin(
            async move {
                let start = Instant::now();
                let result = match breaker.admit() {
                    Err(rejected) => {
                        // `error.type = circuit_open` is recorded below.
                        Err(BoxError::from(circuit_open(upstream, rejected.retry_after)))
                    }
                    Ok(admission) => {
                        telemetry::inject_current_context(request.headers_mut());
                        if let Ok(value) =
                            HeaderValue::from_str(&deadline::format_grpc_timeout(budget))
                        {
                            request.headers_mut().insert("grpc-timeout", value);
                        }
                        let call = send(upstream, backends, &resolve_now, request);
                        let result = match tokio::time::timeout(budget, call).await {
                            Ok(Ok(response)) => Ok(response),
                            Ok(Err(status)) => Err(BoxError::from(status)),
                            Err(_) => {
                                Err(BoxError::from(tonic::Status::deadline_exceeded(format!(
                                    "{upstream} did not answer within {} ms",
                                    budget.as_millis()
                                ))))
                            }
                        };
                        let code = code_of(&result);
                        breaker.record(admission, !is_upstream_failure(code));
                        result
                    }
                };
                let code = code_of(&result);
                let current = tracing::Span::current();
                current.record("rpc.grpc.status_code", code as i32);
                if is_upstream_failure(code) {
                    let (error_type, message) = failure_of(&result, code);
                    telemetry::record_error(&current, error_type, &message);
                }
                metrics
                    .grpc_client_handled
                    .get_or_create(&GrpcLabels {
                        grpc_service: service.clone(),
                        grpc_method: method.clone(),
                        grpc_code: grpc_code_name(code).to_owned(),
                    })
                    .inc();
                crate::metrics::observe_latency(
                    &metrics
                        .grpc_client_duration
                        .get_or_create(&GrpcMethodLabels {
                            grpc_service: service,
                            grpc_method: method,
                        }),
                    start.elapsed().as_secs_f64(),
                    &current,
                );
                result
            }
            .instrument(span),
        )
    }
}

/// `error.type` and message of a failed call: the breaker's fast failure
/// is `circuit_open`, anything else the gRPC code's name.
fn failure_of(
    result: &Result<Response<Body>, BoxError>,
    code: tonic::Code,
) -> (&'static str, String) {
    match result {
        Err(err) => match err.downcast_ref::<tonic::Status>() {
            Some(status) if status.metadata().contains_key(CIRCUIT_OPEN) => {
                ("circuit_open", status.message().to_owned())
            }
            Some(status) => (grpc_code_name(code), status.message().to_owned()),
            None => (grpc_code_name(code), err.to_string()),
        },
        Ok(response) => (
            grpc_code_name(code),
            crate::layers::grpc_message_of(response),
        ),
    }
}

fn code_of(result: &Result<Response<Body>, BoxError>) -> tonic::Code {
    match result {
        Ok(response) => crate::layers::grpc_status_of(response),
        Err(err) => err
            .downcast_ref::<tonic::Status>()
            .map(|s| s.code())
            .unwrap_or(tonic::Code::Unknown),
    }
}

/// Caps retries to a fraction of calls, so retries cannot multiply load
/// during an outage: each call deposits `ratio` tokens, each retry spends one.
#[derive(Clone)]
pub struct RetryBudget {
    tokens: Arc<Mutex<f64>>,
    ratio: f64,
    max: f64,
}

impl RetryBudget {
    /// Allows retries for about `ratio` of calls (plus a small reserve of 10).
    pub fn new(ratio: f64) -> Self {
        Self {
            tokens: Arc::new(Mutex::new(10.0)),
            ratio,
            max: 100.0,
        }
    }

    fn deposit(&self) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        *tokens = (*tokens + self.ratio).min(self.max);
    }

    fn withdraw(&self) -> bool {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Runs an idempotent call up to `attempts` times while it fails with
/// UNAVAILABLE (not when the breaker failed it fast, and not once the
/// caller's deadline is spent), within `budget`. A call whose connection
/// failed ([`CONNECTION_FAILED`]: a server going away, a pod gone) is sent
/// again at once — the failed address is avoided, so it goes to another;
/// other failures wait a jittered exponential backoff first. Only for calls
/// that are safe to repeat.
pub async fn retry<T, F, Fut>(
    budget: &RetryBudget,
    attempts: u32,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    budget.deposit();
    let mut backoff = Duration::from_millis(20);
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) => {
                let retryable = status.code() == tonic::Code::Unavailable
                    && status.metadata().get(CIRCUIT_OPEN).is_none();
                let at_once = status.metadata().get(CONNECTION_FAILED).is_some();
                let pause = if at_once { Duration::ZERO } else { backoff };
                let time_left = deadline::remaining().is_none_or(|left| left > pause * 2);
                if !retryable || attempt >= attempts || !time_left || !budget.withdraw() {
                    return Err(status);
                }
                tracing::debug!(attempt, code = ?status.code(), at_once, "retrying idempotent call");
                if !at_once {
                    let jitter =
                        backoff.mul_f64((uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0);
                    tokio::time::sleep(backoff + jitter).await;
                    backoff *= 2;
                }
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerState;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_unavailable_within_attempts_and_budget() {
        let budget = RetryBudget::new(0.1);
        let calls = AtomicU32::new(0);
        let result = retry(&budget, 3, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n < 2 {
                Err(tonic::Status::unavailable("down"))
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(result.unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        // Never retries a refusal that is an answer.
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry(&budget, 3, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::failed_precondition("no stock"))
        })
        .await;
        assert_eq!(result.unwrap_err().code(), tonic::Code::FailedPrecondition);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Nor a breaker's fast failure.
        let calls = AtomicU32::new(0);
        let _: Result<(), _> = retry(&budget, 3, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(circuit_open("inventory", Duration::from_secs(1)))
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_stops_retry_storms() {
        let budget = RetryBudget::new(0.0);
        let calls = AtomicU32::new(0);
        for _ in 0..20 {
            let _: Result<(), _> = retry(&budget, 3, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(tonic::Status::unavailable("down"))
            })
            .await;
        }
        // 20 first attempts + the 10-token reserve, then no more retries.
        assert_eq!(calls.load(Ordering::SeqCst), 30);
    }

    /// An upstream that accepts connections and never answers a byte.
    async fn silent_upstream() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        addr
    }

    async fn call_once(mut upstream: Upstream) -> Result<Response<Body>, BoxError> {
        let request = Request::builder()
            .uri("http://upstream/stockmesh.test.v1.Test/Call")
            .body(Body::empty())
            .expect("valid request");
        upstream.call(request).await
    }

    fn status_of(result: Result<Response<Body>, BoxError>) -> tonic::Status {
        match result {
            Ok(_) => panic!("the silent upstream cannot answer"),
            Err(err) => match err.downcast::<tonic::Status>() {
                Ok(status) => *status,
                Err(other) => panic!("not a status: {other}"),
            },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_dropped_mid_flight_does_not_wedge_the_breaker() {
        let addr = silent_upstream().await;
        let config = UpstreamConfig {
            name: "inventory",
            url: format!("http://{addr}"),
            // Long enough for the test to see the probe in flight.
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            breaker: BreakerConfig {
                failure_threshold: 1,
                open_for: Duration::from_millis(100),
                max_open: Duration::from_secs(1),
            },
            resolve_every: Duration::from_secs(60),
        };
        let upstream = Upstream::new(&config, &Metrics::new("test"))
            .await
            .expect("upstream");

        // One failed call (no answer) opens the breaker (threshold 1).
        let first = status_of(call_once(upstream.clone()).await);
        assert!(is_upstream_failure(first.code()), "{first:?}");
        assert_eq!(upstream.breaker().state(), BreakerState::Open);

        // After the penalty (100 ms + at most 20 %) the next call is the
        // probe; its caller goes away while it is in flight.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let probe = tokio::spawn(call_once(upstream.clone()));
        let mut half_open = false;
        for _ in 0..100 {
            if upstream.breaker().state() == BreakerState::HalfOpen {
                half_open = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(half_open, "the probe was admitted");
        probe.abort();
        assert!(probe.await.is_err(), "the probe was cancelled mid-flight");

        // A dropped probe is a failed probe: open again with the doubled
        // penalty (200 ms + at most 20 %), after which a new probe goes out
        // to the upstream instead of failing fast forever.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = status_of(call_once(upstream.clone()).await);
        assert!(
            again.metadata().get(CIRCUIT_OPEN).is_none(),
            "a new probe was admitted, not failed fast: {again:?}"
        );
        assert!(is_upstream_failure(again.code()), "{again:?}");
    }

    /// A gRPC server answering the health service as SERVING.
    async fn healthy_upstream() -> SocketAddr {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// An upstream named `inventory` at `url`: 2 s calls, a breaker that
    /// opens after 5 failures for 1 s, looked up again every 60 s.
    fn test_config(url: String) -> UpstreamConfig {
        UpstreamConfig {
            name: "inventory",
            url,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            breaker: BreakerConfig {
                failure_threshold: 5,
                open_for: Duration::from_secs(1),
                max_open: Duration::from_secs(1),
            },
            resolve_every: Duration::from_secs(60),
        }
    }

    /// A URL listing several entries balances over all of them (replicas
    /// outside Kubernetes), and every call is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listed_url_balances_over_every_entry() {
        let (first, second) = (healthy_upstream().await, healthy_upstream().await);
        let config = test_config(format!("http://{first},http://{second}"));
        let upstream = Upstream::new(&config, &Metrics::new("test"))
            .await
            .expect("upstream");
        let addrs: Vec<SocketAddr> = upstream.backends.borrow().iter().map(|b| b.addr).collect();
        assert_eq!(addrs, vec![first, second]);
        let mut client = tonic_health::pb::health_client::HealthClient::new(upstream.clone());
        for _ in 0..20 {
            let answer = client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            assert!(answer.is_ok(), "answered: {answer:?}");
        }
    }

    /// Issue 14, item 5: an upstream whose name had no address when it was
    /// last looked up (pods not ready yet) is looked up again with a short
    /// backoff, and at once when a call needs it, so the call is answered
    /// within its deadline instead of waiting for the regular period.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_name_without_addresses_is_looked_up_again_at_once() {
        let addr = healthy_upstream().await;
        let published = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lookups = Arc::new(AtomicU32::new(0));
        let lookup: Lookup = {
            let (published, lookups) = (published.clone(), lookups.clone());
            Arc::new(move |_host, _port| {
                lookups.fetch_add(1, Ordering::SeqCst);
                let found = if published.load(Ordering::SeqCst) {
                    vec![addr]
                } else {
                    Vec::new()
                };
                Box::pin(async move { Ok(found) })
            })
        };
        // Its regular lookup period (60 s) would be far too late.
        let config = test_config("http://inventory-grpc:50051".to_owned());
        let upstream = Upstream::with_lookup(&config, &Metrics::new("test"), lookup)
            .await
            .expect("upstream");

        // Nothing published: looked up again and again, backing off
        // (100, 200, 400, 800 ms, ...): the next lookup is ~1.6 s away.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let while_empty = lookups.load(Ordering::SeqCst);
        assert!(
            (4..=6).contains(&while_empty),
            "looked up with a short, growing backoff: {while_empty} lookups"
        );

        // The pods appear; a call triggers the lookup at once.
        published.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let answer = tonic_health::pb::health_client::HealthClient::new(upstream)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await;
        assert!(answer.is_ok(), "answered: {answer:?}");
        assert!(
            start.elapsed() < Duration::from_millis(800),
            "found without waiting for the backoff: {:?}",
            start.elapsed()
        );
    }

    /// A health server on its own port that stops (GOAWAY, then closes)
    /// when `stop` is cancelled.
    async fn stoppable_upstream(stop: tokio_util::sync::CancellationToken) -> SocketAddr {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                ),
        );
        addr
    }

    /// Issue 14, item 4: calls in flight while the server behind a Service
    /// address goes away gracefully (a rollout: GOAWAY, then the connection
    /// closes) and the Service routes new connections to its replacement.
    /// A call hyper cancelled because its connection closed before it was
    /// written is sent again on a new connection: no call fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_survive_a_server_going_away_behind_the_same_address() {
        let stop_old = tokio_util::sync::CancellationToken::new();
        let old = stoppable_upstream(stop_old.clone()).await;
        // The Service: a TCP front that sends each new connection to the
        // current backend.
        let backend = Arc::new(Mutex::new(old));
        let front = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let front_addr = front.local_addr().expect("front addr");
        let current = backend.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = front.accept().await {
                let to = *current.lock().unwrap_or_else(|e| e.into_inner());
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        let lookup: Lookup =
            Arc::new(move |_host, _port| Box::pin(async move { Ok(vec![front_addr]) }));
        let config = UpstreamConfig {
            name: "inventory",
            url: "http://inventory-grpc:50051".to_owned(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            breaker: BreakerConfig {
                failure_threshold: 1000,
                open_for: Duration::from_secs(1),
                max_open: Duration::from_secs(1),
            },
            resolve_every: Duration::from_secs(60),
        };
        let upstream = Upstream::with_lookup(&config, &Metrics::new("test"), lookup)
            .await
            .expect("upstream");

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let callers: Vec<_> = (0..6)
            .map(|_| {
                let (upstream, stop) = (upstream.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut calls, mut failures) = (0u32, Vec::new());
                    while !stop.load(Ordering::SeqCst) {
                        calls += 1;
                        let answer =
                            tonic_health::pb::health_client::HealthClient::new(upstream.clone())
                                .check(tonic_health::pb::HealthCheckRequest {
                                    service: String::new(),
                                })
                                .await;
                        if let Err(status) = answer {
                            failures.push(status.message().to_owned());
                        }
                    }
                    (calls, failures)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The rollout: the replacement takes new connections, the old
        // server goes away.
        let new = stoppable_upstream(tokio_util::sync::CancellationToken::new()).await;
        *backend.lock().unwrap_or_else(|e| e.into_inner()) = new;
        stop_old.cancel();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        let (mut calls, mut failures) = (0, Vec::new());
        for caller in callers {
            let (c, f) = caller.await.expect("caller");
            calls += c;
            failures.extend(f);
        }
        assert!(calls > 50, "calls were made throughout: {calls}");
        assert!(
            failures.is_empty(),
            "{} of {calls} calls failed: {failures:?}",
            failures.len()
        );
    }

    /// A health server on its own port and its own runtime, killed (every
    /// connection dropped, the port closed: a pod's process gone) by
    /// sending on the returned channel.
    fn killable_upstream() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let (reporter, service) = tonic_health::server::health_reporter();
                reporter
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let serve = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
                tokio::select! {
                    _ = serve => {}
                    _ = killed => {}
                }
            });
            // Dropping the runtime drops every connection task with it.
            drop(runtime);
        });
        (addr, kill)
    }

    async fn check(upstream: &Upstream) -> Result<(), tonic::Status> {
        tonic_health::pb::health_client::HealthClient::new(upstream.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
    }

    /// Issue 14, item 4: one of three pods dies abruptly (its calls in
    /// flight reset, its port refusing) while calls flow, and the name still
    /// lists its address (DNS has not caught up). Idempotent calls (through
    /// [`retry`]) that meet it are sent again at once to another address:
    /// none fails. And the dead address is avoided, so even calls that are
    /// not retried stop meeting it after its first failures.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_meeting_a_dead_address_go_to_another_at_once() {
        let (first, _a) = killable_upstream();
        let (second, _b) = killable_upstream();
        let (doomed, kill) = killable_upstream();
        let lookup: Lookup =
            Arc::new(move |_host, _port| Box::pin(async move { Ok(vec![first, second, doomed]) }));
        let config = UpstreamConfig {
            name: "inventory",
            url: "http://inventory-grpc:50051".to_owned(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            breaker: BreakerConfig {
                failure_threshold: 1000,
                open_for: Duration::from_secs(1),
                max_open: Duration::from_secs(1),
            },
            resolve_every: Duration::from_secs(60),
        };
        let upstream = Upstream::with_lookup(&config, &Metrics::new("test"), lookup)
            .await
            .expect("upstream");
        let budget = RetryBudget::new(0.2);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let callers: Vec<_> = (0..6)
            .map(|_| {
                let (upstream, stop, budget) = (upstream.clone(), stop.clone(), budget.clone());
                tokio::spawn(async move {
                    let (mut calls, mut failures) = (0u32, Vec::new());
                    while !stop.load(Ordering::SeqCst) {
                        calls += 1;
                        if let Err(status) = retry(&budget, 3, || check(&upstream)).await {
                            failures.push(status.message().to_owned());
                        }
                    }
                    (calls, failures)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = kill.send(());
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        let (mut calls, mut failures) = (0, Vec::new());
        for caller in callers {
            let (c, f) = caller.await.expect("caller");
            calls += c;
            failures.extend(f);
        }
        assert!(calls > 50, "calls were made throughout: {calls}");
        assert!(
            failures.is_empty(),
            "{} of {calls} idempotent calls failed, first: {:?}",
            failures.len(),
            failures.first()
        );

        // Still listed, but avoided: plain calls (no retry) go elsewhere.
        let mut failed = 0;
        for _ in 0..100 {
            if check(&upstream).await.is_err() {
                failed += 1;
            }
        }
        assert_eq!(
            failed, 0,
            "calls after the failure avoided the dead address"
        );
    }

    /// A connection failure is retried without a backoff (the failed
    /// address is avoided, so the next attempt goes elsewhere); other
    /// UNAVAILABLE answers wait first.
    #[tokio::test(start_paused = true)]
    async fn a_connection_failure_is_retried_at_once() {
        let budget = RetryBudget::new(0.1);
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let result = retry(&budget, 3, || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                let mut status = tonic::Status::unavailable("connection reset");
                status
                    .metadata_mut()
                    .insert(CONNECTION_FAILED, "1".parse().expect("ascii"));
                Err(status)
            } else {
                Ok(())
            }
        })
        .await;
        assert!(result.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(start.elapsed(), Duration::ZERO, "sent again at once");

        calls.store(0, Ordering::SeqCst);
        let start = tokio::time::Instant::now();
        let result = retry(&budget, 3, || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(tonic::Status::unavailable("overloaded"))
            } else {
                Ok(())
            }
        })
        .await;
        assert!(result.is_ok());
        assert!(start.elapsed() >= Duration::from_millis(20), "backed off");
    }

    #[test]
    fn parses_upstream_urls() {
        assert_eq!(
            host_port("http://inventory-grpc:50051"),
            Some(("inventory-grpc".into(), 50051))
        );
        assert_eq!(
            host_port("http://127.0.0.1:50053/"),
            Some(("127.0.0.1".into(), 50053))
        );
        assert_eq!(host_port("inventory"), None);
        assert_eq!(
            targets("http://127.0.0.1:1, http://127.0.0.1:2"),
            Some(vec![("127.0.0.1".into(), 1), ("127.0.0.1".into(), 2)])
        );
        assert_eq!(targets("http://127.0.0.1:1,inventory"), None);
        assert_eq!(targets(""), None);
    }
}
