//! HTTP handlers: translate tokens and paths to service calls and back.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Serialize;
use stockmesh_platform::auth::{self, Caller, Verifier};
use stockmesh_platform::error::{ErrorBody, ErrorKind};
use stockmesh_platform::extract::{ApiPath, ApiQuery, Paging};
use stockmesh_platform::{ApiError, Shutdown};
use tokio::sync::broadcast::error::RecvError;
use utoipa::OpenApi;
use uuid::Uuid;

use crate::domain::{NotificationKind, NotificationView};
use crate::live::{LiveEvent, LiveHub, StreamRefused, Subscription};
use crate::service::NotificationService;

/// Most notifications replayed to a reconnecting stream; a browser that
/// missed more is told to resync (fetch the list).
const REPLAY_LIMIT: i64 = 100;

/// How long a browser waits before reconnecting a closed stream (SSE `retry`).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Comment sent on an idle stream so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct AppState {
    pub service: NotificationService,
    pub verifier: Verifier,
    pub live: LiveHub,
    pub shutdown: Shutdown,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationPage {
    pub items: Vec<NotificationView>,
    pub total: i64,
    /// How many of all the caller's notifications are unread.
    pub unread: i64,
    pub limit: i64,
    pub offset: i64,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/notifications", get(list))
        .route("/api/notifications/{id}/read", post(mark_read))
        .route("/api/notifications/stream", get(stream))
        .route(
            "/api/notifications/openapi.json",
            stockmesh_platform::openapi::route::<ApiDoc, _>(),
        )
        .with_state(state)
}

#[utoipa::path(get, path = "/api/notifications", tag = "notifications", params(Paging),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The caller's notifications, newest first", body = NotificationPage),
        (status = 400, description = "Bad paging parameters", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<NotificationPage>, ApiError> {
    let (limit, offset) = paging.bounds()?;
    let (items, total) = state.service.list(caller, limit, offset).await?;
    let unread = state.service.unread(caller).await?;
    Ok(Json(NotificationPage {
        items: items.into_iter().map(Into::into).collect(),
        total,
        unread,
        limit,
        offset,
    }))
}

#[utoipa::path(post, path = "/api/notifications/{id}/read", tag = "notifications",
    params(("id" = Uuid, Path, description = "Notification id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The notification, with `read_at` set (kept from the first time)", body = NotificationView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such notification, or not yours", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable", body = ErrorBody),
    ))]
async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<NotificationView>, ApiError> {
    Ok(Json(state.service.mark_read(caller, id).await?.into()))
}

#[utoipa::path(get, path = "/api/notifications/stream", tag = "notifications",
    params(("Last-Event-ID" = Option<Uuid>, Header, description = "Id of the last notification received: the ones stored after it are sent first")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "A `text/event-stream` of the caller's new notifications: event `ready` once connected, `notification` (data: a NotificationView, id: its id) for each one stored, `resync` when some may have been missed (fetch the list again), `expired` when the token expires (refresh it and reconnect). The stream also ends when this replica shuts down; browsers reconnect with `Last-Event-ID`.", content_type = "text/event-stream"),
        (status = 400, description = "Malformed Last-Event-ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 429, description = "Too many streams of this user on this replica", body = ErrorBody),
        (status = 503, description = "Too many streams on this replica, or the database is unavailable", body = ErrorBody),
    ))]
async fn stream(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = auth::token_from_headers(&headers)
        .ok_or_else(|| ApiError::new(ErrorKind::Unauthenticated, "authentication required"))?;
    let claims = state.verifier.verify(&token)?;
    let caller = Caller {
        id: claims.sub,
        role: claims.role,
    };
    let last_seen = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| Uuid::parse_str(text.trim()).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::BadRequest,
                        "Last-Event-ID must be a notification id",
                    )
                })?,
        ),
    };
    // Subscribe before reading what was missed, so nothing stored in
    // between falls through; a notification in both is sent once.
    let subscription = state
        .live
        .subscribe(caller.id)
        .map_err(|refused| match refused {
            StreamRefused::UserFull => ApiError::new(
                ErrorKind::RateLimited,
                "too many open notification streams for this user",
            )
            .with_retry_after(Duration::from_secs(5)),
            StreamRefused::ReplicaFull => {
                ApiError::new(ErrorKind::Overloaded, "too many open notification streams")
                    .with_retry_after(Duration::from_secs(1))
            }
        })?;
    let mut missed = Vec::new();
    let mut resync_first = false;
    if let Some(after) = last_seen {
        missed = state
            .service
            .missed_since(caller, after, REPLAY_LIMIT + 1)
            .await?;
        if missed.len() as i64 > REPLAY_LIMIT {
            missed.clear();
            resync_first = true;
        }
    }
    let expires_in = Duration::from_secs(
        u64::try_from(claims.exp - chrono::Utc::now().timestamp()).unwrap_or(0),
    );
    let events = live_events(
        subscription,
        missed.into_iter().map(NotificationView::from).collect(),
        resync_first,
        expires_in,
        state.shutdown.clone(),
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Proxies (nginx, ingress-nginx) must pass events on at once.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    Ok(response)
}

fn notification_event(view: &NotificationView) -> Event {
    Event::default()
        .event("notification")
        .id(view.id.to_string())
        .json_data(view)
        .unwrap_or_else(|_| Event::default().event("resync").data("{}"))
}

/// The events of one stream: `ready`, what was missed, then live events,
/// until the token expires, the client leaves or this replica drains.
fn live_events(
    mut subscription: Subscription,
    missed: Vec<NotificationView>,
    resync_first: bool,
    expires_in: Duration,
    shutdown: Shutdown,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        let mut phase = shutdown.watch();
        let draining = async move {
            let _ = phase
                .wait_for(|p| !matches!(p, stockmesh_platform::shutdown::Phase::Serving))
                .await;
        };
        tokio::pin!(draining);
        let expiry = tokio::time::sleep(expires_in);
        tokio::pin!(expiry);
        let ready = Event::default()
            .event("ready")
            .retry(RECONNECT_AFTER)
            .data("{}");
        if sender.send(ready).await.is_err() {
            return;
        }
        if resync_first
            && sender
                .send(Event::default().event("resync").data("{}"))
                .await
                .is_err()
        {
            return;
        }
        let mut sent = std::collections::HashSet::new();
        for view in &missed {
            sent.insert(view.id);
            if sender.send(notification_event(view)).await.is_err() {
                return;
            }
        }
        loop {
            let event = tokio::select! {
                _ = sender.closed() => return,
                _ = &mut draining => return,
                _ = &mut expiry => {
                    let _ = sender.send(Event::default().event("expired").data("{}")).await;
                    return;
                }
                received = subscription.events.recv() => match received {
                    Ok(LiveEvent::Notification(view)) => {
                        if sent.remove(&view.id) {
                            continue;
                        }
                        notification_event(&view)
                    }
                    Ok(LiveEvent::Resync) | Err(RecvError::Lagged(_)) => {
                        Event::default().event("resync").data("{}")
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            if sender.send(event).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver).map(Ok)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "stockmesh notification service", description = "Notifications about the caller's orders, made from order events."),
    paths(list, mark_read, stream),
    components(schemas(ErrorBody, NotificationView, NotificationPage, NotificationKind)),
    tags((name = "notifications", description = "The caller's notifications"))
)]
pub struct ApiDoc;
