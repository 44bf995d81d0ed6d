//! Live and recent connections: the data plane's access log as JSON and
//! as a server-sent-event stream.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/api/v1/connections?limit=` | open connections and the recent access log, newest first |
//! | GET | `/api/v1/connections/stream` | SSE: `entry` events (one access-log entry each) and `stats` events |
//!
//! The stream reads the data plane's bounded in-memory access log every
//! 500 ms and sends the entries added since the last look; it never holds
//! a lock of the data plane across an await. Streams end when the gateway
//! stops being ready (shutdown), so a browser tab cannot hold the drain
//! open, and at most [`MAX_STREAMS`] run at once.

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

use super::UiShared;
use crate::admin::{AdminState, error_response};
use crate::dataplane::AccessEntry;

/// Server-sent-event streams allowed at once.
pub(crate) const MAX_STREAMS: usize = 32;
/// How often a stream looks for new entries.
const POLL: Duration = Duration::from_millis(500);
/// Entries sent when a stream starts, so the view is not empty.
const BACKLOG: usize = 100;
/// A `stats` event is sent every this many polls.
const STATS_EVERY: u32 = 4;

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

/// The entries of `cur` that were not in `prev`. The log is a sliding
/// window (appended at the end, trimmed at the front), so the new entries
/// follow the longest suffix of `prev` that starts `cur`.
fn new_entries<'a>(prev: &[AccessEntry], cur: &'a [AccessEntry]) -> &'a [AccessEntry] {
    for start in 0..prev.len() {
        let Some(tail) = prev.get(start..) else {
            break;
        };
        if let Some(head) = cur.get(..tail.len())
            && head == tail
        {
            return cur.get(tail.len()..).unwrap_or_default();
        }
    }
    cur
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
    prev: Vec<AccessEntry>,
    queue: VecDeque<Event>,
    polls: u32,
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

/// `GET /api/v1/connections/stream`.
pub(crate) async fn stream(
    State(state): State<Arc<AdminState>>,
    Extension(ui): Extension<Arc<UiShared>>,
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
    let prev = state
        .control
        .data_plane()
        .map(|d| d.recent_access_log())
        .unwrap_or_default();
    let mut queue: VecDeque<Event> = prev
        .iter()
        .skip(prev.len().saturating_sub(BACKLOG))
        .filter_map(entry_event)
        .collect();
    queue.extend(stats_event(&state));
    let init = StreamState {
        state,
        prev,
        queue,
        polls: 0,
        _slot: slot,
    };
    let events = stream::unfold(init, |mut s| async move {
        loop {
            if let Some(ev) = s.queue.pop_front() {
                return Some((Ok::<Event, Infallible>(ev), s));
            }
            tokio::time::sleep(POLL).await;
            if !s.state.ready.load(Ordering::Acquire) {
                // Shutting down: end the stream so the drain is not held.
                return None;
            }
            let cur = s
                .state
                .control
                .data_plane()
                .map(|d| d.recent_access_log())
                .unwrap_or_default();
            s.queue
                .extend(new_entries(&s.prev, &cur).iter().filter_map(entry_event));
            s.prev = cur;
            s.polls = s.polls.wrapping_add(1);
            if s.polls % STATS_EVERY == 0 {
                s.queue.extend(stats_event(&s.state));
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> AccessEntry {
        AccessEntry {
            time: format!("2025-01-01T00:00:{n:02}Z"),
            kind: "http",
            source: format!("127.0.0.1:{}", 40000 + n),
            principal: "-".into(),
            security: "none",
            transport: "plaintext",
            destination: "details:9080".into(),
            mode: "PERMISSIVE",
            decision: "allow",
            reason: "allowed".into(),
            policy: "-".into(),
            method: None,
            path: None,
            status: 200,
            bytes_received: 0,
            bytes_sent: 0,
            duration_ms: 1.0,
            generation: 1,
        }
    }

    #[test]
    fn appended_entries_are_new() {
        let prev: Vec<_> = (0..3).map(entry).collect();
        let cur: Vec<_> = (0..5).map(entry).collect();
        assert_eq!(new_entries(&prev, &cur), &cur[3..]);
    }

    #[test]
    fn entries_after_a_trimmed_front_are_new() {
        let prev: Vec<_> = (0..4).map(entry).collect();
        let cur: Vec<_> = (2..7).map(entry).collect();
        assert_eq!(new_entries(&prev, &cur), &cur[2..]);
    }

    #[test]
    fn everything_is_new_when_nothing_overlaps() {
        let prev: Vec<_> = (0..4).map(entry).collect();
        let cur: Vec<_> = (10..12).map(entry).collect();
        assert_eq!(new_entries(&prev, &cur), &cur[..]);
        assert_eq!(new_entries(&[], &cur), &cur[..]);
        assert!(new_entries(&cur, &cur).is_empty());
    }
}
