//! The run's output: a markdown report (machine, versions, date, medians,
//! ratios against nginx with the issue's targets, every round's raw
//! numbers) and a hand-written SVG bar chart. Only numbers measured in
//! this run appear; a target or phase that failed shows "—" and its error.

use core::fmt::Write as _;

use crate::runner::{Plan, TargetRound};
use crate::stats::median;
use crate::targets::Kind;

/// Where and with what the run happened.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// `available_parallelism`.
    pub nproc: usize,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// UTC date and time of the run's start.
    pub date: String,
    /// /proc/loadavg (1, 5, 15 min) before the run.
    pub load_before: String,
    /// /proc/loadavg after the run.
    pub load_after: String,
    /// CPU seconds other processes used while the run went on, and the
    /// run's wall-clock seconds (from /proc/stat minus this process and
    /// its children).
    pub others_cpu: Option<(f64, f64)>,
    /// `(component, version)` pairs.
    pub versions: Vec<(String, String)>,
    /// The command line that produced the report.
    pub command: String,
}

/// Medians over the rounds of one target.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Full handshakes per server CPU-second.
    pub hs_per_cpu: Option<f64>,
    /// Server CPU ms per full handshake.
    pub hs_cpu_ms: Option<f64>,
    /// Handshakes per wall-clock second.
    pub hs_wall: Option<f64>,
    /// Full handshakes per server CPU-second, a new client certificate
    /// each time.
    pub hs_fresh_per_cpu: Option<f64>,
    /// Server CPU ms per full handshake, a new client certificate each time.
    pub hs_fresh_cpu_ms: Option<f64>,
    /// Keep-alive requests per server CPU-second, by concurrency.
    pub ka_per_cpu: Vec<(usize, Option<f64>)>,
    /// Keep-alive requests per wall-clock second, by concurrency.
    pub ka_wall: Vec<(usize, Option<f64>)>,
    /// Fixed-rate p50, ms.
    pub p50_ms: Option<f64>,
    /// Fixed-rate p99, ms.
    pub p99_ms: Option<f64>,
    /// RSS after start-up, MiB.
    pub rss_fresh_mib: Option<f64>,
    /// KiB per idle connection, by count.
    pub idle_kib: Vec<(usize, Option<f64>)>,
    /// Server fds per idle connection, by count.
    pub idle_fds: Vec<(usize, Option<f64>)>,
    /// Failed requests over all rounds and phases.
    pub errors: u64,
}

fn med<F: Fn(&TargetRound) -> Option<f64>>(rounds: &[&TargetRound], f: F) -> Option<f64> {
    let v: Vec<f64> = rounds.iter().filter_map(|r| f(r)).collect();
    median(&v)
}

/// Medians of `kind`'s rounds.
pub fn summarize(plan: &Plan, results: &[TargetRound], kind: Kind) -> Summary {
    let rounds: Vec<&TargetRound> = results.iter().filter(|r| r.kind == kind).collect();
    let mut errors = 0;
    for r in &rounds {
        errors += r.handshakes.as_ref().map_or(0, |p| p.counts.errors);
        errors += r.handshakes_fresh.as_ref().map_or(0, |p| p.counts.errors);
        errors += r
            .keepalive
            .iter()
            .map(|(_, p)| p.counts.errors)
            .sum::<u64>();
        errors += r.latency.as_ref().map_or(0, |(l, _)| l.errors);
    }
    Summary {
        hs_per_cpu: med(&rounds, |r| r.handshakes.as_ref()?.per_cpu_s()),
        hs_cpu_ms: med(&rounds, |r| r.handshakes.as_ref()?.cpu_ms_per()),
        hs_wall: med(&rounds, |r| r.handshakes.as_ref()?.per_wall_s()),
        hs_fresh_per_cpu: med(&rounds, |r| r.handshakes_fresh.as_ref()?.per_cpu_s()),
        hs_fresh_cpu_ms: med(&rounds, |r| r.handshakes_fresh.as_ref()?.cpu_ms_per()),
        ka_per_cpu: plan
            .keepalive_concurrency
            .iter()
            .map(|&c| (c, med(&rounds, |r| r.keepalive_at(c)?.per_cpu_s())))
            .collect(),
        ka_wall: plan
            .keepalive_concurrency
            .iter()
            .map(|&c| (c, med(&rounds, |r| r.keepalive_at(c)?.per_wall_s())))
            .collect(),
        p50_ms: med(&rounds, |r| {
            r.latency
                .as_ref()
                .filter(|(l, _)| l.ok > 0)
                .map(|(l, _)| l.p50_us as f64 / 1000.0)
        }),
        p99_ms: med(&rounds, |r| {
            r.latency
                .as_ref()
                .filter(|(l, _)| l.ok > 0)
                .map(|(l, _)| l.p99_us as f64 / 1000.0)
        }),
        rss_fresh_mib: med(&rounds, |r| Some(r.rss_fresh? as f64 / 1048576.0)),
        idle_kib: plan
            .idle
            .iter()
            .map(|&n| {
                (
                    n,
                    med(&rounds, |r| {
                        Some(r.idle.as_ref()?.bytes_per_conn(n)? / 1024.0)
                    }),
                )
            })
            .collect(),
        idle_fds: plan
            .idle
            .iter()
            .map(|&n| (n, med(&rounds, |r| r.idle.as_ref()?.fds_per_conn(n))))
            .collect(),
        errors,
    }
}

fn at(v: &[(usize, Option<f64>)], k: usize) -> Option<f64> {
    v.iter().find(|(n, _)| *n == k).and_then(|(_, x)| *x)
}

/// Formats with thousands separators and `decimals` places; "—" for none.
pub fn num(v: Option<f64>, decimals: usize) -> String {
    let Some(v) = v else {
        return "—".to_owned();
    };
    let s = format!("{v:.decimals$}");
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(i, f)| (i, f));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

fn count_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// One of the issue's targets, evaluated on this run's medians.
#[derive(Debug, Clone)]
pub struct Goal {
    /// What is compared.
    pub name: String,
    /// The target as written in the issue.
    pub target: &'static str,
    /// meshgate's value.
    pub meshgate: Option<f64>,
    /// nginx's value.
    pub nginx: Option<f64>,
    /// meshgate / nginx.
    pub ratio: Option<f64>,
    /// Met, missed, or unknown (a value is missing).
    pub met: Option<bool>,
}

/// The four targets of the issue: handshakes per server CPU-second ≥ 3×
/// nginx, keep-alive requests per server CPU-second ≥ 1.2× (at every
/// concurrency), p99 at equal load ≤ nginx, memory per idle connection
/// ≤ ½ (at every count).
pub fn goals(plan: &Plan, mesh: &Summary, nginx: &Summary) -> Vec<Goal> {
    let ratio = |m: Option<f64>, n: Option<f64>| match (m, n) {
        (Some(m), Some(n)) if n > 0.0 => Some(m / n),
        _ => None,
    };
    let mut out = Vec::new();
    let mut push = |name: String, target, m, n, pass: fn(f64) -> bool| {
        let r = ratio(m, n);
        out.push(Goal {
            name,
            target,
            meshgate: m,
            nginx: n,
            ratio: r,
            met: r.map(pass),
        });
    };
    push(
        "full mTLS handshakes per server CPU-second".to_owned(),
        "≥ 3×",
        mesh.hs_per_cpu,
        nginx.hs_per_cpu,
        |r| r >= 3.0,
    );
    push(
        "full mTLS handshakes per server CPU-second, a new client certificate each time".to_owned(),
        "≥ 3×",
        mesh.hs_fresh_per_cpu,
        nginx.hs_fresh_per_cpu,
        |r| r >= 3.0,
    );
    for &c in &plan.keepalive_concurrency {
        push(
            format!("keep-alive requests per server CPU-second, concurrency {c}"),
            "≥ 1.2×",
            at(&mesh.ka_per_cpu, c),
            at(&nginx.ka_per_cpu, c),
            |r| r >= 1.2,
        );
    }
    push(
        format!("p99 latency at {} req/s (ms)", plan.rate),
        "≤ 1×",
        mesh.p99_ms,
        nginx.p99_ms,
        |r| r <= 1.0,
    );
    for &n in &plan.idle {
        push(
            format!(
                "server memory per idle mTLS connection, {} held (KiB)",
                count_label(n)
            ),
            "≤ 0.5×",
            at(&mesh.idle_kib, n),
            at(&nginx.idle_kib, n),
            |r| r <= 0.5,
        );
    }
    out
}

/// A 1-minute load average at or above this at the start marks the run
/// as taken on a busy machine, when the CPU used by others is unknown.
const BUSY_LOAD: f64 = 1.5;

/// Other processes using at least this share of the machine's CPU during
/// the run mark it as taken on a busy machine. The load average is not
/// used when this is known: it counts the benchmark itself and whatever
/// ran just before (such as `bench/run`'s own build).
const BUSY_SHARE: f64 = 0.10;

fn others_share(cpu: f64, wall: f64, nproc: usize) -> f64 {
    if wall > 0.0 && nproc > 0 {
        cpu / (wall * nproc as f64)
    } else {
        0.0
    }
}

/// Whether the run's figures are marked as taken on a busy machine.
fn busy(machine: &Machine) -> bool {
    match machine.others_cpu {
        Some((cpu, wall)) => others_share(cpu, wall, machine.nproc) >= BUSY_SHARE,
        None => machine
            .load_before
            .split_whitespace()
            .next()
            .and_then(|l| l.parse::<f64>().ok())
            .is_some_and(|l| l >= BUSY_LOAD),
    }
}

/// The markdown report.
pub fn markdown(plan: &Plan, machine: &Machine, results: &[TargetRound]) -> String {
    let mut s = String::new();
    let kinds = &plan.kinds;
    let sums: Vec<(Kind, Summary)> = kinds
        .iter()
        .map(|&k| (k, summarize(plan, results, k)))
        .collect();
    let sum_of = |k: Kind| sums.iter().find(|(x, _)| *x == k).map(|(_, s)| s);

    let _ = writeln!(
        s,
        "# meshgate benchmarks: mTLS termination next to nginx and HAProxy\n"
    );
    let _ = writeln!(
        s,
        "Generated by `bench/run` (crate `meshgate-bench`); do not edit by hand. \
         Absolute numbers drift 5–25 % between runs on a shared machine: only the \
         ratios within this one interleaved run are meaningful.\n"
    );
    let mut caveats = Vec::new();
    let load1 = machine
        .load_before
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok());
    match (machine.others_cpu, load1) {
        (Some((cpu, wall)), _) if others_share(cpu, wall, machine.nproc) >= BUSY_SHARE => {
            caveats.push(format!(
                "other processes used {cpu:.0} CPU-s during the {wall:.0} s run ({:.0} % of the \
                 machine's {} CPU(s)) and competed with the servers, so even the ratios are \
                 unreliable",
                100.0 * others_share(cpu, wall, machine.nproc),
                machine.nproc
            ));
        }
        (None, Some(l)) if l >= BUSY_LOAD => {
            caveats.push(format!(
                "the machine was busy (1-minute load average {l:.2} at the start on {} CPU(s))",
                machine.nproc
            ));
        }
        _ => {}
    }
    if plan.rounds < 3 {
        caveats.push(format!(
            "only {} round(s): the issue asks for at least 3 interleaved rounds",
            plan.rounds
        ));
    }
    let full = Plan::full();
    if !plan.all_phases() {
        let ran: Vec<&str> = [
            (plan.handshakes, "handshake"),
            (!plan.keepalive_concurrency.is_empty(), "keepalive"),
            (plan.latency, "latency"),
            (!plan.idle.is_empty(), "idle"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        caveats.push(format!(
            "partial run: only the {} phase(s); the other measures are missing",
            ran.join(", ")
        ));
    }
    if plan.phase < full.phase || (!plan.idle.is_empty() && plan.idle != full.idle) {
        caveats.push(format!(
            "shortened run ({} s phases, idle {}), not the full plan ({} s, idle {})",
            plan.phase.as_secs_f64(),
            if plan.idle.is_empty() {
                "not run".to_owned()
            } else {
                plan.idle
                    .iter()
                    .map(|n| count_label(*n))
                    .collect::<Vec<_>>()
                    .join("/")
            },
            full.phase.as_secs_f64(),
            full.idle
                .iter()
                .map(|n| count_label(*n))
                .collect::<Vec<_>>()
                .join("/"),
        ));
    }
    if !caveats.is_empty() {
        let _ = writeln!(
            s,
            "> **Regenerate these numbers** with `bench/run` on a quiet machine before relying \
             on them: {}.\n",
            caveats.join("; ")
        );
    }
    let _ = writeln!(s, "![benchmark chart](benchmarks.svg)\n");
    let _ = writeln!(s, "## Run\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| date (UTC) | {} |", machine.date);
    let _ = writeln!(s, "| command | `{}` |", machine.command);
    let _ = writeln!(
        s,
        "| machine | {} CPU(s), {} |",
        machine.nproc, machine.cpu_model
    );
    let _ = writeln!(s, "| kernel | {} |", machine.kernel);
    let _ = writeln!(
        s,
        "| load average (1/5/15 min) | before {}, after {} |",
        machine.load_before, machine.load_after
    );
    if let Some((cpu, wall)) = machine.others_cpu {
        let _ = writeln!(
            s,
            "| CPU used by other processes during the run | {cpu:.1} CPU-s in {wall:.0} s ({:.1} % of the machine) |",
            100.0 * others_share(cpu, wall, machine.nproc)
        );
    }
    for (what, v) in &machine.versions {
        let _ = writeln!(s, "| {what} | {v} |");
    }
    let _ = writeln!(
        s,
        "| plan | {} interleaved round(s) of {}; {} s per phase; handshakes with {} concurrent clients; \
         keep-alive at concurrency {}; latency at {} req/s over {} connections; idle {} connections |",
        plan.rounds,
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(" → "),
        plan.phase.as_secs_f64(),
        plan.handshake_concurrency,
        plan.keepalive_concurrency
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" and "),
        plan.rate,
        plan.rate_connections,
        plan.idle
            .iter()
            .map(|n| count_label(*n))
            .collect::<Vec<_>>()
            .join(" and "),
    );

    if let (Some(m), Some(n)) = (sum_of(Kind::Meshgate), sum_of(Kind::Nginx)) {
        let _ = writeln!(s, "\n## The issue's targets (meshgate ÷ nginx, medians)\n");
        let _ = writeln!(s, "| measure | meshgate | nginx | ratio | target | met |");
        let _ = writeln!(s, "|---|---:|---:|---:|---|---|");
        for g in goals(plan, m, n) {
            let dec = if g.name.contains("latency") { 2 } else { 1 };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                g.name,
                num(g.meshgate, dec),
                num(g.nginx, dec),
                g.ratio.map_or("—".to_owned(), |r| format!("{r:.2}×")),
                g.target,
                match g.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "not measured",
                }
            );
        }
    }

    let _ = writeln!(s, "\n## Medians over the rounds\n");
    let mut header =
        "| target | handshakes / server CPU-s | server CPU ms / handshake | new client cert each: handshakes / server CPU-s | server CPU ms / handshake |".to_owned();
    let mut align = "|---|---:|---:|---:|---:|".to_owned();
    for &c in &plan.keepalive_concurrency {
        let _ = write!(header, " keep-alive req / server CPU-s (c={c}) |");
        align.push_str("---:|");
    }
    let _ = write!(
        header,
        " p50 / p99 ms at {} req/s | RSS after start (MiB) |",
        plan.rate
    );
    align.push_str("---:|---:|");
    for &n in &plan.idle {
        let _ = write!(header, " KiB / idle conn ({}) |", count_label(n));
        align.push_str("---:|");
    }
    header.push_str(" failed requests |");
    align.push_str("---:|");
    let _ = writeln!(s, "{header}\n{align}");
    for (k, sm) in &sums {
        let mut row = format!(
            "| {} | {} | {} | {} | {} |",
            k.name(),
            num(sm.hs_per_cpu, 0),
            num(sm.hs_cpu_ms, 3),
            num(sm.hs_fresh_per_cpu, 0),
            num(sm.hs_fresh_cpu_ms, 3)
        );
        for &c in &plan.keepalive_concurrency {
            let _ = write!(row, " {} |", num(at(&sm.ka_per_cpu, c), 0));
        }
        let _ = write!(
            row,
            " {} / {} | {} |",
            num(sm.p50_ms, 2),
            num(sm.p99_ms, 2),
            num(sm.rss_fresh_mib, 1)
        );
        for &n in &plan.idle {
            let _ = write!(row, " {} |", num(at(&sm.idle_kib, n), 1));
        }
        let _ = write!(row, " {} |", sm.errors);
        let _ = writeln!(s, "{row}");
    }
    let _ = writeln!(
        s,
        "\n`direct` is the plaintext upstream without a proxy (its own CPU and memory): the \
         floor every proxy adds to. It speaks no TLS, so it has no handshake or idle-mTLS figures."
    );

    let _ = writeln!(s, "\n## Every round\n");
    let mut header =
        "| round | target | handshakes (ok/err) | server CPU s | per wall s | new client cert each: handshakes (ok/err) | server CPU s |".to_owned();
    let mut align = "|---:|---|---:|---:|---:|---:|---:|".to_owned();
    for &c in &plan.keepalive_concurrency {
        let _ = write!(
            header,
            " c={c}: req (ok/err) | server CPU s | req / wall s |"
        );
        align.push_str("---:|---:|---:|");
    }
    header.push_str(" latency: ok/err, p50/p99/max ms, server CPU s |");
    align.push_str("---|");
    for &n in &plan.idle {
        let _ = write!(
            header,
            " idle {}: RSS MiB, fds/conn, s to open |",
            count_label(n)
        );
        align.push_str("---|");
    }
    let _ = writeln!(s, "{header}\n{align}");
    for r in results {
        let mut row = format!("| {} | {} |", r.round + 1, r.kind.name());
        match &r.handshakes {
            Some(p) => {
                let _ = write!(
                    row,
                    " {}/{} | {:.2} | {} |",
                    p.counts.ok,
                    p.counts.errors,
                    p.cpu_s,
                    num(p.per_wall_s(), 0)
                );
            }
            None => row.push_str(" — | — | — |"),
        }
        match &r.handshakes_fresh {
            Some(p) => {
                let _ = write!(
                    row,
                    " {}/{} | {:.2} |",
                    p.counts.ok, p.counts.errors, p.cpu_s
                );
            }
            None => row.push_str(" — | — |"),
        }
        for &c in &plan.keepalive_concurrency {
            match r.keepalive_at(c) {
                Some(p) => {
                    let _ = write!(
                        row,
                        " {}/{} | {:.2} | {} |",
                        p.counts.ok,
                        p.counts.errors,
                        p.cpu_s,
                        num(p.per_wall_s(), 0)
                    );
                }
                None => row.push_str(" — | — | — |"),
            }
        }
        match &r.latency {
            Some((l, cpu)) => {
                let _ = write!(
                    row,
                    " {}/{}, {:.2}/{:.2}/{:.2}, {:.2} |",
                    l.ok,
                    l.errors,
                    l.p50_us as f64 / 1000.0,
                    l.p99_us as f64 / 1000.0,
                    l.max_us as f64 / 1000.0,
                    cpu
                );
            }
            None => row.push_str(" — |"),
        }
        for &n in &plan.idle {
            let point = r.idle.as_ref().and_then(|i| {
                let k = i.points.iter().position(|(m, _)| *m == n)?;
                Some((i, i.points[k].1, i.open_secs.get(k).copied()))
            });
            match point {
                Some((i, u, secs)) => {
                    let _ = write!(
                        row,
                        " {:.1}, {}, {} |",
                        u.rss_bytes as f64 / 1048576.0,
                        num(i.fds_per_conn(n), 2),
                        num(secs, 1)
                    );
                }
                None => row.push_str(" — |"),
            }
        }
        let _ = writeln!(s, "{row}");
    }

    let mut problems = Vec::new();
    for r in results {
        let tag = format!("round {}, {}", r.round + 1, r.kind.name());
        if let Some(e) = &r.error {
            problems.push(format!("{tag}: not measured: {e}"));
        }
        if let Some(e) = r
            .handshakes
            .as_ref()
            .and_then(|p| p.counts.first_error.as_ref())
        {
            problems.push(format!("{tag}, handshakes: first error: {e}"));
        }
        if let Some(e) = r
            .handshakes_fresh
            .as_ref()
            .and_then(|p| p.counts.first_error.as_ref())
        {
            problems.push(format!(
                "{tag}, handshakes with a new client certificate each: first error: {e}"
            ));
        }
        for (c, p) in &r.keepalive {
            if let Some(e) = &p.counts.first_error {
                problems.push(format!("{tag}, keep-alive c={c}: first error: {e}"));
            }
        }
        if let Some(e) = r.latency.as_ref().and_then(|(l, _)| l.first_error.as_ref()) {
            problems.push(format!("{tag}, latency: first error: {e}"));
        }
        if let Some(i) = &r.idle {
            if let Some(e) = &i.error {
                problems.push(format!("{tag}, idle connections: {e}"));
            }
            for &(n, _) in &i.points {
                if !i.all_held(n) {
                    problems.push(format!(
                        "{tag}, idle {n}: the server had closed some of the idle connections \
                         when its memory was sampled ({} new fds per opened connection), so no \
                         memory-per-connection figure is given",
                        num(i.fds_per_conn(n), 2)
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        let _ = writeln!(s, "\n## Errors and warnings\n");
        for p in problems {
            let _ = writeln!(s, "- {}", p.replace('\n', " "));
        }
    }

    let _ = writeln!(s, "\n## Method\n");
    let _ = writeln!(
        s,
        "- **Same work everywhere.** The harness generates a P-256 CA, a server certificate \
         (SAN `localhost`, `127.0.0.1`, `spiffe://cluster.local/ns/meshgate-system/sa/meshgate`) \
         and a client certificate (`spiffe://cluster.local/ns/bench/sa/loadgen`). nginx and HAProxy \
         serve the server certificate; meshgate gets the CA as an Istio `cacerts` directory \
         (`serve --cacerts`) and serves the certificate its CA issues from it. All three: TLS 1.3 \
         only, TLS_AES_128_GCM_SHA256, P-256 ECDHE, client certificate required and verified \
         against the CA, no session tickets or session cache, forwarding HTTP/1.1 to the same \
         plaintext upstream on loopback with upstream keep-alive where the proxy has it. meshgate \
         runs with a STRICT PeerAuthentication for the `bench` namespace, so it really requires \
         the client certificate; it also evaluates PeerAuthentication/AuthorizationPolicy per \
         request and adds `x-forwarded-client-cert`, which nginx and HAProxy do not. Access logs \
         are off everywhere (meshgate: `MESHGATE_ACCESS_LOG=off`, which keeps only the admin \
         API's in-memory list of recent entries)."
    );
    let _ = writeln!(
        s,
        "- **One worker each.** nginx `worker_processes 1` (master + worker summed), HAProxy \
         `nbthread 1`, meshgate `serve --workers 1` (one single-threaded event loop). The upstream is `meshgate-bench upstream` (hyper, \
         one thread), in its own process."
    );
    let _ = writeln!(
        s,
        "- **Server CPU, not throughput.** The load generator shares the cores, so throughput \
         mostly measures it. Each phase reads the target's `utime + stime` (all threads, all \
         processes of the tree) from `/proc/<pid>/stat` before and after; the figures are \
         successful requests ÷ server CPU-seconds. Connections of keep-alive and latency phases \
         are opened before the first sample. Every response is checked (status 200 and the \
         upstream's exact body) before it counts."
    );
    let _ = writeln!(
        s,
        "- **Handshakes:** {} clients, each connecting, completing a full mTLS handshake (the \
         client disables resumption), sending one request and closing; all with the same client \
         certificate, then again with a new client certificate each time ({} certificates for \
         the same SPIFFE ID in turn, so meshgate's memory of accepted chains, 1,024 entries, never \
         helps: every chain is verified in full, as nginx and HAProxy always do). **Keep-alive:** N \
         connections with one request in flight each. **Latency:** open loop at a fixed rate \
         over pre-opened connections; latency counts from each request's intended send time, so \
         queueing is not hidden. **Idle memory:** connections are opened ({} at a time), each \
         serves one request and is then held; (RSS with N held − RSS just before) ÷ N, RSS = \
         VmRSS of /proc/<pid>/status summed over the tree; the server's open file descriptors \
         are checked to make sure it really holds them.",
        plan.handshake_concurrency,
        crate::certs::FRESH_CLIENTS,
        plan.idle_parallel
    );
    let _ = writeln!(
        s,
        "- **Interleaving:** every round starts each target fresh, in the order shown, and runs \
         all phases on it; the tables give medians over the rounds."
    );
    s
}

const COLORS: [(&str, &str); 4] = [
    ("direct", "#8c8c8c"),
    ("nginx", "#2ca02c"),
    ("haproxy", "#1f77b4"),
    ("meshgate", "#d62728"),
];

fn color(k: Kind) -> &'static str {
    COLORS
        .iter()
        .find(|(n, _)| *n == k.name())
        .map_or("#444444", |(_, c)| c)
}

/// One bar per target (`None`: not measured).
type Bars = Vec<(Kind, Option<f64>)>;

/// One chart panel: labelled groups of bars.
struct Panel {
    title: String,
    groups: Vec<(String, Bars)>,
}

fn short(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v >= 100_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum at or above `v`: 1, 2 or 5 times a power of ten.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|m| *m >= v)
        .unwrap_or(10.0 * p)
}

fn panel_svg(out: &mut String, p: &Panel, x0: f64, y0: f64, w: f64, h: f64) {
    let (left, right, top, bottom) = (58.0, 10.0, 30.0, 34.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="13" font-weight="bold">{}</text>"#,
        x0 + 8.0,
        y0 + 18.0,
        esc(&p.title)
    );
    let max = p
        .groups
        .iter()
        .flat_map(|(_, bars)| bars.iter().filter_map(|(_, v)| *v))
        .fold(0.0f64, f64::max);
    let axis = nice_max(max * 1.1);
    for i in 0..=4 {
        let v = axis * f64::from(i) / 4.0;
        let y = y0 + top + ph - ph * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#555555">{}</text>"##,
            x0 + left,
            x0 + left + pw,
            x0 + left - 4.0,
            y + 3.5,
            short(v)
        );
    }
    let ng = p.groups.len().max(1) as f64;
    let gw = pw / ng;
    for (gi, (label, bars)) in p.groups.iter().enumerate() {
        let gx = x0 + left + gw * gi as f64;
        let nb = bars.len().max(1) as f64;
        let bw = (gw * 0.8 / nb).min(46.0);
        let start = gx + (gw - bw * nb) / 2.0;
        for (bi, (kind, v)) in bars.iter().enumerate() {
            let bx = start + bw * bi as f64;
            match v {
                Some(v) => {
                    let bh = ph * (v / axis).clamp(0.0, 1.0);
                    let by = y0 + top + ph - bh;
                    let _ = writeln!(
                        out,
                        r#"<rect x="{:.1}" y="{by:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                        bx + 1.0,
                        bw - 2.0,
                        color(*kind),
                        kind.name(),
                        short(*v),
                        bx + bw / 2.0,
                        by - 3.0,
                        short(*v)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        r##"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="#999999">n/a</text>"##,
                        bx + bw / 2.0,
                        y0 + top + ph - 3.0
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            gx + gw / 2.0,
            y0 + top + ph + 16.0,
            esc(label)
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333333"/>"##,
        x0 + left,
        y0 + top + ph,
        x0 + left + pw,
        y0 + top + ph
    );
}

/// The chart: four panels (handshakes, keep-alive, latency, idle memory),
/// bars per target, medians of the run.
pub fn svg(plan: &Plan, machine: &Machine, results: &[TargetRound]) -> String {
    let sums: Vec<(Kind, Summary)> = plan
        .kinds
        .iter()
        .map(|&k| (k, summarize(plan, results, k)))
        .collect();
    let tls: Vec<&(Kind, Summary)> = sums.iter().filter(|(k, _)| k.is_tls()).collect();
    let panels = [
        Panel {
            title: "Full mTLS handshakes per server CPU-second (higher is better)".to_owned(),
            groups: vec![(
                "new connection per request".to_owned(),
                tls.iter().map(|(k, s)| (*k, s.hs_per_cpu)).collect(),
            )],
        },
        Panel {
            title: "Keep-alive requests per server CPU-second (higher is better)".to_owned(),
            groups: plan
                .keepalive_concurrency
                .iter()
                .map(|&c| {
                    (
                        format!("concurrency {c}"),
                        sums.iter()
                            .map(|(k, s)| (*k, at(&s.ka_per_cpu, c)))
                            .collect(),
                    )
                })
                .collect(),
        },
        Panel {
            title: format!("Latency at {} req/s, ms (lower is better)", plan.rate),
            groups: vec![
                (
                    "p50".to_owned(),
                    sums.iter().map(|(k, s)| (*k, s.p50_ms)).collect(),
                ),
                (
                    "p99".to_owned(),
                    sums.iter().map(|(k, s)| (*k, s.p99_ms)).collect(),
                ),
            ],
        },
        Panel {
            title: "Server memory per idle mTLS connection, KiB (lower is better)".to_owned(),
            groups: plan
                .idle
                .iter()
                .map(|&n| {
                    (
                        format!("{} connections", count_label(n)),
                        tls.iter().map(|(k, s)| (*k, at(&s.idle_kib, n))).collect(),
                    )
                })
                .collect(),
        },
    ];
    let (pw, ph) = (470.0, 270.0);
    let (width, height) = (pw * 2.0 + 20.0, ph * 2.0 + 90.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/><text x="10" y="22" font-size="15" font-weight="bold">meshgate vs nginx vs HAProxy: mTLS termination, one worker each (medians of {} round(s))</text><text x="10" y="40" font-size="11" fill="#555555">{}; {} CPU(s), {}; load avg before {}{}</text>"##,
        plan.rounds,
        esc(&machine.date),
        machine.nproc,
        esc(&machine.cpu_model),
        esc(&machine.load_before),
        if busy(machine) {
            " (busy machine: regenerate)"
        } else {
            ""
        }
    );
    let mut lx = 10.0;
    for (k, _) in &sums {
        let _ = writeln!(
            out,
            r#"<rect x="{lx:.1}" y="50" width="12" height="12" fill="{}"/><text x="{:.1}" y="60" font-size="11">{}</text>"#,
            color(*k),
            lx + 16.0,
            k.name()
        );
        lx += 90.0;
    }
    for (i, p) in panels.iter().enumerate() {
        let x = 10.0 + (i % 2) as f64 * (pw + 10.0);
        let y = 70.0 + (i / 2) as f64 * (ph + 10.0);
        panel_svg(&mut out, p, x, y, pw, ph);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(num(Some(1234567.891), 1), "1,234,567.9");
        assert_eq!(num(Some(999.0), 0), "999");
        assert_eq!(num(Some(-1234.0), 0), "-1,234");
        assert_eq!(num(None, 2), "—");
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(37.0), 50.0);
        assert_eq!(nice_max(1200.0), 2000.0);
    }
}
