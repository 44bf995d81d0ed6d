//! Live and recent connections: the data plane's access log as JSON and
//! as a server-sent-event stream.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/api/v1/connections?limit=` | open connections and the recent access log, newest first |
//! | GET | `/api/v1/connections/stream?backlog=` | SSE: `entry` (one access-log entry), `stats` and `lagged` events |
//!
//! The stream first replays recent entries (`?backlog=N`), then forwards
//! the data plane's live access-log feed (a bounded broadcast channel: a
//! slow browser skips entries and gets a `lagged` event; it never slows
//! the data plane). Streams end when the gateway stops being ready
//! (shutdown), so a browser tab cannot hold the drain open, and at most
//! [`MAX_STREAMS`] run at once.

use core::convert::Infallible;
use core::sync::atomic::Ordering;
use core::time::Duration;
use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::UiShared;
use crate::admin::{AdminState, error_response};
use crate::dataplane::AccessEntry;

/// Server-sent-event streams allowed at once.
pub(crate) const MAX_STREAMS: usize = 32;
/// How often a stream sends the open-connection count (and notices a
/// shutdown).
const STATS_INTERVAL: Duration = Duration::from_secs(2);
/// Entries sent when a stream starts, so the view is not empty.
const BACKLOG: usize = 100;

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
}

/// Answer to `GET /api/v1/connections`.
#[derive(Debug, Serialize)]
struct ConnectionList {
    /// Whether the data plane is running (false: nothing is recorded).
    recording: bool,
    /// Inbound connections open now.
    active: usize,
    /// Access-log entries, newest first.
    entries: Vec<AccessEntry>,
}

/// Body of a `stats` event.
#[derive(Debug, Serialize)]
struct Stats {
    active: usize,
}

/// `GET /api/v1/connections`.
pub(crate) async fn list(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(200).min(1000);
    let dp = state.control.data_plane();
    let mut entries = dp.map(|d| d.recent_access_log()).unwrap_or_default();
    entries.reverse();
    entries.truncate(limit);
    Json(ConnectionList {
        recording: dp.is_some(),
        active: dp.map_or(0, |d| d.active_connections()),
        entries,
    })
    .into_response()
}

/// Releases a stream slot when the stream is dropped.
struct Slot(Arc<UiShared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

struct StreamState {
    state: Arc<AdminState>,
    live: Option<broadcast::Receiver<AccessEntry>>,
    queue: VecDeque<Event>,
    stats: tokio::time::Interval,
    _slot: Slot,
}

fn entry_event(e: &AccessEntry) -> Option<Event> {
    Event::default().event("entry").json_data(e).ok()
}

fn stats_event(state: &AdminState) -> Option<Event> {
    let active = state
        .control
        .data_plane()
        .map_or(0, |d| d.active_connections());
    Event::default()
        .event("stats")
        .json_data(Stats { active })
        .ok()
}

/// Body of a `lagged` event: entries this stream skipped because the
/// browser read too slowly (the feed never waits for a slow reader).
#[derive(Debug, Serialize)]
struct Lagged {
    missed: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    /// Recent entries to send first (default 100, at most 512); the UI
    /// asks for 0 after loading the list itself.
    backlog: Option<usize>,
}

/// `GET /api/v1/connections/stream`.
pub(crate) async fn stream(
    State(state): State<Arc<AdminState>>,
    Extension(ui): Extension<Arc<UiShared>>,
    Query(q): Query<StreamQuery>,
) -> Response {
    let taken = ui
        .streams
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_STREAMS).then_some(n + 1)
        });
    if taken.is_err() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live connection streams open; close another tab",
        );
    }
    let slot = Slot(ui.clone());
    let dp = state.control.data_plane();
    // Subscribe before reading the backlog: an entry recorded in between
    // may then be sent twice, but none is lost.
    let live = dp.map(|d| d.subscribe_access_log());
    let backlog = q.backlog.unwrap_or(BACKLOG).min(512);
    let recent = dp.map(|d| d.recent_access_log()).unwrap_or_default();
    let mut queue: VecDeque<Event> = recent
        .iter()
        .skip(recent.len().saturating_sub(backlog))
        .filter_map(entry_event)
        .collect();
    queue.extend(stats_event(&state));
    let mut stats = tokio::time::interval(STATS_INTERVAL);
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let init = StreamState {
        state,
        live,
        queue,
        stats,
        _slot: slot,
    };
    let events = stream::unfold(init, |mut s| async move {
        loop {
            if let Some(ev) = s.queue.pop_front() {
                return Some((Ok::<Event, Infallible>(ev), s));
            }
            let received = match s.live.as_mut() {
                Some(rx) => tokio::select! {
                    r = rx.recv() => Some(r),
                    _ = s.stats.tick() => None,
                },
                None => {
                    s.stats.tick().await;
                    None
                }
            };
            match received {
                Some(Ok(entry)) => s.queue.extend(entry_event(&entry)),
                Some(Err(broadcast::error::RecvError::Lagged(missed))) => s.queue.extend(
                    Event::default()
                        .event("lagged")
                        .json_data(Lagged { missed })
                        .ok(),
                ),
                // The data plane is gone: nothing more will come.
                Some(Err(broadcast::error::RecvError::Closed)) => return None,
                None => {
                    if !s.state.ready.load(Ordering::Acquire) {
                        // Shutting down: end the stream so the drain is
                        // not held open by a browser tab.
                        return None;
                    }
                    s.queue.extend(stats_event(&s.state));
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
