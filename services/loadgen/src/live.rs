//! Live notifications as a browser receives them: server-sent event streams
//! from `GET /api/notifications/stream`, read chunk by chunk.
//!
//! `--mode live`: every shopper holds one stream (spread round-robin over
//! the notification URLs given, so over several replicas) while orders are
//! placed; [`Matcher`] pairs each order's 201 with the `notification` event
//! carrying its `order_id` and records the time between the two (when the
//! 201's status line arrived, when the chunk holding the event arrived).
//! An event that has not arrived within `--live-timeout` is missing.
//!
//! `--mode idle-streams`: opens `--streams` streams spread over the shoppers
//! and URLs, waits for each one's `ready`, holds them for `--hold` seconds
//! (printing `loadgen: streams open` so a script can measure the replica
//! meanwhile) and reports how many got `ready` and were still open.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (`message` when none was given).
    pub event: String,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
    /// The last event ID seen on the stream so far.
    pub id: Option<String>,
}

/// An incremental parser of `text/event-stream` (the WHATWG rules loadgen
/// needs): bytes arrive in chunks that may split lines anywhere, even
/// inside a UTF-8 character or between `\r` and `\n`.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl SseParser {
    /// Feeds the next chunk; returns the events it completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buffer[start..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
        {
            let end = start + pos;
            let next = if self.buffer[end] == b'\r' {
                match self.buffer.get(end + 1) {
                    Some(b'\n') => end + 2,
                    Some(_) => end + 1,
                    // A `\r` last in the buffer: a `\n` may follow.
                    None => break,
                }
            } else {
                end + 1
            };
            let line = String::from_utf8_lossy(&self.buffer[start..end]).into_owned();
            start = next;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.buffer.drain(..start);
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            return Some(SseEvent {
                event: if event.is_empty() {
                    "message".to_owned()
                } else {
                    event
                },
                data,
                id: self.id.clone(),
            });
        }
        if line.starts_with(':') {
            return None; // a comment: the keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {} // `retry` and unknown fields
        }
        None
    }
}

/// The `order_id` of a `notification` event's data (a NotificationView).
pub fn order_id_of(data: &str) -> Option<String> {
    let view: Value = serde_json::from_str(data).ok()?;
    view["order_id"].as_str().map(str::to_owned)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Pairs orders' 201s with their events, in either order of arrival.
pub struct Matcher {
    timeout: Duration,
    /// Order id → when its 201 arrived; its event not seen yet.
    awaiting: HashMap<String, Instant>,
    /// Order id → when its event arrived; its 201 not handled yet.
    early: HashMap<String, Instant>,
    latency: Histogram<u64>,
    missing: u64,
}

impl Matcher {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            awaiting: HashMap::new(),
            early: HashMap::new(),
            latency: histogram(),
            missing: 0,
        }
    }

    /// An order answered 201 at `at`.
    pub fn placed(&mut self, order_id: &str, at: Instant) {
        match self.early.remove(order_id) {
            Some(arrived) => self.record(arrived.saturating_duration_since(at)),
            None => {
                self.awaiting.insert(order_id.to_owned(), at);
            }
        }
    }

    /// A `notification` event for `order_id` arrived at `at`. Only the
    /// first one counts; one arriving after the timeout is missing.
    pub fn arrived(&mut self, order_id: &str, at: Instant) {
        match self.awaiting.remove(order_id) {
            Some(placed) => self.record(at.saturating_duration_since(placed)),
            None => {
                self.early.entry(order_id.to_owned()).or_insert(at);
            }
        }
    }

    fn record(&mut self, latency: Duration) {
        if latency > self.timeout {
            self.missing += 1;
        } else {
            let _ = self
                .latency
                .record((latency.as_micros() as u64).clamp(1, 60_000_000));
        }
    }

    /// Orders whose event is overdue at `now` become missing; events whose
    /// order never answered 201 (or a second event of an order) are dropped.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        let before = self.awaiting.len();
        self.awaiting
            .retain(|_, placed| now.saturating_duration_since(*placed) <= timeout);
        self.missing += (before - self.awaiting.len()) as u64;
        self.early
            .retain(|_, arrived| now.saturating_duration_since(*arrived) <= timeout);
    }

    /// Orders still waiting for their event.
    pub fn pending(&self) -> usize {
        self.awaiting.len()
    }

    /// The end of the run: whatever still waits is missing.
    pub fn finish(&mut self) {
        self.missing += self.awaiting.len() as u64;
        self.awaiting.clear();
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.latency.len()
    }

    pub fn missing(&self) -> u64 {
        self.missing
    }

    pub fn json(&self, counters: &StreamCounters, streams: usize, urls: &[String]) -> Value {
        let h = &self.latency;
        json!({
            "streams": streams, "notification_urls": urls,
            "count": h.len(), "missing": self.missing,
            "timeout_seconds": self.timeout.as_secs_f64(),
            "p50_ms": ms(h.value_at_quantile(0.50)), "p90_ms": ms(h.value_at_quantile(0.90)),
            "p99_ms": ms(h.value_at_quantile(0.99)), "max_ms": ms(h.max()),
            "mean_ms": h.mean() / 1000.0,
            "reconnects": counters.reconnects.load(Ordering::Relaxed),
            "resyncs": counters.resyncs.load(Ordering::Relaxed),
        })
    }

    pub fn table_line(&self, counters: &StreamCounters, streams: usize) -> String {
        let h = &self.latency;
        format!(
            "live notification (201 → event on the stream, {streams} streams): {} events, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} missing (not within {} s), {} reconnects, {} resyncs\n",
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            self.missing,
            self.timeout.as_secs_f64(),
            counters.reconnects.load(Ordering::Relaxed),
            counters.resyncs.load(Ordering::Relaxed),
        )
    }
}

/// What happened on the live streams besides notifications.
#[derive(Default)]
pub struct StreamCounters {
    /// Streams reopened after they ended (token expired, replica left).
    pub reconnects: AtomicU64,
    /// `resync` events: the replica says some events may have been missed.
    pub resyncs: AtomicU64,
}

/// A client for streams: no overall timeout (a stream lasts the run),
/// one connection per stream.
pub fn stream_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(0)
        .build()?)
}

/// Why a stream did not open: an HTTP status, or 0 for a transport error.
#[derive(Debug)]
pub struct OpenFailed {
    pub status: u16,
    pub reason: String,
}

/// Opens `{base}/api/notifications/stream` as `token`; Ok once it answered
/// 200 (events follow in its body).
pub async fn open(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    last_event_id: Option<&str>,
) -> Result<reqwest::Response, OpenFailed> {
    let mut request = http
        .get(format!("{base}/api/notifications/stream"))
        .bearer_auth(token)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.map_err(|err| OpenFailed {
        status: 0,
        reason: err.to_string(),
    })?;
    let status = response.status();
    if status.as_u16() != 200 {
        let body = response.text().await.unwrap_or_default();
        return Err(OpenFailed {
            status: status.as_u16(),
            reason: format!("{status}: {body}"),
        });
    }
    Ok(response)
}

/// Reads chunks until the stream ends or fails; `on_event` gets each event
/// with the time its chunk arrived.
pub async fn read_events(
    mut response: reqwest::Response,
    mut on_event: impl FnMut(SseEvent, Instant),
) {
    let mut parser = SseParser::default();
    while let Ok(Some(bytes)) = response.chunk().await {
        let now = Instant::now();
        for event in parser.feed(&bytes) {
            on_event(event, now);
        }
    }
}

/// One shopper's live stream for `--mode live`: reports `ready` (or why it
/// did not open) on `ready`, then hands every `notification` to the
/// matcher; reopens the stream (with `Last-Event-ID`, so the replica
/// replays what it missed) whenever it ends, with the shopper's current
/// token. Runs until aborted.
pub async fn follow(
    http: reqwest::Client,
    base: String,
    token: impl Fn() -> String,
    matcher: Arc<std::sync::Mutex<Matcher>>,
    counters: Arc<StreamCounters>,
    ready: tokio::sync::oneshot::Sender<Result<(), OpenFailed>>,
) {
    let mut ready = Some(ready);
    let mut last_id: Option<String> = None;
    loop {
        match open(&http, &base, &token(), last_id.as_deref()).await {
            Ok(response) => {
                read_events(response, |event, at| {
                    if event.id.is_some() {
                        last_id.clone_from(&event.id);
                    }
                    match event.event.as_str() {
                        "ready" => {
                            if let Some(ready) = ready.take() {
                                let _ = ready.send(Ok(()));
                            }
                        }
                        "notification" => {
                            if let Some(order_id) = order_id_of(&event.data) {
                                match matcher.lock() {
                                    Ok(mut m) => m.arrived(&order_id, at),
                                    Err(poisoned) => poisoned.into_inner().arrived(&order_id, at),
                                }
                            }
                        }
                        "resync" => {
                            counters.resyncs.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                })
                .await;
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(OpenFailed {
                        status: 0,
                        reason: "the stream ended before `ready`".to_owned(),
                    }));
                    return;
                }
            }
            Err(failed) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(failed));
                    return;
                }
            }
        }
        counters.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How an idle stream ended.
#[derive(Debug)]
pub enum Held {
    /// Open until told to stop.
    Open,
    /// Got `ready` but ended early.
    Closed,
    /// Never got `ready`.
    Failed(OpenFailed),
}

/// What an idle stream reports once: the time to its `ready`, with `Ok`,
/// or to its failure, with the HTTP status (0: transport, or no `ready`).
pub type Opened = (Duration, Result<(), u16>);

/// One idle stream for `--mode idle-streams`: opens it, reports the time
/// to `ready` on `ready`, then reads (and drops) what comes until `stop`.
pub async fn hold(
    http: reqwest::Client,
    base: String,
    token: String,
    ready: tokio::sync::oneshot::Sender<Opened>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Held {
    let started = Instant::now();
    let mut response = match open(&http, &base, &token, None).await {
        Ok(response) => response,
        Err(failed) => {
            let _ = ready.send((started.elapsed(), Err(failed.status)));
            return Held::Failed(failed);
        }
    };
    let mut parser = SseParser::default();
    let mut ready = Some(ready);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => {
                return if ready.is_some() {
                    Held::Failed(OpenFailed { status: 0, reason: "no `ready` before the end".to_owned() })
                } else {
                    Held::Open
                };
            }
            chunk = response.chunk() => match chunk {
                Ok(Some(bytes)) => {
                    if parser.feed(&bytes).iter().any(|e| e.event == "ready")
                        && let Some(ready) = ready.take()
                    {
                        let _ = ready.send((started.elapsed(), Ok(())));
                    }
                }
                Ok(None) | Err(_) => {
                    return match ready.take() {
                        Some(ready) => {
                            let _ = ready.send((started.elapsed(), Err(0)));
                            Held::Failed(OpenFailed { status: 0, reason: "the stream ended before `ready`".to_owned() })
                        }
                        None => Held::Closed,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        chunks.iter().flat_map(|c| parser.feed(c)).collect()
    }

    #[test]
    fn parses_the_replicas_events() {
        // As axum writes them: ready with retry, a keep-alive comment, a
        // notification with its id.
        let stream = b"event: ready\ndata: {}\nretry: 1000\n\n:\n\nevent: notification\nid: n-1\ndata: {\"id\":\"n-1\",\"order_id\":\"o-1\"}\n\n";
        let events = feed_all(&[stream]);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].event, "ready");
        assert_eq!(events[0].id, None);
        assert_eq!(events[1].event, "notification");
        assert_eq!(events[1].id.as_deref(), Some("n-1"));
        assert_eq!(order_id_of(&events[1].data).as_deref(), Some("o-1"));
    }

    #[test]
    fn any_split_of_the_bytes_gives_the_same_events() {
        let stream = "event: notification\r\nid: 7\r\ndata: {\"order_id\":\"é\"}\r\n\r\ndata:a\rdata: b\r\rdata\n\n".as_bytes();
        let whole = feed_all(&[stream]);
        assert_eq!(
            whole,
            vec![
                SseEvent {
                    event: "notification".into(),
                    data: "{\"order_id\":\"é\"}".into(),
                    id: Some("7".into())
                },
                SseEvent {
                    event: "message".into(),
                    data: "a\nb".into(),
                    id: Some("7".into()),
                },
                SseEvent {
                    event: "message".into(),
                    data: String::new(),
                    id: Some("7".into()),
                },
            ]
        );
        // Every split point, including inside `é` and between `\r` and `\n`.
        for cut in 0..=stream.len() {
            assert_eq!(
                feed_all(&[&stream[..cut], &stream[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(feed_all(&bytes), whole);
    }

    #[test]
    fn comments_and_empty_events_dispatch_nothing() {
        assert!(feed_all(&[b": keep-alive\n\nevent: x\n\nretry: 5\n\n"]).is_empty());
        // An event is only complete at its blank line.
        let mut parser = SseParser::default();
        assert!(parser.feed(b"event: ready\ndata: {}\n").is_empty());
        assert_eq!(parser.feed(b"\n").len(), 1);
        assert_eq!(order_id_of("not json"), None);
        assert_eq!(order_id_of("{\"id\":\"x\"}"), None);
    }

    #[test]
    fn matches_orders_with_their_events_either_way_round() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = Matcher::new(Duration::from_secs(1));
        // The usual order: 201, then the event 40 ms later.
        m.placed("a", at(0));
        m.placed("b", at(10));
        assert_eq!(m.pending(), 2);
        m.arrived("a", at(40));
        // The event before the 201 was handled: no negative latency.
        m.arrived("c", at(20));
        m.placed("c", at(25));
        // A second event of the same order counts once.
        m.arrived("a", at(50));
        assert_eq!(m.count(), 2);
        assert_eq!(m.pending(), 1);
        // Late: more than the timeout after the 201.
        m.arrived("b", at(1500));
        assert_eq!((m.count(), m.missing()), (2, 1));
        // Never arrives: missing once overdue, or at the end.
        m.placed("d", at(100));
        m.placed("e", at(2000));
        m.expire(at(1200));
        assert_eq!((m.pending(), m.missing()), (1, 2));
        m.finish();
        assert_eq!((m.pending(), m.missing()), (0, 3));
        let counters = StreamCounters::default();
        let report = m.json(&counters, 2, &["http://x".to_owned()]);
        assert_eq!(report["count"], 2);
        assert_eq!(report["missing"], 3);
        let p99 = report["p99_ms"].as_f64().unwrap();
        assert!((39.0..=41.0).contains(&p99), "{p99}");
        let p50 = report["p50_ms"].as_f64().unwrap();
        assert!(p50 <= 0.01, "the early event counts as 0: {p50}");
        assert!(m.table_line(&counters, 2).contains("3 missing"));
    }

    #[test]
    fn stale_early_events_are_dropped() {
        let t0 = Instant::now();
        let mut m = Matcher::new(Duration::from_millis(100));
        m.arrived("x", t0);
        m.expire(t0 + Duration::from_millis(500));
        // Its order answering 201 later waits for a new event.
        m.placed("x", t0 + Duration::from_millis(600));
        assert_eq!((m.count(), m.pending()), (0, 1));
    }
}
