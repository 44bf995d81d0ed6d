//! `meshgate-bench`: runs the comparison and writes the report (see the
//! library docs). `bench/run` builds the release binaries, installs nginx
//! and HAProxy if missing, and calls this.

use core::net::SocketAddr;
use core::time::Duration;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use meshgate_bench::certs::{self, BenchPki, PkiFiles};
use meshgate_bench::loadgen::{self, Endpoint, TlsClient};
use meshgate_bench::procfs;
use meshgate_bench::report::{self, Machine};
use meshgate_bench::runner::{self, Plan, TargetRound};
use meshgate_bench::targets::{self, Env, Kind, SERVICE_HOST, Server};
use rustls_pki_types::ServerName;

/// meshgate next to nginx and HAProxy on the same mTLS termination work:
/// full handshakes, keep-alive requests, latency at a fixed rate and
/// memory per idle connection, per server CPU-second, in interleaved
/// rounds. Writes benchmarks.md and benchmarks.svg into --out.
#[derive(Parser, Debug)]
#[command(
    name = "meshgate-bench",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Interleaved rounds (medians are taken over them). Default 3, or 1
    /// with --quick.
    #[arg(long)]
    rounds: Option<usize>,
    /// Smoke check: 1 s phases, 100/500 idle connections, 300 req/s.
    #[arg(long)]
    quick: bool,
    /// Targets to run, comma-separated: direct,nginx,haproxy,meshgate.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Phases to run, comma-separated: handshake,keepalive,latency,idle
    /// (default: all). A partial run is marked as such in the report.
    #[arg(long, value_delimiter = ',')]
    phases: Vec<String>,
    /// Directory for benchmarks.md and benchmarks.svg.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// Seconds per timed phase (default 5, or 1 with --quick).
    #[arg(long)]
    phase_secs: Option<f64>,
    /// Offered load of the latency phase, requests per second.
    #[arg(long)]
    rate: Option<u32>,
    /// Idle connection counts, comma-separated, ascending.
    #[arg(long, value_delimiter = ',')]
    idle: Vec<usize>,
    /// The meshgate binary (default: `meshgate` next to this binary).
    #[arg(long)]
    meshgate_bin: Option<PathBuf>,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx_bin: PathBuf,
    /// The haproxy binary.
    #[arg(long, default_value = "haproxy")]
    haproxy_bin: PathBuf,
    /// Keep the scratch directory (configs, logs) after the run.
    #[arg(long)]
    keep_temp: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs the plaintext upstream (used by the benchmark itself).
    #[command(hide = true)]
    Upstream {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// Why the run could not be set up.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Certs(#[from] meshgate_bench::certs::CertError),
    #[error(transparent)]
    Load(#[from] loadgen::LoadError),
    #[error(transparent)]
    Target(#[from] targets::TargetError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MainError {
    let what = what.into();
    move |source| MainError::Io { what, source }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Upstream { listen }) = cli.command {
        return run_upstream(listen);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_upstream(listen: SocketAddr) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("upstream: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => {
                meshgate_bench::upstream::serve(l).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("upstream: cannot listen on {listen}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// 10,000 idle connections need about that many descriptors in this
/// process and in each server (which inherit the limit): raise the soft
/// limit to the hard one.
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

fn plan_from(cli: &Cli) -> Result<Plan, MainError> {
    let mut plan = if cli.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(r) = cli.rounds {
        plan.rounds = r.max(1);
    }
    if let Some(s) = cli.phase_secs {
        if !(s > 0.0 && s <= 600.0) {
            return Err(MainError::Usage(format!(
                "--phase-secs {s}: must be in (0, 600]"
            )));
        }
        plan.phase = Duration::from_secs_f64(s);
    }
    if let Some(r) = cli.rate {
        plan.rate = r.max(1);
    }
    if !cli.idle.is_empty() {
        let mut idle = cli.idle.clone();
        idle.sort_unstable();
        idle.dedup();
        plan.idle = idle;
    }
    if !cli.phases.is_empty() {
        let mut want = [false; 4];
        for name in &cli.phases {
            let i = match name.trim() {
                "handshake" | "handshakes" => 0,
                "keepalive" | "keep-alive" => 1,
                "latency" => 2,
                "idle" => 3,
                other => {
                    return Err(MainError::Usage(format!(
                        "--phases {other}: unknown phase (handshake, keepalive, latency, idle)"
                    )));
                }
            };
            want[i] = true;
        }
        plan.handshakes = want[0];
        if !want[1] {
            plan.keepalive_concurrency.clear();
        }
        plan.latency = want[2];
        if !want[3] {
            plan.idle.clear();
        }
    }
    if !cli.only.is_empty() {
        let mut kinds = Vec::new();
        for name in &cli.only {
            let k = Kind::parse(name.trim()).ok_or_else(|| {
                MainError::Usage(format!(
                    "--only {name}: unknown target (direct, nginx, haproxy, meshgate)"
                ))
            })?;
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        kinds.sort();
        plan.kinds = kinds;
    }
    Ok(plan)
}

fn command_output(cmd: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(text)
}

fn first_line(s: Option<String>) -> String {
    s.as_deref()
        .and_then(|t| t.lines().find(|l| !l.trim().is_empty()))
        .map_or_else(|| "not found".to_owned(), |l| l.trim().to_owned())
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn machine(cli: &Cli, plan: &Plan, meshgate_bin: &Path) -> Machine {
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rev = Command::new("git")
        .arg("-C")
        .arg(&workspace)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    // The binary is built from the working tree, which may be ahead of
    // HEAD in the gateway's sources.
    let dirty = Command::new("git")
        .arg("-C")
        .arg(&workspace)
        .args(["status", "--porcelain", "--", "core", "gateway-linux"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty());
    let rev = if dirty {
        format!("{rev} + uncommitted changes")
    } else {
        rev
    };
    let mut versions = Vec::new();
    if plan.kinds.contains(&Kind::Nginx) {
        let v = command_output(&cli.nginx_bin, &["-V"]);
        versions.push(("nginx".to_owned(), first_line(v.clone())));
        if let Some(ssl) = v
            .as_deref()
            .and_then(|t| t.lines().find(|l| l.contains("OpenSSL")))
        {
            versions.push(("nginx TLS library".to_owned(), ssl.trim().to_owned()));
        }
    }
    if plan.kinds.contains(&Kind::Haproxy) {
        let v = command_output(&cli.haproxy_bin, &["-vv"]);
        versions.push(("haproxy".to_owned(), first_line(v.clone())));
        if let Some(ssl) = v
            .as_deref()
            .and_then(|t| t.lines().find(|l| l.contains("Running on OpenSSL")))
        {
            versions.push(("haproxy TLS library".to_owned(), ssl.trim().to_owned()));
        }
    }
    if plan.kinds.contains(&Kind::Meshgate) {
        versions.push((
            "meshgate".to_owned(),
            format!(
                "git {rev} ({}), rustls 0.23 with the ring provider",
                meshgate_bin.display()
            ),
        ));
    }
    versions.push((
        "rustc".to_owned(),
        first_line(command_output(Path::new("rustc"), &["--version"])),
    ));
    versions.push((
        "load generator".to_owned(),
        format!(
            "meshgate-bench {} (rustls 0.23, ring, hyper 1)",
            env!("CARGO_PKG_VERSION")
        ),
    ));
    let date = time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_else(|_| "unknown".to_owned());
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        date,
        load_before: load_average(),
        load_after: String::new(),
        others_cpu: None,
        versions,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    }
}

fn run(cli: Cli) -> Result<(), MainError> {
    let plan = plan_from(&cli)?;
    let nofile = raise_nofile();
    let max_idle = plan.idle.last().copied().unwrap_or(0) as u64;
    if nofile < max_idle + 1000 {
        return Err(MainError::Usage(format!(
            "open-file limit {nofile} is too low for {max_idle} idle connections; \
             raise it (ulimit -n) or pass a smaller --idle"
        )));
    }
    let self_exe = std::env::current_exe().map_err(io("locate this executable"))?;
    let meshgate_bin = match &cli.meshgate_bin {
        Some(p) => p.clone(),
        None => self_exe.with_file_name("meshgate"),
    };
    let mut machine = machine(&cli, &plan, &meshgate_bin);

    let dir = std::env::temp_dir().join(format!("meshgate-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let fresh = if plan.handshakes {
        certs::FRESH_CLIENTS
    } else {
        0
    };
    let pki = BenchPki::generate_with_fresh_clients(fresh)?;
    let files = pki.write_files(&dir)?;
    let config = loadgen::client_config(&pki)?;
    let fresh_configs = loadgen::fresh_client_configs(&pki)?;

    // What the rest of the machine does meanwhile: all busy CPU minus
    // this process and the servers it starts (waited-for children).
    let busy_before = procfs::system_busy_seconds().ok();
    let own_before = procfs::own_cpu_seconds_with_children().ok();
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("start the load generator's runtime"))?;
    let result = rt.block_on(run_rounds(
        &plan,
        &cli,
        &self_exe,
        &meshgate_bin,
        &dir,
        files,
        (config, fresh_configs),
    ));
    let results = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshgate-bench: scratch directory kept: {}", dir.display());
            return Err(e);
        }
    };
    machine.load_after = load_average();
    if let (Some(b0), Some(o0), Ok(b1), Ok(o1)) = (
        busy_before,
        own_before,
        procfs::system_busy_seconds(),
        procfs::own_cpu_seconds_with_children(),
    ) {
        machine.others_cpu = Some((
            ((b1 - b0) - (o1 - o0)).max(0.0),
            started.elapsed().as_secs_f64(),
        ));
    }

    fs::create_dir_all(&cli.out).map_err(io(format!("create {}", cli.out.display())))?;
    let md = cli.out.join("benchmarks.md");
    let svg = cli.out.join("benchmarks.svg");
    fs::write(&md, report::markdown(&plan, &machine, &results))
        .map_err(io(format!("write {}", md.display())))?;
    fs::write(&svg, report::svg(&plan, &machine, &results))
        .map_err(io(format!("write {}", svg.display())))?;
    println!("wrote {} and {}", md.display(), svg.display());
    println!(
        "load average before {}, after {}",
        machine.load_before, machine.load_after
    );
    if let Some((cpu, wall)) = machine.others_cpu {
        println!("other processes used {cpu:.1} CPU-s during the {wall:.0} s run");
    }
    if plan.kinds.contains(&Kind::Meshgate) && plan.kinds.contains(&Kind::Nginx) {
        let m = report::summarize(&plan, &results, Kind::Meshgate);
        let n = report::summarize(&plan, &results, Kind::Nginx);
        for g in report::goals(&plan, &m, &n) {
            println!(
                "{:<70} ratio {:>8}  target {:<7} {}",
                g.name,
                g.ratio.map_or("—".to_owned(), |r| format!("{r:.2}x")),
                g.target,
                match g.met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "not measured",
                }
            );
        }
    }
    if cli.keep_temp {
        println!("scratch directory kept: {}", dir.display());
    } else {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}

type Starter = fn(&Env) -> Result<Server, targets::TargetError>;

/// How to start a proxy; `None` for the direct target, which is the
/// upstream already running for the whole run.
fn starter(kind: Kind) -> Option<Starter> {
    match kind {
        Kind::Direct => None,
        Kind::Nginx => Some(targets::start_nginx),
        Kind::Haproxy => Some(targets::start_haproxy),
        Kind::Meshgate => Some(targets::start_meshgate),
    }
}

async fn run_rounds(
    plan: &Plan,
    cli: &Cli,
    self_exe: &Path,
    meshgate_bin: &Path,
    dir: &Path,
    pki: PkiFiles,
    (config, fresh_configs): (Arc<rustls::ClientConfig>, Arc<[Arc<rustls::ClientConfig>]>),
) -> Result<Vec<TargetRound>, MainError> {
    let upstream = targets::start_upstream(self_exe, dir)?;
    let env = Env {
        dir: dir.to_path_buf(),
        pki,
        upstream: upstream.addr,
        nginx_bin: cli.nginx_bin.clone(),
        haproxy_bin: cli.haproxy_bin.clone(),
        meshgate_bin: meshgate_bin.to_path_buf(),
    };
    let server_name =
        ServerName::try_from(SERVICE_HOST).map_err(|e| MainError::Usage(e.to_string()))?;
    let mut results = Vec::new();
    for round in 0..plan.rounds {
        for &kind in &plan.kinds {
            eprintln!(
                "round {}/{}: {} (load average {})",
                round + 1,
                plan.rounds,
                kind.name(),
                load_average()
            );
            let mut out = TargetRound::new(kind, round);
            let mut server = None;
            let (pid, addr) = match starter(kind) {
                None => (upstream.pid(), upstream.addr),
                Some(start) => match start(&env) {
                    Ok(s) => {
                        let p = (s.pid(), s.addr);
                        server = Some(s);
                        p
                    }
                    Err(e) => {
                        eprintln!("  {} not started: {e}", kind.name());
                        out.error = Some(e.to_string());
                        results.push(out);
                        continue;
                    }
                },
            };
            let ep = Endpoint {
                addr,
                host: SERVICE_HOST.to_owned(),
                tls: kind.is_tls().then(|| TlsClient {
                    config: config.clone(),
                    fresh: fresh_configs.clone(),
                    server_name: server_name.clone(),
                }),
            };
            if let Err(e) = runner::measure(plan, pid, &ep, &mut out).await {
                let mut msg = e.to_string();
                if let Some(s) = server.as_mut() {
                    if let Some(status) = s.exited() {
                        msg.push_str(&format!(" (the process exited: {status})"));
                    }
                    let tail = targets::log_tail(&s.log, 5);
                    if !tail.is_empty() {
                        msg.push_str(&format!("; log: {}", tail.replace('\n', " | ")));
                    }
                }
                eprintln!("  {}: {msg}", kind.name());
                out.error = Some(msg);
            }
            print_progress(&out);
            drop(server);
            results.push(out);
            // Let sockets of the stopped target finish closing.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    drop(upstream);
    Ok(results)
}

fn print_progress(r: &TargetRound) {
    if let Some(p) = &r.handshakes {
        eprintln!(
            "  handshakes: {} ok, {} failed, {:.2} server CPU-s → {} per CPU-s",
            p.counts.ok,
            p.counts.errors,
            p.cpu_s,
            report::num(p.per_cpu_s(), 0)
        );
    }
    if let Some(p) = &r.handshakes_fresh {
        eprintln!(
            "  handshakes, new client certificate each: {} ok, {} failed, {:.2} server CPU-s → {} per CPU-s",
            p.counts.ok,
            p.counts.errors,
            p.cpu_s,
            report::num(p.per_cpu_s(), 0)
        );
    }
    for (c, p) in &r.keepalive {
        eprintln!(
            "  keep-alive c={c}: {} ok, {} failed, {:.2} server CPU-s → {} per CPU-s",
            p.counts.ok,
            p.counts.errors,
            p.cpu_s,
            report::num(p.per_cpu_s(), 0)
        );
    }
    if let Some((l, cpu)) = &r.latency {
        eprintln!(
            "  latency: {}/{} ok, p50 {:.2} ms, p99 {:.2} ms, {:.2} server CPU-s",
            l.ok,
            l.scheduled,
            l.p50_us as f64 / 1000.0,
            l.p99_us as f64 / 1000.0,
            cpu
        );
    }
    if let Some(i) = &r.idle {
        for &(n, u) in &i.points {
            eprintln!(
                "  idle {n}: RSS {:.1} MiB, {} KiB/conn, {} fds/conn",
                u.rss_bytes as f64 / 1048576.0,
                report::num(i.bytes_per_conn(n).map(|b| b / 1024.0), 1),
                report::num(i.fds_per_conn(n), 2)
            );
        }
        if let Some(e) = &i.error {
            eprintln!("  idle: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<Plan, MainError> {
        let mut argv = vec!["meshgate-bench"];
        argv.extend_from_slice(args);
        plan_from(&Cli::try_parse_from(argv).expect("arguments parse"))
    }

    #[test]
    fn phases_select_what_runs() {
        let p = plan(&["--phases", "idle,handshake"]).expect("valid phases");
        assert!(p.handshakes && !p.latency);
        assert!(p.keepalive_concurrency.is_empty());
        assert_eq!(p.idle, Plan::full().idle);
        assert!(!p.all_phases());

        let p = plan(&["--phases", "keepalive"]).expect("valid phases");
        assert!(!p.handshakes && !p.latency && p.idle.is_empty());
        assert_eq!(p.keepalive_concurrency, Plan::full().keepalive_concurrency);

        assert!(plan(&[]).expect("default plan").all_phases());
        assert!(matches!(
            plan(&["--phases", "handshake,warp"]),
            Err(MainError::Usage(m)) if m.contains("warp")
        ));
    }
}
