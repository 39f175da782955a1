//! RabbitMQ: connecting (with retries), the topology every service declares
//! idempotently at start-up, and W3C trace context in AMQP headers.

use std::collections::HashMap;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::{Context, global};

use crate::config::EnvReader;
use crate::events::{DEAD_LETTER_EXCHANGE, EXCHANGE};

/// Broker connection settings.
#[derive(Clone)]
pub struct BrokerConfig {
    /// `amqp://user:pass@host:port/vhost`; holds a password, never logged.
    pub url: String,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &"<redacted>")
            .finish()
    }
}

impl BrokerConfig {
    pub fn read(env: &mut EnvReader) -> Self {
        let url = env.required_secret("AMQP_URL").unwrap_or_default();
        if !(url.is_empty() || url.starts_with("amqp://") || url.starts_with("amqps://"))
            || (!url.is_empty() && url.parse::<lapin::uri::AMQPUri>().is_err())
        {
            // The parser's message may quote the URL (and its password): not shown.
            env.problem("AMQP_URL is malformed: expected an amqp:// URL");
        }
        Self { url }
    }
}

/// The largest AMQP frame this client proposes (unless `AMQP_URL` sets
/// `?frame_max=`). lapin keeps 32 frames of send and 32 of receive buffer per
/// connection, zero-filled: at RabbitMQ's default of 128 KiB that is 8 MiB
/// of memory per connection for events of a few hundred bytes. 16 KiB frames
/// cost 1 MiB; larger messages are simply split over more frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// The heartbeat interval this client proposes, in seconds (unless
/// `AMQP_URL` sets `?heartbeat=`; the broker may lower it). Without
/// heartbeats a connection whose peer vanished without closing it (a node
/// frozen or cut off, a NAT entry dropped) looks alive until the kernel's
/// TCP timeout, many minutes: a consumer would sit on it consuming nothing
/// and a publisher would wait for confirms that never come. lapin closes the
/// connection after two intervals of silence, so a dead broker is noticed
/// within about 20 s.
pub const HEARTBEAT_SECS: u16 = 10;

/// How long one connection attempt (TCP, TLS, AMQP handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection attempt, bounded by [`CONNECT_TIMEOUT`], proposing
/// [`FRAME_MAX`] and [`HEARTBEAT_SECS`] unless the URL says otherwise.
pub async fn connect(config: &BrokerConfig, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("stockmesh-{name}")));
    let mut uri: lapin::uri::AMQPUri = config.url.parse().map_err(|_: String| {
        lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "AMQP_URL is not a valid AMQP URI",
            ),
        )))
    })?;
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(FRAME_MAX);
    }
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(HEARTBEAT_SECS);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, properties)).await {
        Ok(result) => result,
        Err(_) => Err(lapin::Error::from(lapin::ErrorKind::IOError(
            std::sync::Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting to the broker timed out",
            )),
        ))),
    }
}

/// Declares the events exchange and the dead-letter exchange.
pub async fn declare_exchanges(channel: &Channel) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// A consumer's queue: durable quorum queue bound to `EXCHANGE` for
/// `bindings`, giving up after `delivery_limit` deliveries into a
/// dead-letter queue `<name>.dead` (also quorum, bound to the DLX).
pub async fn declare_consumer_queue(
    channel: &Channel,
    name: &str,
    bindings: &[&str],
    delivery_limit: i64,
) -> Result<(), lapin::Error> {
    declare_exchanges(channel).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dead = format!("{name}.dead");
    let mut dead_args = FieldTable::default();
    dead_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(dead.as_str().into(), durable, dead_args)
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(delivery_limit),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    channel.queue_declare(name.into(), durable, args).await?;
    channel
        .queue_bind(
            dead.as_str().into(),
            DEAD_LETTER_EXCHANGE.into(),
            dead.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for key in bindings {
        channel
            .queue_bind(
                name.into(),
                EXCHANGE.into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Writes `cx` (traceparent, tracestate, baggage) into AMQP headers.
pub fn inject_context(cx: &Context, headers: &mut FieldTable) {
    let mut carrier = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut MapInjector(&mut carrier)));
    for (key, value) in carrier {
        headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
}

/// Reads the trace context a publisher put into AMQP headers.
pub fn extract_context(headers: Option<&FieldTable>) -> Context {
    let mut carrier = HashMap::new();
    if let Some(headers) = headers {
        for (key, value) in headers.inner() {
            let text = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                _ => continue,
            };
            carrier.insert(key.as_str().to_owned(), text);
        }
    }
    global::get_text_map_propagator(|p| p.extract(&MapExtractor(&carrier)))
}

/// W3C context as plain text pairs, for storing next to an outbox row.
pub fn context_to_map(cx: &Context) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut MapInjector(&mut carrier)));
    carrier
}

/// The context stored by [`context_to_map`].
pub fn context_from_map(carrier: &HashMap<String, String>) -> Context {
    global::get_text_map_propagator(|p| p.extract(&MapExtractor(carrier)))
}

struct MapInjector<'a>(&'a mut HashMap<String, String>);
impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);
impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
