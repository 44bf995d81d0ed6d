//! The command line: every subcommand, its flags and its `--help` text.
//!
//! Parsing only; the work is done by [`crate::serve`] (the gateway itself)
//! and [`crate::commands`] (the client commands that talk to a running
//! gateway's admin API, or to the CA in a data directory).

use core::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Where state lives when neither `--data-dir` nor `MESHGATE_DATA_DIR` says
/// otherwise: a folder next to where the command runs, so that `meshgate
/// serve` and a later `meshgate apply` in the same shell find the same
/// admin token without any flag.
pub(crate) const DEFAULT_DATA_DIR: &str = "meshgate-data";

/// The admin API a client command talks to by default.
pub(crate) const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:15000";

/// meshgate: a mutual-TLS gateway that enforces Istio PeerAuthentication and
/// AuthorizationPolicy in front of services and brings legacy clients into
/// the mesh.
#[derive(Debug, Parser)]
#[command(
    name = "meshgate",
    version,
    about,
    long_about = "meshgate: a mutual-TLS gateway that enforces Istio PeerAuthentication \
                  and AuthorizationPolicy in front of services, issues short-lived SPIFFE \
                  certificates from its own CA, and brings legacy plaintext clients into \
                  the mesh.\n\n\
                  Start the gateway with `meshgate serve` (no arguments needed), then \
                  manage it from another shell with `meshgate apply`, `get`, `check`, \
                  `cert` and `ca`.",
    after_help = "Examples:\n  meshgate serve\n  meshgate apply -f mutual-tls.yaml\n  \
                  meshgate check details.bookinfo.svc.cluster.local --port 9080\n  \
                  meshgate cert issue --spiffe-id spiffe://cluster.local/ns/legacy/sa/client --out ./certs"
)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway: data-plane listeners, the admin API and the CA.
    #[command(
        long_about = "Run the gateway: data-plane listeners, the admin API, and the \
                            built-in CA that issues the gateway's own identity.\n\n\
                            With no arguments it runs on an embedded default configuration: \
                            everything bound to 127.0.0.1, the admin API on 127.0.0.1:15000, \
                            state in ./meshgate-data. On first start it prints a new admin \
                            token once; the data directory keeps only its hash, plus a copy \
                            readable only by the owner (admin-token, mode 0600) so that client \
                            commands on this host work without flags.\n\n\
                            Policy files named in the settings are watched and reloaded within \
                            a second; SIGHUP reloads at once. An invalid change is rejected \
                            whole and the previous configuration keeps serving. SIGTERM or \
                            Ctrl-C stops accepting, lets in-flight requests finish (up to \
                            --drain-timeout) and exits 0.\n\n\
                            Resource limits come from the settings' `limits:` block \
                            (defaults in brackets): maxConnections [10000] in total, \
                            maxConnectionsPerSource [1000] per client IPv4 address or IPv6 /64, \
                            headTimeout [10s] for the ClientHello, TLS handshake and each \
                            HTTP/1 request head, idleTimeout [60s] for an HTTP connection on \
                            which nothing moves (tcpIdleTimeout [1h] on tcp listeners), \
                            maxRequestHeadBytes [65536] (then 431), \
                            upstreamConnectTimeout [5s] (then 503). The open-file limit is \
                            raised to the hard limit at start."
    )]
    Serve(ServeArgs),

    /// Run the seed demo: the gateway with bookinfo behind it, and the steps to follow.
    #[command(
        long_about = "Run the seed demo \"Securing Services with Mutual TLS\" on this host, in \
                      one process: the gateway (exactly as `meshgate serve` runs it) with \
                      bookinfo's details and productpage workloads behind it; productpage calls \
                      details back through the gateway with mutual TLS as \
                      cluster.local/ns/bookinfo/sa/bookinfo-productpage.\n\n\
                      Defaults, so the printed commands work as they are: data plane on \
                      127.0.0.1:9080 routing details.bookinfo.svc.cluster.local and \
                      productpage.bookinfo.svc.cluster.local by Host/SNI; admin API and UI on \
                      127.0.0.1:15000; details on 127.0.0.1:19080, productpage on \
                      127.0.0.1:19081. Files go to ./meshgate-demo: meshgate.yaml (the \
                      settings), mutual-tls.yaml (PeerAuthentication STRICT for bookinfo), \
                      details-viewer.yaml (AuthorizationPolicy: only productpage may read \
                      details), certs/productpage and certs/sleep (demo client certificates: \
                      key.pem mode 0600, cert.pem, chain.pem, ca.pem) and data/ (the \
                      gateway's CA, applied policies and admin token; never workload keys). \
                      Every run starts fresh: a new CA and no applied policies.\n\n\
                      Once ready it prints the admin token, the UI URL and the seed's steps: \
                      plaintext curl works; `meshgate apply -f meshgate-demo/mutual-tls.yaml`; \
                      plaintext now fails while productpage still reaches details; TLS \
                      without a client certificate fails with \"certificate required\"; a \
                      certificate from `meshgate cert issue` brings the legacy client back; \
                      details-viewer then gives it 403 while productpage keeps working.\n\n\
                      Ctrl-C (or SIGTERM) stops everything and exits 0.",
        after_help = "Examples:\n  meshgate demo\n  \
                      meshgate demo --listen 127.0.0.1:18080 --admin-addr 127.0.0.1:25000 --dir /tmp/demo"
    )]
    Demo(crate::demo::DemoArgs),

    /// Manage edge nodes: enrollment tokens, status, forwarding rules, revocation.
    #[command(
        after_help = "Examples:\n  meshgate edge token create --namespace factory --name plc-gw-1 \\\n      --listen 8080=details.bookinfo.svc.cluster.local:9080\n  \
                      meshgate edge list\n  meshgate edge revoke plc-gw-1 --reason decommissioned"
    )]
    Edge(crate::edge::cli::EdgeArgs),

    /// Create or update policies from Istio YAML on a running gateway.
    #[command(
        long_about = "Create or update PeerAuthentication and AuthorizationPolicy \
                            resources on a running gateway from Istio YAML (one or more \
                            documents separated by ---). The whole file is validated first; \
                            if any document is invalid nothing is applied and the error names \
                            the file, document, line and field. Applied policies are stored in \
                            the gateway's data directory and survive restarts."
    )]
    Apply(ApplyArgs),

    /// Delete the policies named in an Istio YAML file from a running gateway.
    #[command(
        long_about = "Delete the policies named (kind, namespace, name) in an Istio YAML \
                            file from a running gateway. Only policies applied through the API \
                            can be deleted this way; policies from the gateway's own policy \
                            files are changed by editing those files."
    )]
    Delete(DeleteArgs),

    /// List policies or services of a running gateway.
    #[command(
        long_about = "List resources of a running gateway: PeerAuthentication or \
                            AuthorizationPolicy resources (as a table, or as YAML with -o yaml), \
                            or the services behind the gateway with each port's effective mTLS \
                            mode."
    )]
    Get(GetArgs),

    /// Show a service's effective mTLS mode per port and the policies that made it.
    #[command(
        long_about = "Show a service's effective mTLS mode for each port and the \
                            policies that decided it (mesh-wide, namespace-wide, workload, \
                            port-level), like `istioctl x describe`, plus the \
                            AuthorizationPolicies that apply to its workload. SERVICE is a host \
                            such as details.bookinfo.svc.cluster.local."
    )]
    Check(CheckArgs),

    /// Check a settings file and/or policy files offline (no gateway needed).
    #[command(
        long_about = "Check configuration offline, without starting anything: the \
                            settings file given with --config (and every service and policy \
                            file it names), and each policy file given with -f. Prints every \
                            problem with file, document, line and field; exits 0 when all is \
                            valid, 1 otherwise."
    )]
    Validate(ValidateArgs),

    /// Certificates for hosts outside the mesh.
    #[command(subcommand)]
    Cert(CertCommand),

    /// Inspect and operate the gateway's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
}

/// `meshgate serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Settings file (YAML). Without it the embedded default settings are used.
    #[arg(long, short = 'c', env = "MESHGATE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Directory for the CA, applied policies and the admin token hash
    /// (created with mode 0700 if missing). Overrides the settings' dataDir;
    /// the default is ./meshgate-data.
    #[arg(long, env = "MESHGATE_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,

    /// Admin API address, overriding the settings (port 0 picks a free port;
    /// the address is printed at start).
    #[arg(long, env = "MESHGATE_ADMIN_ADDR", value_name = "ADDR")]
    pub(crate) admin_addr: Option<SocketAddr>,

    /// Edge-node tunnel and enrollment listener, TLS (default
    /// 127.0.0.1:15443; port 0 picks a free port; printed at start).
    #[arg(long, env = "MESHGATE_EDGE_ADDR", value_name = "ADDR")]
    pub(crate) edge_addr: Option<SocketAddr>,

    /// Replace the settings' data-plane listener addresses: NAME=ADDR binds
    /// the listener called NAME to ADDR (repeatable; port 0 picks a free
    /// port). Meant for tests and for running several gateways on one host.
    #[arg(
        long = "listen",
        env = "MESHGATE_LISTEN",
        value_name = "NAME=ADDR",
        value_delimiter = ','
    )]
    pub(crate) listen: Vec<ListenOverride>,

    /// An Istio `cacerts` directory (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem) to sign with instead of a generated root. An empty or
    /// missing directory means "generate", as istiod does; a partial one is
    /// an error.
    #[arg(long, env = "MESHGATE_CACERTS_DIR", value_name = "DIR")]
    pub(crate) cacerts: Option<PathBuf>,

    /// Kubernetes mode: policies (PeerAuthentication, AuthorizationPolicy)
    /// from the API server (in-cluster service account or kubeconfig),
    /// state in the meshgate-state Secret, singleton work under the
    /// meshgate-leader Lease (see deploy/kubernetes-mode).
    #[arg(long, env = "MESHGATE_KUBERNETES")]
    pub(crate) kubernetes: bool,

    /// How long in-flight requests may run after SIGTERM before the gateway
    /// exits anyway, in seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub(crate) drain_timeout: u64,

    /// Threads that run the gateway (data plane, admin API, rotation). With
    /// 1 the gateway is a single-threaded event loop, like one nginx worker:
    /// the cheapest per request and per handshake, and the right choice
    /// for a pod limited to one CPU. With more, tokio's work-stealing
    /// scheduler spreads connections over them. Default: the CPUs this
    /// process may use (affinity and cgroup CPU quota included).
    #[arg(
        long,
        env = "MESHGATE_WORKERS",
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub(crate) workers: Option<u16>,
}

/// `--listen NAME=ADDR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListenOverride {
    /// Listener name in the settings.
    pub(crate) name: String,
    /// Address to bind instead.
    pub(crate) addr: SocketAddr,
}

impl core::str::FromStr for ListenOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=ADDR, got {s:?}"))?;
        if name.is_empty() {
            return Err(format!("missing listener name in {s:?}"));
        }
        let addr = addr
            .parse()
            .map_err(|e| format!("bad address {addr:?} for listener {name:?}: {e}"))?;
        Ok(ListenOverride {
            name: name.to_owned(),
            addr,
        })
    }
}

/// `meshgate validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// Settings file to check, with the service and policy files it names.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Policy file (Istio YAML) to check; repeatable.
    #[arg(long = "filename", short = 'f', value_name = "FILE")]
    pub(crate) files: Vec<PathBuf>,
}

/// How a client command reaches a running gateway.
#[derive(Debug, Args, Clone)]
pub(crate) struct AdminArgs {
    /// Admin API of the running gateway.
    #[arg(long, env = "MESHGATE_ADMIN", value_name = "URL", default_value = DEFAULT_ADMIN_URL)]
    pub(crate) admin: String,

    /// Admin token. Without it, the gateway data directory's admin-token
    /// file is read.
    #[arg(
        long,
        env = "MESHGATE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,

    /// The gateway's data directory, where the admin-token file is looked up.
    #[arg(long, env = "MESHGATE_DATA_DIR", value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub(crate) data_dir: PathBuf,
}

/// `meshgate apply`.
#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// Istio YAML file to apply, or `-` for standard input.
    #[arg(long = "filename", short = 'f', value_name = "FILE|-")]
    pub(crate) file: PathBuf,

    /// Connection to the gateway.
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// `meshgate delete`.
#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// Istio YAML file naming the resources to delete, or `-` for standard input.
    #[arg(long = "filename", short = 'f', value_name = "FILE|-")]
    pub(crate) file: PathBuf,

    /// Connection to the gateway.
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// What `meshgate get` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum GetKind {
    /// PeerAuthentication resources.
    #[value(alias = "peerauthentications", alias = "pa")]
    Peerauthentication,
    /// AuthorizationPolicy resources.
    #[value(alias = "authorizationpolicies", alias = "ap")]
    Authorizationpolicy,
    /// Services behind the gateway, with each port's effective mode.
    #[value(alias = "service", alias = "svc")]
    Services,
}

/// Output format of `meshgate get`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// A human-readable table.
    #[default]
    Table,
    /// Istio YAML (policies only).
    Yaml,
    /// The admin API's JSON.
    Json,
}

/// `meshgate get`.
#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// Kind of resource to list.
    pub(crate) kind: GetKind,

    /// Only this namespace.
    #[arg(long, short = 'n', value_name = "NS")]
    pub(crate) namespace: Option<String>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub(crate) output: OutputFormat,

    /// Connection to the gateway.
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// `meshgate check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Service host, e.g. details.bookinfo.svc.cluster.local.
    pub(crate) service: String,

    /// Only this service port.
    #[arg(long, short = 'p', value_name = "PORT")]
    pub(crate) port: Option<u16>,

    /// Print the admin API's JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    /// Connection to the gateway.
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// `meshgate cert ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Issue a certificate for a host outside the mesh (key, cert, chain, root).
    #[command(
        long_about = "Issue a short-lived SPIFFE certificate for a legacy Linux host and \
                            write it into DIR (on this machine, not the gateway's data \
                            directory): key.pem (mode 0600, generated here), cert.pem, \
                            chain.pem (cert + intermediates) and ca.pem (the mesh roots). Use \
                            them with curl: curl --cert chain.pem --key key.pem --cacert ca.pem. \
                            The key is generated here and never leaves this machine: the \
                            running gateway signs a certificate request through the admin API."
    )]
    Issue(CertIssueArgs),

    /// Revoke a certificate (by serial) or an identity (by SPIFFE ID).
    #[command(
        long_about = "Revoke in the gateway's CA: one certificate by its serial (hex, as \
                      `cert issue` and `ca show` print it), or every certificate of a SPIFFE \
                      ID — and no new certificate is issued for that ID while the revocation is \
                      kept. The gateway refuses new handshakes with a revoked certificate at \
                      once (TLS alert certificate_revoked) and closes its open connections \
                      within a second. A revocation is kept until the last certificate it \
                      covers has expired, then pruned.",
        after_help = "Examples:\n  meshgate cert revoke --serial 3f2a9c0d5e6b7a81 --reason \"key leaked\"\n  \
                      meshgate cert revoke --spiffe-id spiffe://cluster.local/ns/legacy/sa/client"
    )]
    Revoke(CertRevokeArgs),
}

/// `meshgate cert revoke`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["spiffe_id", "serial"])))]
pub(crate) struct CertRevokeArgs {
    /// Revoke every certificate of this identity, e.g.
    /// spiffe://cluster.local/ns/legacy/sa/client.
    #[arg(long, value_name = "ID")]
    pub(crate) spiffe_id: Option<String>,

    /// Revoke one certificate by its serial number (hex).
    #[arg(long, value_name = "HEX")]
    pub(crate) serial: Option<String>,

    /// Why (kept in the revocation and the audit log).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub(crate) reason: String,

    /// Connection to the gateway.
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// `meshgate cert issue`.
#[derive(Debug, Args)]
pub(crate) struct CertIssueArgs {
    /// Identity to put in the certificate, e.g.
    /// spiffe://cluster.local/ns/legacy/sa/client.
    #[arg(long, value_name = "ID")]
    pub(crate) spiffe_id: String,

    /// Directory to write key.pem, cert.pem, chain.pem and ca.pem into.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,

    /// Certificate lifetime, e.g. 24h, 30m, 90s, 7d (60 s to 90 days).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub(crate) ttl: core::time::Duration,

    /// Connection to the gateway.
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// `meshgate ca ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Print the CA's roots (SHA-256 fingerprints, expiry) and issuance counts.
    Show(CaShowArgs),
    /// Roll the CA over to a new root without breaking existing clients.
    #[command(
        long_about = "Roll the CA over to a new root without breaking existing clients, \
                            in three phases that the gateway runs by itself (and continues \
                            after a restart):\n\n\
                            1. trust old and new roots together: the gateway accepts both, and \
                            every certificate issued now carries both in its ca.pem, while the \
                            old root keeps signing for the propagation period (workloads pick \
                            the new root up on their own renewals);\n\
                            2. switch signing to the new root's intermediate and re-issue the \
                            gateway's identity;\n\
                            3. drop the old root once nothing it signed is still valid.\n\n\
                            `meshgate ca show` prints the phase. --force finishes the roll-over \
                            in progress (or a new one) at once: it switches signing and drops \
                            the old root even while certificates it signed are valid (for a \
                            compromised root).",
        after_help = "Examples:\n  meshgate ca rotate-root\n  meshgate ca rotate-root --propagation 2h\n  \
                      meshgate ca rotate-root --force"
    )]
    RotateRoot(CaRotateArgs),
}

/// `meshgate ca show`.
#[derive(Debug, Args)]
pub(crate) struct CaShowArgs {
    /// Print the admin API's JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    /// Connection to the gateway.
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// `meshgate ca rotate-root`.
#[derive(Debug, Args)]
pub(crate) struct CaRotateArgs {
    /// Finish now: switch signing at once and drop the old root, even if
    /// certificates it signed are still valid.
    #[arg(long)]
    pub(crate) force: bool,

    /// How long old and new roots are trusted together before signing
    /// switches, e.g. 30m, 12h (default: 60 % of the CA's default
    /// certificate lifetime; 0 switches at once).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) propagation: Option<core::time::Duration>,

    /// Connection to the gateway.
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// Parses `90s`, `30m`, `24h`, `7d` (or a bare number of seconds).
pub(crate) fn parse_duration(s: &str) -> Result<core::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 90s, 30m, 24h or 7d, got {s:?}"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use s, m, h or d)"
            ));
        }
    };
    n.checked_mul(mult)
        .map(core::time::Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_help_states_the_limits_defaults() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("serve")
            .expect("serve")
            .render_long_help()
            .to_string()
            .replace('\n', " ");
        let d = meshgate_config::settings::Limits::default();
        for (name, value) in [
            ("maxConnections", d.max_connections.to_string()),
            (
                "maxConnectionsPerSource",
                d.max_connections_per_source.to_string(),
            ),
            ("headTimeout", format!("{}s", d.head_timeout.as_secs())),
            ("idleTimeout", format!("{}s", d.idle_timeout.as_secs())),
            (
                "tcpIdleTimeout",
                format!("{}h", d.tcp_idle_timeout.as_secs() / 3600),
            ),
            ("maxRequestHeadBytes", d.max_request_head_bytes.to_string()),
            (
                "upstreamConnectTimeout",
                format!("{}s", d.upstream_connect_timeout.as_secs()),
            ),
        ] {
            assert!(
                help.contains(&format!("{name} [{value}]")),
                "serve --help must state {name} [{value}]: {help}"
            );
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_duration("90s"),
            Ok(core::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("30m"),
            Ok(core::time::Duration::from_secs(1800))
        );
        assert_eq!(
            parse_duration("24h"),
            Ok(core::time::Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_duration("2d"),
            Ok(core::time::Duration::from_secs(172_800))
        );
        assert_eq!(
            parse_duration("60"),
            Ok(core::time::Duration::from_secs(60))
        );
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn listen_overrides_parse() {
        let o: ListenOverride = "http=127.0.0.1:0".parse().expect("valid");
        assert_eq!(o.name, "http");
        assert_eq!(o.addr.port(), 0);
        assert!("127.0.0.1:0".parse::<ListenOverride>().is_err());
        assert!("=127.0.0.1:0".parse::<ListenOverride>().is_err());
        assert!("http=nowhere".parse::<ListenOverride>().is_err());
    }

    #[test]
    fn workers_must_be_between_1_and_1024() {
        let workers = |n: &str| match Cli::try_parse_from(["meshgate", "serve", "--workers", n]) {
            Ok(Cli {
                command: Command::Serve(s),
                ..
            }) => Ok(s.workers),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(workers("1"), Ok(Some(1)));
        assert_eq!(workers("1024"), Ok(Some(1024)));
        for bad in ["0", "1025", "two", ""] {
            let e = workers(bad).expect_err(bad);
            assert!(e.contains("--workers"), "{e}");
        }
    }

    #[test]
    fn get_accepts_kubectl_style_aliases() {
        let cli = Cli::try_parse_from(["meshgate", "get", "pa"]).expect("parses");
        match cli.command {
            Command::Get(g) => assert_eq!(g.kind, GetKind::Peerauthentication),
            other => panic!("unexpected {other:?}"),
        }
    }
}
