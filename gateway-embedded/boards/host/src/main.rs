//! meshgate edge node as a Linux process: the same library code as the
//! boards (`meshgate_edge::node::run`), on embassy's std executor with an
//! embassy-net stack over a TAP device. Used by the host-simulation tests
//! (network namespaces + TAP); it is not a product build.
//!
//! What differs from a board, and only here:
//! - the network device is a TAP interface (`--tap`, must exist, e.g.
//!   `ip tuntap add mode tap NAME`), with a static IPv4 configuration;
//! - credentials live in two files in `--state-dir` (A/B slots);
//! - randomness (node key, TLS, TCP sequence numbers) comes from a ChaCha20
//!   RNG seeded from the OS, or from `--seed N` so a test run can be
//!   repeated. A seeded RNG makes every key predictable: it exists only in
//!   this test binary; the board images use the hardware RNG.
//!
//! Which local ports the node listens on, and which devices it exposes,
//! come from the gateway's configuration push, as on the boards.

use core::net::{Ipv4Addr, SocketAddrV4};
use core::str::FromStr;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use embassy_executor::{Executor, Spawner};
use embassy_net::{Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use meshgate_core::rotation::RenewalPolicy;
use meshgate_edge::creds::{CredStore, Credentials, FileSlots, GatewayAddr, SCRATCH_LEN};
use meshgate_edge::enroll::NodeKey;
use meshgate_edge::node::{self, NodeBuffers, SlotBuffers, WebBuffers, WebPage};
use meshgate_edge::tunnel::NodeState;
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, RngCore, SeedableRng};

/// Bridge slots: legacy sockets listening or carrying a stream.
const SLOTS: usize = 6;
/// Sockets of the stack: the slots, the tunnel, the web page.
const SOCKETS: usize = SLOTS + 2;

const USAGE: &str = "\
usage: meshgate-edge-host --tap NAME --ip A.B.C.D/PREFIX [--router A.B.C.D]
         --state-dir DIR [--seed N] [--mac 02:xx:xx:xx:xx:xx] [--http-port N]
         [--gateway A.B.C.D:PORT --gateway-id spiffe://TD/ns/NS/sa/SA
          --root FILE --token TOKEN]      (provisioning, first boot only)

The provisioning flags are needed only while --state-dir holds no
credentials; after enrollment the stored credentials are used. Without
them, a fresh node serves its first-time setup page on --http-port
(default 80), which later shows its status.
--root is the trust root (DER or PEM) that verifies the gateway.
--seed seeds the test RNG (keys become predictable: tests only).";

/// Command-line settings.
struct Args {
    tap: String,
    ip: Ipv4Cidr,
    router: Option<Ipv4Addr>,
    state_dir: PathBuf,
    seed: Option<u64>,
    mac: [u8; 6],
    http_port: u16,
    gateway: Option<SocketAddrV4>,
    gateway_id: Option<String>,
    root: Option<PathBuf>,
    token: Option<String>,
}

/// A command-line problem, reported with the usage text.
#[derive(Debug)]
struct ArgError(String);

impl core::fmt::Display for ArgError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

fn parse_cidr(s: &str) -> Result<Ipv4Cidr, ArgError> {
    let bad = || ArgError(format!("--ip: expected A.B.C.D/PREFIX, got {s:?}"));
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip = Ipv4Addr::from_str(ip).map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok(Ipv4Cidr::new(ip, prefix))
}

fn parse_mac(s: &str) -> Result<[u8; 6], ArgError> {
    let bad = || ArgError(format!("--mac: expected six hex bytes, got {s:?}"));
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    // smoltcp refuses a multicast source address.
    if parts.next().is_some() || mac[0] & 1 != 0 {
        return Err(bad());
    }
    Ok(mac)
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Self, ArgError> {
        let mut tap = None;
        let mut ip = None;
        let mut router = None;
        let mut state_dir = None;
        let mut seed = None;
        let mut mac = [0x02, 0x4d, 0x47, 0x00, 0x00, 0x02];
        let mut http_port = 80;
        let mut gateway = None;
        let mut gateway_id = None;
        let mut root = None;
        let mut token = None;
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| ArgError(format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "--tap" => tap = Some(value()?),
                "--ip" => ip = Some(parse_cidr(&value()?)?),
                "--router" => {
                    let v = value()?;
                    router = Some(
                        Ipv4Addr::from_str(&v)
                            .map_err(|_| ArgError(format!("--router: bad address {v:?}")))?,
                    );
                }
                "--state-dir" => state_dir = Some(PathBuf::from(value()?)),
                "--seed" => {
                    let v = value()?;
                    seed = Some(
                        v.parse()
                            .map_err(|_| ArgError(format!("--seed: not a number: {v:?}")))?,
                    );
                }
                "--mac" => mac = parse_mac(&value()?)?,
                "--http-port" => {
                    let v = value()?;
                    http_port = v
                        .parse()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| ArgError(format!("--http-port: bad port {v:?}")))?;
                }
                "--gateway" => {
                    let v = value()?;
                    gateway = Some(SocketAddrV4::from_str(&v).map_err(|_| {
                        ArgError(format!("--gateway: expected A.B.C.D:PORT, got {v:?}"))
                    })?);
                }
                "--gateway-id" => gateway_id = Some(value()?),
                "--root" => root = Some(PathBuf::from(value()?)),
                "--token" => token = Some(value()?),
                other => return Err(ArgError(format!("unknown flag {other:?}"))),
            }
        }
        Ok(Args {
            tap: tap.ok_or_else(|| ArgError("--tap is required".into()))?,
            ip: ip.ok_or_else(|| ArgError("--ip is required".into()))?,
            router,
            state_dir: state_dir.ok_or_else(|| ArgError("--state-dir is required".into()))?,
            seed,
            mac,
            http_port,
            gateway,
            gateway_id,
            root,
            token,
        })
    }
}

/// A DER certificate from a DER or PEM file (the first PEM block).
fn read_root(path: &PathBuf) -> Result<Vec<u8>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let Ok(text) = core::str::from_utf8(&data) else {
        return Ok(data);
    };
    let Some(start) = text.find("-----BEGIN CERTIFICATE-----") else {
        return Ok(data);
    };
    let body = &text[start + "-----BEGIN CERTIFICATE-----".len()..];
    let end = body
        .find("-----END CERTIFICATE-----")
        .ok_or_else(|| format!("{}: unterminated PEM block", path.display()))?;
    base64_decode(&body[..end]).ok_or_else(|| format!("{}: bad base64 in PEM", path.display()))
}

/// Standard base64 with padding, whitespace ignored.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

fn provisioning_given(args: &Args) -> bool {
    args.gateway.is_some()
        || args.gateway_id.is_some()
        || args.token.is_some()
        || args.root.is_some()
}

/// First boot: a new key from the RNG and the provisioning flags.
fn provision(args: &Args, rng: &mut ChaCha20Rng) -> Result<Credentials, String> {
    let missing = |f: &str| format!("no stored credentials and {f} not given");
    let gateway = args.gateway.ok_or_else(|| missing("--gateway"))?;
    let gateway_id = args
        .gateway_id
        .as_deref()
        .ok_or_else(|| missing("--gateway-id"))?;
    let token = args.token.as_deref().ok_or_else(|| missing("--token"))?;
    let root = read_root(args.root.as_ref().ok_or_else(|| missing("--root"))?)?;
    let key = NodeKey::generate(rng);
    let addr = GatewayAddr {
        ip: gateway.ip().octets(),
        port: gateway.port(),
    };
    Credentials::provision(&key, addr, gateway_id, token)
        .and_then(|c| c.with_bootstrap_root(&root))
        .map_err(|e| format!("provisioning: {e}"))
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn node_task(spawner: Spawner, args: Box<Args>, device: TunTapDevice) {
    let mut rng = match args.seed {
        Some(seed) => {
            log::warn!("test RNG seeded with {seed}: keys are predictable");
            ChaCha20Rng::seed_from_u64(seed)
        }
        None => {
            let mut seed = [0u8; 32];
            OsRng.fill_bytes(&mut seed);
            ChaCha20Rng::from_seed(seed)
        }
    };
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: args.ip,
        gateway: args.router,
        dns_servers: heapless::Vec::new(),
    });
    let resources = Box::leak(Box::new(StackResources::<SOCKETS>::new()));
    let (stack, runner) = embassy_net::new(device, config, resources, rng.next_u64());
    match net_task(runner) {
        Ok(token) => spawner.spawn(token),
        Err(_) => {
            log::error!("network task already running");
            std::process::exit(1);
        }
    }

    let slots = match FileSlots::new(&args.state_dir) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{}: {e}", args.state_dir.display());
            std::process::exit(1);
        }
    };
    let mut store = CredStore::new(slots);
    let bufs = Box::leak(Box::new(NodeBuffers::new()));
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let creds = match store.load(&mut scratch) {
        Ok(Some(c)) => {
            log::info!("loaded credentials (enrolled: {})", c.is_enrolled());
            c
        }
        Ok(None) | Err(_) => {
            let creds = if provisioning_given(&args) {
                match provision(&args, &mut rng) {
                    Ok(c) => c,
                    Err(e) => {
                        log::error!("{e}");
                        std::process::exit(2);
                    }
                }
            } else {
                log::info!("not provisioned: setup page on port {}", args.http_port);
                let form = node::setup_page(stack, bufs, args.http_port).await;
                let key = NodeKey::generate(&mut rng);
                match form.credentials(&key) {
                    Ok(c) => c,
                    Err(e) => {
                        log::error!("setup: {e}");
                        std::process::exit(2);
                    }
                }
            };
            if store.save(&creds, &mut scratch).is_err() {
                log::warn!(
                    "could not save provisioning to {}",
                    args.state_dir.display()
                );
            }
            log::info!("provisioned a new node key");
            creds
        }
    };
    let gw = creds.gateway();
    log::info!(
        "node {} on {}, gateway {}:{}",
        args.ip,
        args.tap,
        Ipv4Addr::from(gw.ip),
        gw.port
    );
    let state = match NodeState::new(creds, RenewalPolicy::ISTIO, None, rng.next_u32()) {
        Ok(s) => Box::leak(Box::new(s)),
        Err(e) => {
            log::error!("node state: {e}");
            std::process::exit(1);
        }
    };
    let slot_bufs = Box::leak(Box::new([const { SlotBuffers::new() }; SLOTS]));
    let web = WebPage {
        port: args.http_port,
        bufs: Box::leak(Box::new(WebBuffers::new())),
    };
    node::run(
        stack,
        state,
        &mut store,
        &mut rng,
        bufs,
        slot_bufs,
        Some(web),
    )
    .await;
    log::warn!("node revoked: forwarding stopped");
    std::process::exit(3);
}

/// Logs to stderr with a monotonic timestamp, `MESHGATE_LOG=debug` for
/// more.
struct StderrLogger {
    start: std::time::Instant,
}

impl log::Log for StderrLogger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let t = self.start.elapsed();
            let _ = writeln!(
                std::io::stderr(),
                "[{:>4}.{:03}] {:<5} {}",
                t.as_secs(),
                t.subsec_millis(),
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let logger = Box::leak(Box::new(StderrLogger {
        start: std::time::Instant::now(),
    }));
    if log::set_logger(logger).is_ok() {
        let level = match std::env::var("MESHGATE_LOG").as_deref() {
            Ok("debug") => log::LevelFilter::Debug,
            Ok("trace") => log::LevelFilter::Trace,
            _ => log::LevelFilter::Info,
        };
        log::set_max_level(level);
    }
    let mut device = match TunTapDevice::new(&args.tap) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: TAP device {}: {e}", args.tap);
            return ExitCode::from(1);
        }
    };
    device.set_hardware_address(args.mac);
    let executor = Box::leak(Box::new(Executor::new()));
    let args = Box::new(args);
    executor.run(|spawner| match node_task(spawner, args, device) {
        Ok(token) => spawner.spawn(token),
        Err(_) => {
            eprintln!("error: node task already running");
            std::process::exit(1);
        }
    })
}
