//! meshgate edge node on QEMU's `mps2-an386` (Cortex-M4F, LAN9118).
//!
//! Wires the board and nothing else: the SysTick time driver, the
//! semihosting logger, the LAN9118 driver written for this board, an
//! embassy-net stack with a static IPv4 address; then hands over to
//! `meshgate_edge::node::run`, the same code the Nucleo and host builds
//! run.
//!
//! This is a **test image**: the MPS2 has no true random number generator,
//! so randomness is a ChaCha20 generator seeded from the LAN9118's
//! free-running counter at boot (predictable, never for a real device),
//! and credentials live in RAM (lost at reset). Provisioning is baked in
//! at build time (see build.rs).
#![no_std]
#![no_main]

mod lan9118;
mod logger;
mod time_driver;

use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_time::{Duration, Timer};
use lan9118::Lan9118;
use meshgate_core::rotation::RenewalPolicy;
use meshgate_edge::creds::{CredStore, Credentials, GatewayAddr, SCRATCH_LEN, Slot, SlotStorage};
use meshgate_edge::enroll::NodeKey;
use meshgate_edge::node::{self, NodeBuffers, SlotBuffers, WebBuffers, WebPage};
use meshgate_edge::tunnel::NodeState;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use static_cell::StaticCell;

/// The MPS2's system clock, which drives the Cortex-M4 and its SysTick.
const CORE_HZ: u32 = 25_000_000;
/// Bridge slots and stack sockets (slots + tunnel + web page).
const SLOTS: usize = 3;
const SOCKETS: usize = SLOTS + 2;
/// The local setup and status page.
const HTTP_PORT: u16 = 80;
/// Used when the controller reports no station address.
const FALLBACK_MAC: [u8; 6] = [0x02, 0x4d, 0x47, 0x00, 0x03, 0x86];
/// The gateway's edge-tunnel port.
const GATEWAY_PORT: u16 = 15443;

const GATEWAY_ID: Option<&str> = option_env!("MESHGATE_GATEWAY_ID");
const GATEWAY_IP: Option<&str> = option_env!("MESHGATE_GATEWAY_IP");
const TOKEN: Option<&str> = option_env!("MESHGATE_TOKEN");
const NODE_IP: Option<&str> = option_env!("MESHGATE_NODE_IP");
const BOOTSTRAP_ROOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bootstrap-root.der"));

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log::error!("panic: {}", info);
    cortex_m_semihosting::debug::exit(cortex_m_semihosting::debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

/// Two credential slots in RAM: the A/B format is exercised, nothing
/// survives a reset.
struct RamSlots {
    slots: [[u8; SCRATCH_LEN]; 2],
    lens: [usize; 2],
}

impl SlotStorage for RamSlots {
    type Error = core::convert::Infallible;

    fn read_slot(&mut self, slot: Slot, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let i = usize::from(slot == Slot::B);
        let n = self.lens[i].min(buf.len());
        buf[..n].copy_from_slice(&self.slots[i][..n]);
        Ok(n)
    }

    fn write_slot(&mut self, slot: Slot, data: &[u8]) -> Result<(), Self::Error> {
        let i = usize::from(slot == Slot::B);
        let n = data.len().min(SCRATCH_LEN);
        self.slots[i][..n].copy_from_slice(&data[..n]);
        self.lens[i] = n;
        Ok(())
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Lan9118>) -> ! {
    runner.run().await
}

/// Wakes the polled LAN9118 driver every millisecond.
#[embassy_executor::task]
async fn poll_task() -> ! {
    loop {
        Timer::after(Duration::from_millis(1)).await;
        lan9118::poll_tick();
    }
}

/// Logs the frame counters now and then, so a boot log shows traffic.
#[embassy_executor::task]
async fn stats_task() -> ! {
    use core::sync::atomic::Ordering::Relaxed;
    let mut last = (u32::MAX, u32::MAX);
    loop {
        Timer::after(Duration::from_secs(5)).await;
        let now = (
            lan9118::RX_FRAMES.load(Relaxed),
            lan9118::TX_FRAMES.load(Relaxed),
        );
        if now != last {
            log::info!(
                "lan9118: {} frames received ({} dropped), {} sent",
                now.0,
                lan9118::RX_DROPPED.load(Relaxed),
                now.1
            );
            last = now;
        }
    }
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in out.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse_cidr(s: &str) -> Option<Ipv4Cidr> {
    let (ip, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    let ip = parse_ipv4(ip)?;
    (prefix <= 32).then(|| Ipv4Cidr::new(Ipv4Address::from(ip), prefix))
}

/// First boot: the node key from the RNG and the baked-in provisioning.
fn first_boot(rng: &mut ChaCha20Rng) -> Option<Credentials> {
    let ip = parse_ipv4(GATEWAY_IP?)?;
    if BOOTSTRAP_ROOT.is_empty() {
        return None;
    }
    let key = NodeKey::generate(rng);
    let addr = GatewayAddr {
        ip,
        port: GATEWAY_PORT,
    };
    let creds = Credentials::provision(&key, addr, GATEWAY_ID?, TOKEN?).ok()?;
    creds.with_bootstrap_root(BOOTSTRAP_ROOT).ok()
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let Some(cp) = cortex_m::Peripherals::take() else {
        return;
    };
    time_driver::start(cp.SYST, CORE_HZ);
    logger::init();
    log::info!("meshgate edge node (QEMU mps2-an386), test image");

    let Some(regs) = lan9118::Regs::take() else {
        return;
    };
    let device = match Lan9118::new(regs, FALLBACK_MAC) {
        Ok(d) => d,
        Err(e) => {
            log::error!("lan9118: {}", e);
            return;
        }
    };
    let mac = device.mac();
    log::info!(
        "lan9118: chip {:#06x}, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        device.chip(),
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    let seed = (u64::from(device.free_run()) << 32)
        ^ u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0x5a, 0xa5]);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);

    let cidr = NODE_IP
        .and_then(parse_cidr)
        .unwrap_or(Ipv4Cidr::new(Ipv4Address::new(10, 98, 0, 2), 24));
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: cidr,
        gateway: None,
        dns_servers: heapless::Vec::new(),
    });
    static RESOURCES: StaticCell<StackResources<SOCKETS>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        device,
        config,
        RESOURCES.init(StackResources::new()),
        rng.next_u64(),
    );
    match net_task(runner) {
        Ok(t) => spawner.spawn(t),
        Err(_) => return,
    }
    match poll_task() {
        Ok(t) => spawner.spawn(t),
        Err(_) => return,
    }
    match stats_task() {
        Ok(t) => spawner.spawn(t),
        Err(_) => return,
    }
    stack.wait_link_up().await;
    log::info!("link up");
    stack.wait_config_up().await;
    log::info!("network up: {} (answers ARP and ping)", cidr);

    static STORE: StaticCell<CredStore<RamSlots>> = StaticCell::new();
    let store = STORE.init(CredStore::new(RamSlots {
        slots: [[0; SCRATCH_LEN]; 2],
        lens: [0; 2],
    }));
    static SCRATCH: StaticCell<[u8; SCRATCH_LEN]> = StaticCell::new();
    let scratch = SCRATCH.init([0; SCRATCH_LEN]);
    static BUFS: StaticCell<NodeBuffers> = StaticCell::new();
    let bufs = BUFS.init(NodeBuffers::new());
    let creds = match first_boot(&mut rng) {
        Some(c) => c,
        None => {
            log::info!(
                "not provisioned at build time: setup page on port {}",
                HTTP_PORT
            );
            let form = node::setup_page(stack, bufs, HTTP_PORT).await;
            let key = NodeKey::generate(&mut rng);
            match form.credentials(&key) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("setup: {}", e);
                    return;
                }
            }
        }
    };
    if store.save(&creds, scratch).is_err() {
        log::warn!("could not save provisioning");
    }
    log::info!("provisioned a new node key");
    static STATE: StaticCell<NodeState> = StaticCell::new();
    let state = match NodeState::new(creds, RenewalPolicy::ISTIO, None, rng.next_u32()) {
        Ok(s) => STATE.init(s),
        Err(e) => {
            log::error!("node state: {}", e);
            return;
        }
    };
    static SLOT_BUFS: StaticCell<[SlotBuffers; SLOTS]> = StaticCell::new();
    let slots = SLOT_BUFS.init([const { SlotBuffers::new() }; SLOTS]);
    static WEB: StaticCell<WebBuffers> = StaticCell::new();
    let web = WebPage {
        port: HTTP_PORT,
        bufs: WEB.init(WebBuffers::new()),
    };
    node::run(stack, state, store, &mut rng, bufs, slots, Some(web)).await;
    log::warn!("node revoked: forwarding stopped");
}
