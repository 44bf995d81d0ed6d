//! Prometheus metrics and the record of plaintext clients.
//!
//! Metrics are kept in small locked maps keyed by label values and rendered
//! in the Prometheus text exposition format by [`Metrics::render`]; the
//! label sets are bounded by configuration (destinations) and by fixed
//! reason vocabularies, never by peer-controlled strings, except the
//! plaintext-client record, which is capped per namespace.
//!
//! The plaintext-client record answers the question the admin UI asks
//! before switching a namespace to STRICT: "who is still talking plaintext
//! to it, and when were they last seen?"

use core::fmt::Write as _;
use core::net::IpAddr;
use core::sync::atomic::{AtomicI64, Ordering};
use core::time::Duration;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// Plaintext clients remembered per namespace; the oldest is forgotten
/// first when a namespace sees more distinct clients than this.
pub(crate) const MAX_PLAINTEXT_CLIENTS_PER_NAMESPACE: usize = 4096;

/// Histogram buckets in seconds (Envoy-like spread from 0.5 ms to 10 s).
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, c) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if secs <= *bound {
                *c += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str) {
        for (bound, c) in BUCKETS.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Labels of the connection and request counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DecisionLabels {
    pub(crate) destination: String,
    pub(crate) security: &'static str,
    pub(crate) decision: &'static str,
    pub(crate) reason: String,
}

/// Labels of one request, borrowed from its access-log entry: counting a
/// request allocates nothing once its label set has been seen.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLabels<'a> {
    pub(crate) destination: &'a str,
    pub(crate) security: &'static str,
    pub(crate) decision: &'static str,
    pub(crate) reason: &'a str,
}

/// One request counter under a destination (see [`Inner::requests`]).
#[derive(Debug)]
struct RequestCount {
    security: &'static str,
    decision: &'static str,
    reason: String,
    status: u16,
    count: u64,
}

/// When a plaintext client was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlaintextClient {
    pub(crate) address: IpAddr,
    pub(crate) first_seen: SystemTime,
    pub(crate) last_seen: SystemTime,
    /// Requests (HTTP) or connections (TCP) seen from it.
    pub(crate) count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    connections: HashMap<DecisionLabels, u64>,
    /// Request counters by destination, then by the other labels; looked
    /// up with borrowed strings, and the few label sets of a destination
    /// are scanned rather than hashed.
    requests: HashMap<String, Vec<RequestCount>>,
    handshake_failures: HashMap<&'static str, u64>,
    handshake_latency: Histogram,
    request_latency: Histogram,
    plaintext: HashMap<String, HashMap<IpAddr, PlaintextClient>>,
}

/// The data plane's metrics.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
    active_connections: AtomicI64,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> Option<R> {
        self.inner.lock().ok().map(|mut g| f(&mut g))
    }

    pub(crate) fn connection(&self, labels: DecisionLabels) {
        self.with(|m| *m.connections.entry(labels).or_default() += 1);
    }

    pub(crate) fn request(&self, labels: RequestLabels<'_>, status: u16, latency: Duration) {
        self.with(|m| {
            if !m.requests.contains_key(labels.destination) {
                m.requests.insert(labels.destination.to_owned(), Vec::new());
            }
            let Some(counts) = m.requests.get_mut(labels.destination) else {
                return;
            };
            match counts.iter_mut().find(|c| {
                c.status == status
                    && c.security == labels.security
                    && c.decision == labels.decision
                    && c.reason == labels.reason
            }) {
                Some(c) => c.count += 1,
                None => counts.push(RequestCount {
                    security: labels.security,
                    decision: labels.decision,
                    reason: labels.reason.to_owned(),
                    status,
                    count: 1,
                }),
            }
            m.request_latency.observe(latency);
        });
    }

    pub(crate) fn handshake_failure(&self, reason: &'static str) {
        self.with(|m| *m.handshake_failures.entry(reason).or_default() += 1);
    }

    pub(crate) fn handshake_done(&self, latency: Duration) {
        self.with(|m| m.handshake_latency.observe(latency));
    }

    pub(crate) fn connection_opened(&self) {
        self.active_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.active_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records a plaintext client of a namespace (admitted or not: a client
    /// refused under STRICT is exactly what the admin wants to see).
    pub(crate) fn plaintext_client(&self, namespace: &str, address: IpAddr, now: SystemTime) {
        self.with(|m| {
            let clients = m.plaintext.entry(namespace.to_owned()).or_default();
            if let Some(c) = clients.get_mut(&address) {
                c.last_seen = now;
                c.count += 1;
                return;
            }
            if clients.len() >= MAX_PLAINTEXT_CLIENTS_PER_NAMESPACE {
                let oldest = clients
                    .values()
                    .min_by_key(|c| c.last_seen)
                    .map(|c| c.address);
                if let Some(addr) = oldest {
                    clients.remove(&addr);
                }
            }
            clients.insert(
                address,
                PlaintextClient {
                    address,
                    first_seen: now,
                    last_seen: now,
                    count: 1,
                },
            );
        });
    }

    /// Plaintext clients per namespace, most recently seen first.
    pub(crate) fn plaintext_clients(&self) -> Vec<(String, Vec<PlaintextClient>)> {
        let mut out = self
            .with(|m| {
                m.plaintext
                    .iter()
                    .map(|(ns, clients)| {
                        let mut list: Vec<PlaintextClient> = clients.values().copied().collect();
                        list.sort_by_key(|c| core::cmp::Reverse(c.last_seen));
                        (ns.clone(), list)
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let active = self.active_connections.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP meshgate_active_connections Inbound connections currently open.\n# TYPE meshgate_active_connections gauge\nmeshgate_active_connections {active}"
        );
        self.with(|m| {
            out.push_str("# HELP meshgate_connections_total Inbound connections by destination, security, decision and reason.\n# TYPE meshgate_connections_total counter\n");
            let mut conns: Vec<_> = m.connections.iter().collect();
            conns.sort();
            for (l, v) in conns {
                let _ = writeln!(out, "meshgate_connections_total{{{}}} {v}", labels(l));
            }
            out.push_str("# HELP meshgate_requests_total HTTP requests by destination, security, decision, reason and status.\n# TYPE meshgate_requests_total counter\n");
            let mut reqs: Vec<_> = m
                .requests
                .iter()
                .flat_map(|(destination, counts)| {
                    counts.iter().map(move |c| {
                        (
                            DecisionLabels {
                                destination: destination.clone(),
                                security: c.security,
                                decision: c.decision,
                                reason: c.reason.clone(),
                            },
                            c.status,
                            c.count,
                        )
                    })
                })
                .collect();
            reqs.sort();
            for (l, status, v) in reqs {
                let _ = writeln!(
                    out,
                    "meshgate_requests_total{{{},status=\"{status}\"}} {v}",
                    labels(&l)
                );
            }
            out.push_str("# HELP meshgate_tls_handshake_failures_total Inbound TLS handshakes that failed, by reason.\n# TYPE meshgate_tls_handshake_failures_total counter\n");
            let mut hf: Vec<_> = m.handshake_failures.iter().collect();
            hf.sort();
            for (reason, v) in hf {
                let _ = writeln!(
                    out,
                    "meshgate_tls_handshake_failures_total{{reason=\"{}\"}} {v}",
                    escape(reason)
                );
            }
            out.push_str("# HELP meshgate_tls_handshake_seconds Inbound TLS handshake latency.\n# TYPE meshgate_tls_handshake_seconds histogram\n");
            m.handshake_latency
                .render(&mut out, "meshgate_tls_handshake_seconds");
            out.push_str("# HELP meshgate_request_seconds HTTP request latency (until response headers).\n# TYPE meshgate_request_seconds histogram\n");
            m.request_latency.render(&mut out, "meshgate_request_seconds");
            out.push_str("# HELP meshgate_plaintext_clients Distinct plaintext client addresses recently seen per destination namespace.\n# TYPE meshgate_plaintext_clients gauge\n");
            let mut ns: Vec<_> = m.plaintext.iter().collect();
            ns.sort_by(|a, b| a.0.cmp(b.0));
            for (ns, clients) in ns {
                let _ = writeln!(
                    out,
                    "meshgate_plaintext_clients{{namespace=\"{}\"}} {}",
                    escape(ns),
                    clients.len()
                );
            }
        });
        out
    }
}

fn labels(l: &DecisionLabels) -> String {
    format!(
        "destination=\"{}\",security=\"{}\",decision=\"{}\",reason=\"{}\"",
        escape(&l.destination),
        l.security,
        l.decision,
        escape(&l.reason)
    )
}

/// Escapes a label value per the text exposition format.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_plaintext_clients() {
        let m = Metrics::default();
        let l = DecisionLabels {
            destination: "details:9080".into(),
            security: "none",
            decision: "deny",
            reason: "plaintext_under_strict".into(),
        };
        m.connection(l.clone());
        m.connection(l.clone());
        m.request(
            RequestLabels {
                destination: &l.destination,
                security: l.security,
                decision: l.decision,
                reason: &l.reason,
            },
            403,
            Duration::from_millis(3),
        );
        m.request(
            RequestLabels {
                destination: "details:9080",
                security: "none",
                decision: "deny",
                reason: "plaintext_under_strict",
            },
            403,
            Duration::from_millis(3),
        );
        m.request(
            RequestLabels {
                destination: "details:9080",
                security: "none",
                decision: "deny",
                reason: "plaintext_under_strict",
            },
            503,
            Duration::from_millis(3),
        );
        m.handshake_failure("certificate_required");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        m.plaintext_client("bookinfo", "10.0.0.1".parse().expect("ip"), t);
        m.plaintext_client("bookinfo", "10.0.0.1".parse().expect("ip"), t);
        m.plaintext_client("bookinfo", "10.0.0.2".parse().expect("ip"), t);
        let text = m.render();
        assert!(text.contains("meshgate_connections_total{destination=\"details:9080\",security=\"none\",decision=\"deny\",reason=\"plaintext_under_strict\"} 2"), "{text}");
        assert!(text.contains("status=\"403\"} 2"), "{text}");
        assert!(text.contains("status=\"503\"} 1"), "{text}");
        assert!(
            text.contains(
                "meshgate_tls_handshake_failures_total{reason=\"certificate_required\"} 1"
            )
        );
        assert!(text.contains("meshgate_request_seconds_bucket{le=\"0.005\"} 3"));
        assert!(text.contains("meshgate_request_seconds_bucket{le=\"0.001\"} 0"));
        assert!(text.contains("meshgate_plaintext_clients{namespace=\"bookinfo\"} 2"));
        let clients = m.plaintext_clients();
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].1.iter().map(|c| c.count).sum::<u64>(), 3);
    }

    #[test]
    fn plaintext_record_is_bounded() {
        let m = Metrics::default();
        for i in 0..(MAX_PLAINTEXT_CLIENTS_PER_NAMESPACE as u32 + 10) {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(i));
            m.plaintext_client("ns", IpAddr::from(i.to_be_bytes()), t);
        }
        let clients = m.plaintext_clients();
        assert_eq!(clients[0].1.len(), MAX_PLAINTEXT_CLIENTS_PER_NAMESPACE);
        // The newest survived, the oldest were evicted.
        assert!(
            !clients[0]
                .1
                .iter()
                .any(|c| c.address == IpAddr::from(0u32.to_be_bytes()))
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
