//! One benchmark run: interleaved rounds over the targets, each round
//! starting every target fresh and running the same phases against it.
//!
//! Per target and round: start, warm up, then
//! 1. full handshakes (TLS targets): new connection per request;
//! 2. keep-alive requests at each configured concurrency;
//! 3. open-loop latency at a fixed rate;
//! 4. memory with N idle mTLS connections (TLS targets);
//!
//! with the server's CPU time and RSS sampled from `/proc` around each
//! phase. Connections are opened *before* the CPU sample of a keep-alive
//! or latency phase, so those phases contain no handshakes.

use core::time::Duration;

use crate::loadgen::{self, Counts, Endpoint, Latency, LoadError};
use crate::procfs::{self, ProcError, Usage};
use crate::targets::Kind;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Interleaved rounds (medians are taken over them).
    pub rounds: usize,
    /// Duration of each timed phase.
    pub phase: Duration,
    /// Concurrent clients in the handshake phase.
    pub handshake_concurrency: usize,
    /// Keep-alive phases: connections (one request in flight each).
    pub keepalive_concurrency: Vec<usize>,
    /// Offered load of the latency phase, requests per second.
    pub rate: u32,
    /// Connections the latency phase spreads its requests over.
    pub rate_connections: usize,
    /// Idle connection counts, ascending (connections are added up to each).
    pub idle: Vec<usize>,
    /// How many connections are opened at once in the idle phase.
    pub idle_parallel: usize,
    /// Targets, in round order.
    pub kinds: Vec<Kind>,
    /// Whether the handshake phase runs.
    pub handshakes: bool,
    /// Whether the fixed-rate latency phase runs.
    pub latency: bool,
}

impl Plan {
    /// The full benchmark.
    pub fn full() -> Self {
        Self {
            rounds: 3,
            phase: Duration::from_secs(5),
            handshake_concurrency: 16,
            keepalive_concurrency: vec![16, 64],
            rate: 1000,
            rate_connections: 32,
            idle: vec![1_000, 10_000],
            idle_parallel: 32,
            kinds: Kind::ALL.to_vec(),
            handshakes: true,
            latency: true,
        }
    }

    /// Whether this plan runs every phase of the full benchmark.
    pub fn all_phases(&self) -> bool {
        self.handshakes
            && self.latency
            && !self.keepalive_concurrency.is_empty()
            && !self.idle.is_empty()
    }

    /// A smoke check: short phases, fewer idle connections, one round.
    pub fn quick() -> Self {
        Self {
            rounds: 1,
            phase: Duration::from_secs(1),
            idle: vec![100, 500],
            rate: 300,
            ..Self::full()
        }
    }
}

/// A closed-loop phase's outcome with the server CPU it cost.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Requests and errors.
    pub counts: Counts,
    /// Server CPU seconds during the phase.
    pub cpu_s: f64,
    /// Wall-clock seconds of the phase.
    pub wall_s: f64,
}

impl Phase {
    /// Successful requests per server CPU-second.
    pub fn per_cpu_s(&self) -> Option<f64> {
        (self.cpu_s > 0.0 && self.counts.ok > 0).then(|| self.counts.ok as f64 / self.cpu_s)
    }

    /// Server CPU milliseconds per successful request.
    pub fn cpu_ms_per(&self) -> Option<f64> {
        (self.counts.ok > 0).then(|| self.cpu_s * 1000.0 / self.counts.ok as f64)
    }

    /// Successful requests per wall-clock second (bounded by the load
    /// generator on a shared machine; informative only).
    pub fn per_wall_s(&self) -> Option<f64> {
        (self.wall_s > 0.0).then(|| self.counts.ok as f64 / self.wall_s)
    }
}

/// Below this many new server descriptors per opened connection the
/// server has closed some idle connections (a few may legitimately be
/// missing while the last ones are still being accepted).
pub const MIN_FDS_PER_CONN: f64 = 0.98;

/// Memory with idle connections held.
#[derive(Debug, Clone, Default)]
pub struct Idle {
    /// Server RSS and fds just before opening them.
    pub baseline: Option<Usage>,
    /// `(connections held, server usage)` per configured count.
    pub points: Vec<(usize, Usage)>,
    /// Seconds it took to open the connections added for each point (a
    /// server with an idle timeout shorter than this closes the first
    /// ones before the sample).
    pub open_secs: Vec<f64>,
    /// Why the phase stopped early, if it did.
    pub error: Option<String>,
}

impl Idle {
    /// Bytes of server RSS per held connection at `n`; `None` when the
    /// server had closed some of them by the time of the sample (its
    /// memory would then be spread over connections it no longer holds).
    pub fn bytes_per_conn(&self, n: usize) -> Option<f64> {
        let base = self.baseline?;
        let (_, u) = self.points.iter().find(|(m, _)| *m == n)?;
        if !self.all_held(n) {
            return None;
        }
        (n > 0).then(|| (u.rss_bytes as f64 - base.rss_bytes as f64) / n as f64)
    }

    /// Whether the server still held (at least 98 % of) the `n` connections
    /// when it was sampled, judged by its open file descriptors.
    pub fn all_held(&self, n: usize) -> bool {
        self.fds_per_conn(n).is_some_and(|f| f >= MIN_FDS_PER_CONN)
    }

    /// Server file descriptors added per held connection at `n` (≥ 1 if
    /// the server really holds them; 2 if it keeps an upstream connection
    /// for each).
    pub fn fds_per_conn(&self, n: usize) -> Option<f64> {
        let base = self.baseline?;
        let (_, u) = self.points.iter().find(|(m, _)| *m == n)?;
        (n > 0).then(|| (u.fds as f64 - base.fds as f64) / n as f64)
    }
}

/// Everything measured for one target in one round.
#[derive(Debug, Clone)]
pub struct TargetRound {
    /// The target.
    pub kind: Kind,
    /// Round number, from 0.
    pub round: usize,
    /// Why the target could not be measured at all.
    pub error: Option<String>,
    /// RSS right after start-up and warm-up.
    pub rss_fresh: Option<u64>,
    /// Full handshakes (TLS targets only).
    pub handshakes: Option<Phase>,
    /// Full handshakes, each presenting a client certificate the server
    /// has not seen recently ([`crate::certs::FRESH_CLIENTS`] in turn).
    pub handshakes_fresh: Option<Phase>,
    /// Keep-alive phases by concurrency.
    pub keepalive: Vec<(usize, Phase)>,
    /// Fixed-rate latency and the server CPU it cost.
    pub latency: Option<(Latency, f64)>,
    /// Idle-connection memory (TLS targets only).
    pub idle: Option<Idle>,
}

impl TargetRound {
    /// An empty result for `kind` in `round`.
    pub fn new(kind: Kind, round: usize) -> Self {
        Self {
            kind,
            round,
            error: None,
            rss_fresh: None,
            handshakes: None,
            handshakes_fresh: None,
            keepalive: Vec::new(),
            latency: None,
            idle: None,
        }
    }

    /// The keep-alive phase at concurrency `c`.
    pub fn keepalive_at(&self, c: usize) -> Option<&Phase> {
        self.keepalive.iter().find(|(n, _)| *n == c).map(|(_, p)| p)
    }
}

/// Why a phase could not even be set up.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Reading the server's `/proc` entries failed (it died?).
    #[error("reading the server's /proc: {0}")]
    Proc(#[from] ProcError),
    /// Opening connections failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The target never answered a request correctly.
    #[error("no correct answer within {secs} s (last error: {last})")]
    NotServing {
        /// Seconds tried.
        secs: u64,
        /// The last error.
        last: String,
    },
}

/// Waits until the target answers correctly (a listening socket is not
/// enough: a gateway may still be installing its certificate), then
/// sends a few hundred requests so lazy initialisation is not measured.
pub async fn warm_up(ep: &Endpoint) -> Result<(), RunError> {
    let secs = 15;
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut conn = loop {
        let attempt = async {
            let mut c = loadgen::connect(ep).await?;
            c.request(&ep.host).await?;
            Ok::<_, LoadError>(c)
        }
        .await;
        match attempt {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() >= until => {
                return Err(RunError::NotServing {
                    secs,
                    last: e.to_string(),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    for _ in 0..200 {
        conn.request(&ep.host).await?;
    }
    for _ in 0..20 {
        loadgen::connect(ep).await?.request(&ep.host).await?;
    }
    Ok(())
}

async fn timed<F, T>(pid: u32, f: F) -> Result<(T, f64, f64), RunError>
where
    F: core::future::Future<Output = T>,
{
    let before = procfs::sample_tree(pid)?;
    let start = tokio::time::Instant::now();
    let out = f.await;
    let wall = start.elapsed().as_secs_f64();
    let after = procfs::sample_tree(pid)?;
    Ok((out, after.cpu_seconds - before.cpu_seconds, wall))
}

/// How long to let a server settle before sampling its memory.
const SETTLE: Duration = Duration::from_millis(700);

/// Runs every phase of `plan` against the target `pid` listening at `ep`,
/// filling `out`. Stops at the first phase that cannot be set up.
pub async fn measure(
    plan: &Plan,
    pid: u32,
    ep: &Endpoint,
    out: &mut TargetRound,
) -> Result<(), RunError> {
    let tls = ep.tls.is_some();
    warm_up(ep).await?;
    out.rss_fresh = Some(procfs::sample_tree(pid)?.rss_bytes);

    if tls && plan.handshakes {
        for fresh in [false, true] {
            let (counts, cpu_s, wall_s) = timed(
                pid,
                loadgen::handshakes(ep, plan.handshake_concurrency, plan.phase, fresh),
            )
            .await?;
            let phase = Some(Phase {
                counts,
                cpu_s,
                wall_s,
            });
            if fresh {
                out.handshakes_fresh = phase;
            } else {
                out.handshakes = phase;
            }
        }
    }

    for &c in &plan.keepalive_concurrency {
        let conns = loadgen::open_connections(ep, c, c).await?;
        let ((counts, conns), cpu_s, wall_s) =
            timed(pid, loadgen::keepalive(conns, &ep.host, plan.phase)).await?;
        drop(conns);
        out.keepalive.push((
            c,
            Phase {
                counts,
                cpu_s,
                wall_s,
            },
        ));
    }

    if plan.latency {
        let conns =
            loadgen::open_connections(ep, plan.rate_connections, plan.rate_connections).await?;
        let (lat, cpu_s, _) = timed(
            pid,
            loadgen::fixed_rate(conns, &ep.host, plan.rate, plan.phase),
        )
        .await?;
        out.latency = Some((lat, cpu_s));
    }

    if tls && !plan.idle.is_empty() {
        let mut idle = Idle::default();
        tokio::time::sleep(SETTLE).await;
        idle.baseline = Some(procfs::sample_tree(pid)?);
        let mut held = Vec::new();
        for &n in &plan.idle {
            let more = n.saturating_sub(held.len());
            let opening = tokio::time::Instant::now();
            match loadgen::open_connections(ep, more, plan.idle_parallel).await {
                Ok(c) => held.extend(c),
                Err(e) => {
                    idle.error = Some(format!(
                        "opening connections {}..{n} (with {} held): {e}",
                        held.len() + 1,
                        held.len()
                    ));
                    break;
                }
            }
            idle.open_secs.push(opening.elapsed().as_secs_f64());
            tokio::time::sleep(SETTLE).await;
            idle.points.push((n, procfs::sample_tree(pid)?));
        }
        drop(held);
        out.idle = Some(idle);
    }
    Ok(())
}
