//! One JSON line per HTTP request or TCP connection.
//!
//! Each entry names the peer (source address, principal or `-`, whether it
//! was `mutual_tls`), the destination service and port, the effective mode,
//! the decision with its reason and deciding policy, the status, the bytes
//! and the duration. Lines go to a sink (stdout, a file or nowhere) and the
//! most recent entries are also kept in memory for the admin UI's live
//! view, bounded so a flood of connections cannot grow memory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// How many recent entries are kept for the admin UI.
pub(crate) const RECENT_CAPACITY: usize = 512;

/// One access-log line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct AccessEntry {
    /// RFC 3339 UTC time at which the request/connection ended.
    pub(crate) time: String,
    /// `http` (one request), `tcp` (one proxied connection) or
    /// `connection` (a connection refused before any request).
    pub(crate) kind: &'static str,
    /// `ip:port` of the client.
    pub(crate) source: String,
    /// Istio principal of a verified mTLS peer, `-` otherwise.
    pub(crate) principal: String,
    /// `mutual_tls` or `none` (Istio's `connection_security_policy`).
    pub(crate) security: &'static str,
    /// How the bytes arrived: `plaintext`, `tls`, `mtls`, `passthrough`.
    pub(crate) transport: &'static str,
    /// `host:port` of the destination service, `-` when unknown.
    pub(crate) destination: String,
    /// Effective PeerAuthentication mode, `-` when no route was found.
    pub(crate) mode: &'static str,
    /// `allow` or `deny`.
    pub(crate) decision: &'static str,
    /// Why (e.g. `allowed_by_policy`, `plaintext_under_strict`,
    /// `certificate_required`, `rbac_denied`, `no_healthy_upstream`).
    pub(crate) reason: String,
    /// The deciding policy (`namespace/name`), `-` when none.
    pub(crate) policy: String,
    /// HTTP method and path, for HTTP entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<String>,
    /// HTTP status; `0` when the connection was closed without one.
    pub(crate) status: u16,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) duration_ms: f64,
    /// The configuration snapshot generation the decision used.
    pub(crate) generation: u64,
}

impl AccessEntry {
    /// An entry of `kind` with every other field empty or zero; holds no
    /// allocation.
    pub(crate) fn empty(kind: &'static str) -> Self {
        Self {
            time: String::new(),
            kind,
            source: String::new(),
            principal: String::new(),
            security: "none",
            transport: "",
            destination: String::new(),
            mode: "-",
            decision: "deny",
            reason: String::new(),
            policy: String::new(),
            method: None,
            path: None,
            status: 0,
            bytes_received: 0,
            bytes_sent: 0,
            duration_ms: 0.0,
            generation: 0,
        }
    }
}

/// Where access-log lines are written.
#[derive(Debug)]
pub(crate) enum AccessLogSink {
    /// Standard output (the container-friendly default).
    Stdout,
    /// An append-only file.
    File(Mutex<File>),
    /// Only the in-memory recent list.
    Discard,
}

impl AccessLogSink {
    /// Opens (creating or appending to) a log file.
    pub(crate) fn file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::File(Mutex::new(f)))
    }
}

/// The access log: a sink plus a bounded list of recent entries.
#[derive(Debug)]
pub(crate) struct AccessLog {
    sink: AccessLogSink,
    recent: Mutex<VecDeque<AccessEntry>>,
    /// Live feed for the admin UI; a slow subscriber lags (and is told so
    /// by the channel) instead of slowing requests down.
    live: tokio::sync::broadcast::Sender<AccessEntry>,
}

/// How many entries a live subscriber may fall behind before it lags.
const LIVE_CAPACITY: usize = 256;

impl AccessLog {
    pub(crate) fn new(sink: AccessLogSink) -> Self {
        Self {
            sink,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CAPACITY)),
            live: tokio::sync::broadcast::channel(LIVE_CAPACITY).0,
        }
    }

    /// Writes one entry. A failing sink is reported through tracing and
    /// never fails the request: logging must not become a denial of
    /// service.
    pub(crate) fn record(&self, entry: AccessEntry) {
        // Serialized only for a sink that writes it: with the log off this
        // runs per request for nothing.
        if !matches!(self.sink, AccessLogSink::Discard) {
            let line = match serde_json::to_string(&entry) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "access log entry not serializable");
                    return;
                }
            };
            let result = match &self.sink {
                AccessLogSink::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
                AccessLogSink::File(f) => match f.lock() {
                    Ok(mut f) => writeln!(f, "{line}"),
                    Err(_) => Ok(()),
                },
                AccessLogSink::Discard => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "access log write failed");
            }
        }
        // No subscriber is not an error; without one there is no need to
        // copy the entry.
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(entry.clone());
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() >= RECENT_CAPACITY {
                recent.pop_front();
            }
            recent.push_back(entry);
        }
    }

    /// Entries recorded from now on.
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<AccessEntry> {
        self.live.subscribe()
    }

    /// The most recent entries, oldest first.
    pub(crate) fn recent(&self) -> Vec<AccessEntry> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The current time, RFC 3339 in UTC.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".to_owned())
}
