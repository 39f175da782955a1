//! The order saga when the database's answer to the confirm is lost
//! (issue 13, "confirmed but compensated"): the outcome is decided from
//! what is stored, never from the error alone.
//!
//! A small proxy between the order service and PostgreSQL reads the
//! frontend protocol and cuts the connection around the confirm statement
//! (the one that inserts the outbox row): either after the statement and
//! its Sync reached the server, so it commits and only its reply is lost,
//! or before it executes, so it never runs.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::System;
use reqwest::StatusCode;
use stockmesh_testkit::{host_port, infra};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// The confirm statement is the only one that inserts into the outbox on
/// the place path.
const CONFIRM_MARKER: &[u8] = b"INSERT INTO outbox";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Forward the statement through its Sync (it commits), then close the
    /// client's side before any reply reaches it.
    AfterCommit,
    /// Close the client's side when the statement is about to execute; the
    /// server never runs it.
    BeforeExecute,
}

struct Shared {
    marker: &'static [u8],
    cut: Cut,
    /// After the cut, every other connection is closed and new ones are
    /// dropped until [`PgCutter::restore`]: the database is unreachable.
    blackout_after_cut: bool,
    fired: AtomicBool,
    open: watch::Sender<bool>,
}

struct PgCutter {
    port: u16,
    pg_port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl PgCutter {
    async fn start(cut: Cut, blackout_after_cut: bool) -> Self {
        let (host, pg_port) = host_port(&infra().database_url).expect("database URL has a port");
        let target: SocketAddr = tokio::net::lookup_host((host.as_str(), pg_port))
            .await
            .expect("resolve PostgreSQL")
            .next()
            .expect("an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (open, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            marker: CONFIRM_MARKER,
            cut,
            blackout_after_cut,
            fired: AtomicBool::new(false),
            open,
        });
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !*accepting.open.borrow() {
                    continue; // dropped: the database is unreachable
                }
                tokio::spawn(proxy(inbound, target, accepting.clone()));
            }
        });
        Self {
            port,
            pg_port,
            shared,
            task,
        }
    }

    /// The order database's URL through this proxy (plain TCP, so the
    /// proxy can read the protocol).
    fn route(&self, url: &str) -> String {
        let url = url.replacen(
            &format!(":{}/", self.pg_port),
            &format!(":{}/", self.port),
            1,
        );
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}sslmode=disable")
    }

    fn fired(&self) -> bool {
        self.shared.fired.load(Ordering::SeqCst)
    }

    fn restore(&self) {
        // `send` would fail once no connection is left to watch.
        self.shared.open.send_replace(true);
    }
}

impl Drop for PgCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Splits the frontend byte stream into whole messages: the untyped
/// start-up messages (an SSL request, then the start-up packet), then
/// `type, int32 length, body` messages.
#[derive(Default)]
struct Framer {
    started: bool,
    buf: Vec<u8>,
}

impl Framer {
    fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if !self.started {
            if self.buf.len() < 8 {
                return None;
            }
            let len = be(&self.buf[0..4]);
            if self.buf.len() < len {
                return None;
            }
            let code = be(&self.buf[4..8]);
            // SSLRequest and GSSENCRequest precede the real start-up packet.
            if code != 80_877_103 && code != 80_877_104 {
                self.started = true;
            }
            return Some((0, self.buf.drain(..len).collect()));
        }
        if self.buf.len() < 5 {
            return None;
        }
        let len = be(&self.buf[1..5]);
        if self.buf.len() < 1 + len {
            return None;
        }
        let message: Vec<u8> = self.buf.drain(..1 + len).collect();
        Some((message[0], message))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn proxy(inbound: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let cut = Arc::new(AtomicBool::new(false));
    let cut_now = Arc::new(Notify::new());

    let upstream = {
        let (shared, cut, cut_now) = (shared.clone(), cut.clone(), cut_now.clone());
        async move {
            let mut framer = Framer::default();
            let mut marked = false;
            let mut executed = false;
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = match client_read.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                framer.buf.extend_from_slice(&chunk[..n]);
                let mut out = Vec::new();
                let mut stop = false;
                while let Some((kind, message)) = framer.next() {
                    if !marked
                        && kind == b'P'
                        && contains(&message, shared.marker)
                        && !shared.fired.swap(true, Ordering::SeqCst)
                    {
                        marked = true;
                    }
                    if marked && kind == b'E' {
                        if shared.cut == Cut::BeforeExecute {
                            stop = true;
                            break;
                        }
                        executed = true;
                    }
                    out.extend_from_slice(&message);
                    if executed && kind == b'S' {
                        stop = true;
                        break;
                    }
                }
                if stop {
                    // Set before the server can answer: no reply byte of
                    // the cut statement reaches the client.
                    cut.store(true, Ordering::SeqCst);
                    if shared.blackout_after_cut {
                        shared.open.send_replace(false);
                    }
                }
                if server_write.write_all(&out).await.is_err() {
                    return;
                }
                if stop {
                    cut_now.notify_one();
                    // Dropping the halves: the server sees the end of input
                    // after the forwarded messages, the client a closed
                    // connection without an answer.
                    return;
                }
            }
        }
    };
    let downstream = {
        let cut = cut.clone();
        async move {
            let mut client_write = Some(client_write);
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    read = server_read.read(&mut chunk) => {
                        let n = match read {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if cut.load(Ordering::SeqCst) {
                            client_write = None; // the reply is swallowed
                            continue;
                        }
                        if let Some(w) = client_write.as_mut()
                            && w.write_all(&chunk[..n]).await.is_err()
                        {
                            return;
                        }
                    }
                    _ = cut_now.notified() => {
                        client_write = None;
                    }
                }
            }
        }
    };
    let mut open = shared.open.subscribe();
    let blackout = async {
        let _ = open.wait_for(|open| !*open).await;
        if cut.load(Ordering::SeqCst) {
            // The cut connection finishes on its own: its statement must
            // still reach the server.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(upstream, downstream) } => {}
        _ = blackout => {}
    }
}

/// The system behind a cutter that makes the database unreachable after
/// its cut, with short timeouts: requests give up after 3 s, the sweeper
/// settles what is left after 4 s.
async fn with_blackout(cut: Cut) -> (PgCutter, System) {
    let cutter = PgCutter::start(cut, true).await;
    let sys = System::start_routed(
        &[
            ("REQUEST_TIMEOUT_MS", "3000"),
            ("PENDING_TIMEOUT_MS", "4000"),
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "300"),
        ],
        |url| cutter.route(url),
    )
    .await;
    (cutter, sys)
}

async fn stored_status(sys: &System, id: &str) -> String {
    let pool = sys.order_db.pool().await;
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("the order is stored")
}

async fn reservation_state(sys: &System, id: &str) -> Option<String> {
    let pool = sys.inventory_db.pool().await;
    sqlx::query_scalar("SELECT state FROM reservations WHERE order_id = $1::uuid")
        .bind(id)
        .fetch_optional(&pool)
        .await
        .expect("read reservation")
}

async fn only_order_id(sys: &System) -> String {
    let pool = sys.order_db.pool().await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_one(&pool)
        .await
        .expect("one order stored");
    id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_whose_reply_is_lost_is_answered_from_the_stored_state() {
    let cutter = PgCutter::start(Cut::AfterCommit, false).await;
    let mut sys = System::start_routed(&[], |url| cutter.route(url)).await;
    let product = sys.product("Teapot", 10).await;
    let user = sys.user();

    let (status, body, _) = sys.order(&user, &product, 2, None).await;
    assert!(cutter.fired(), "the confirm's reply was cut");
    let id = only_order_id(&sys).await;
    assert_eq!(
        stored_status(&sys, &id).await,
        "CONFIRMED",
        "the confirm committed"
    );
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a committed confirm is a success: {body}"
    );
    assert_eq!(body["status"], "CONFIRMED");
    assert_eq!(body["id"], id.as_str());
    // The confirmed order keeps its units: nothing was compensated.
    assert_ne!(
        reservation_state(&sys, &id).await.as_deref(),
        Some("released")
    );
    assert_eq!(sys.stock(&product).await.0, 8);
    sys.event_for(&id, "order.confirmed").await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_that_never_ran_is_compensated() {
    let cutter = PgCutter::start(Cut::BeforeExecute, false).await;
    let sys = System::start_routed(&[], |url| cutter.route(url)).await;
    let product = sys.product("Kettle", 10).await;
    let user = sys.user();

    let (status, body, _) = sys.order(&user, &product, 2, None).await;
    assert!(
        cutter.fired(),
        "the connection was cut before the confirm ran"
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let id = only_order_id(&sys).await;
    assert_eq!(stored_status(&sys, &id).await, "FAILED");
    assert_eq!(
        reservation_state(&sys, &id).await.as_deref(),
        Some("released")
    );
    assert_eq!(sys.stock(&product).await, (10, 0), "the units came back");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_confirm_with_the_database_gone_is_left_to_the_stored_state() {
    let (cutter, sys) = with_blackout(Cut::AfterCommit).await;
    let product = sys.product("Sugar bowl", 10).await;
    let user = sys.user();

    // The confirm commits, its reply is lost, and the database cannot be
    // reached to read what happened: the order is not compensated.
    let (status, body, _) = sys.order(&user, &product, 2, None).await;
    assert!(cutter.fired());
    assert!(status.is_server_error(), "{status} {body}");
    let id = only_order_id(&sys).await;
    assert_eq!(stored_status(&sys, &id).await, "CONFIRMED");
    assert_eq!(sys.stock(&product).await.0, 8, "not released by the saga");

    // The database returns; the sweeper, deciding from the stored state
    // (CONFIRMED), never releases it, even past the pending timeout.
    cutter.restore();
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert_eq!(stored_status(&sys, &id).await, "CONFIRMED");
    assert_ne!(
        reservation_state(&sys, &id).await.as_deref(),
        Some("released")
    );
    assert_eq!(sys.stock(&product).await.0, 8);
    sys.stop().await;
}

/// The order's stock is reserved, then the database is gone before the
/// order is stored, and stays gone past the request: nothing is stored,
/// the units are held. Once the database is back and the reservation is
/// older than any saga (the pending timeout), the sweeper finds it held
/// with no order (`ListHeld`), stores the order FAILED under its id and
/// releases the units. The stored row is the fence: a confirm of that
/// order arriving even later cannot be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_order_was_never_stored_is_fenced_and_released() {
    let (cutter, sys) = with_blackout(Cut::BeforeExecute).await;
    let product = sys.product("Milk jug", 10).await;
    let user = sys.user();

    let (status, body, _) = sys.order(&user, &product, 2, None).await;
    assert!(
        cutter.fired(),
        "the connection was cut before the order was stored"
    );
    assert!(status.is_server_error(), "{status} {body}");
    let pool = sys.order_db.pool().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .expect("count orders");
    assert_eq!(stored, 0, "nothing could be stored");
    assert_eq!(sys.stock(&product).await, (8, 2), "the units are held");
    let held: uuid::Uuid =
        sqlx::query_scalar("SELECT order_id FROM reservations WHERE state = 'reserved'")
            .fetch_one(&sys.inventory_db.pool().await)
            .await
            .expect("one held reservation");

    cutter.restore();
    let mut settled = (8, 2);
    for _ in 0..100 {
        settled = sys.stock(&product).await;
        if settled == (10, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        settled,
        (10, 0),
        "the units came back after the pending timeout"
    );
    let id = held.to_string();
    assert_eq!(
        reservation_state(&sys, &id).await.as_deref(),
        Some("released")
    );
    assert_eq!(stored_status(&sys, &id).await, "FAILED");
    let (user_id, reason): (uuid::Uuid, String) =
        sqlx::query_as("SELECT user_id, failure_reason FROM orders WHERE id = $1")
            .bind(held)
            .fetch_one(&pool)
            .await
            .expect("the fenced order");
    assert!(user_id.is_nil(), "only inventory's side of it was known");
    assert!(reason.contains("never stored"), "{reason}");

    // The fence: the confirm of that order, arriving now, cannot be stored.
    let late = sqlx::query(
        "INSERT INTO orders (id, user_id, product_id, product_name, quantity, unit_price_minor, \
           total_minor, currency, status, needs_commit) \
         VALUES ($1, $2, $3::uuid, 'Milk jug', 2, 250, 500, 'EUR', 'CONFIRMED', true)",
    )
    .bind(held)
    .bind(uuid::Uuid::now_v7())
    .bind(&product)
    .execute(&pool)
    .await;
    assert!(late.is_err(), "a late confirm conflicts with the fence");
    assert_eq!(stored_status(&sys, &id).await, "FAILED");
    sys.stop().await;
}
