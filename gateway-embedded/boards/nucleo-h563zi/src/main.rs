//! meshgate edge node on the ST Nucleo-H563ZI.
//!
//! Wires the board and nothing else: clocks, the RMII Ethernet (LAN8742A
//! PHY), the hardware RNG, the last two 8 KiB flash sectors as credential
//! slots, the embassy-net stack with DHCP; then hands over to
//! `meshgate_edge::node::run`.
#![no_std]
#![no_main]

use embassy_executor::Spawner;
use embassy_net::StackResources;
use embassy_stm32::eth::{Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::flash::Flash;
use embassy_stm32::peripherals::{ETH, ETH_SMA, RNG};
use embassy_stm32::rng::Rng;
use embassy_stm32::time::Hertz;
use embassy_stm32::{Config, bind_interrupts, eth, peripherals, rng};
use meshgate_core::rotation::RenewalPolicy;
use meshgate_edge::creds::{CredStore, Credentials, FlashSlots, GatewayAddr, SCRATCH_LEN};
use meshgate_edge::enroll::NodeKey;
use meshgate_edge::node::{self, NodeBuffers, SlotBuffers, WebBuffers, WebPage};
use meshgate_edge::tunnel::NodeState;
use static_cell::StaticCell;
use {defmt_rtt as _, panic_probe as _};

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    RNG => rng::InterruptHandler<peripherals::RNG>;
});

type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;

/// Flash size of the STM32H563ZI and its sector size.
const FLASH_SIZE: u32 = 2 * 1024 * 1024;
const SECTOR: u32 = 8 * 1024;

/// Build-time provisioning (see build.rs); replaced by the setup page.
const GATEWAY_ID: Option<&str> = option_env!("MESHGATE_GATEWAY_ID");
const GATEWAY_IP: Option<&str> = option_env!("MESHGATE_GATEWAY_IP");
const TOKEN: Option<&str> = option_env!("MESHGATE_TOKEN");
const BOOTSTRAP_ROOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bootstrap-root.der"));
/// The gateway's edge-tunnel port.
const GATEWAY_PORT: u16 = 15443;
/// Bridge slots (legacy sockets, listening or carrying a stream); sized to
/// the RAM budget: about 5 KiB each.
const SLOTS: usize = 4;
/// Sockets: the slots, the tunnel, the web page, DHCP.
const SOCKETS: usize = SLOTS + 3;
/// The local setup and status page.
const HTTP_PORT: u16 = 80;

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device>) -> ! {
    runner.run().await
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in out.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let mut config = Config::default();
    {
        use embassy_stm32::rcc::*;
        // 8 MHz from the ST-LINK's MCO, PLL1 to 250 MHz; HSI48 feeds the RNG.
        config.rcc.hsi = None;
        config.rcc.hsi48 = Some(Default::default());
        config.rcc.hse = Some(Hse {
            freq: Hertz(8_000_000),
            mode: HseMode::BypassDigital,
        });
        config.rcc.pll1 = Some(Pll {
            source: PllSource::HSE,
            prediv: PllPreDiv::DIV2,
            mul: PllMul::MUL125,
            divp: Some(PllDiv::DIV2),
            divq: Some(PllDiv::DIV2),
            divr: None,
        });
        config.rcc.ahb_pre = AHBPrescaler::DIV1;
        config.rcc.apb1_pre = APBPrescaler::DIV1;
        config.rcc.apb2_pre = APBPrescaler::DIV1;
        config.rcc.apb3_pre = APBPrescaler::DIV1;
        config.rcc.sys = Sysclk::PLL1_P;
        config.rcc.voltage_scale = VoltageScale::Scale0;
    }
    let p = embassy_stm32::init(config);
    defmt::info!("meshgate edge node (Nucleo-H563ZI)");

    static RNG_CELL: StaticCell<Rng<'static, RNG>> = StaticCell::new();
    let rng = RNG_CELL.init(Rng::new(p.RNG, Irqs));

    // A locally administered MAC derived from the RNG on every boot would
    // change the DHCP lease; use the chip's unique ID instead.
    let uid = embassy_stm32::uid::uid();
    let mac = [0x02, 0x4d, uid[0], uid[1], uid[2], uid[3]];

    static PACKETS: StaticCell<PacketQueue<4, 4>> = StaticCell::new();
    let device = Ethernet::new(
        PACKETS.init(PacketQueue::<4, 4>::new()),
        p.ETH,
        Irqs,
        p.PA1,
        p.PA7,
        p.PC4,
        p.PC5,
        p.PG13,
        p.PB15,
        p.PG11,
        mac,
        p.ETH_SMA,
        p.PA2,
        p.PC1,
    );

    let net_config = embassy_net::Config::dhcpv4(Default::default());
    static RESOURCES: StaticCell<StackResources<SOCKETS>> = StaticCell::new();
    let seed = rng.next_u64();
    let (stack, runner) = embassy_net::new(
        device,
        net_config,
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(net_task(runner).expect("net task spawns once"));

    let flash = Flash::new_blocking(p.FLASH);
    let slots = FlashSlots::new(
        flash,
        [FLASH_SIZE - 2 * SECTOR, FLASH_SIZE - SECTOR],
        SECTOR,
    );
    let mut store = CredStore::new(slots);
    static BUFS: StaticCell<NodeBuffers> = StaticCell::new();
    let bufs = BUFS.init(NodeBuffers::new());
    static SLOT_BUFS: StaticCell<[SlotBuffers; SLOTS]> = StaticCell::new();
    let slots = SLOT_BUFS.init([const { SlotBuffers::new() }; SLOTS]);
    static SCRATCH: StaticCell<[u8; SCRATCH_LEN]> = StaticCell::new();
    let scratch = SCRATCH.init([0; SCRATCH_LEN]);

    let creds = match store.load(scratch) {
        Ok(Some(c)) => c,
        Ok(None) | Err(_) => {
            let creds = match first_boot(rng) {
                Some(c) => c,
                None => {
                    // Not provisioned at build time: the local setup page
                    // asks for the gateway, its identity, root and token.
                    defmt::info!("not provisioned: setup page on port {}", HTTP_PORT);
                    let form = node::setup_page(stack, bufs, HTTP_PORT).await;
                    let key = NodeKey::generate(rng);
                    match form.credentials(&key) {
                        Ok(c) => c,
                        Err(_) => {
                            defmt::warn!("setup form does not fit the credential store");
                            return;
                        }
                    }
                }
            };
            if store.save(&creds, scratch).is_err() {
                defmt::warn!("could not save provisioning to flash");
            }
            creds
        }
    };
    static STATE: StaticCell<NodeState> = StaticCell::new();
    let state = match NodeState::new(creds, RenewalPolicy::ISTIO, None, rng.next_u32()) {
        Ok(s) => STATE.init(s),
        Err(_) => return,
    };
    static WEB: StaticCell<WebBuffers> = StaticCell::new();
    let web = WebPage {
        port: HTTP_PORT,
        bufs: WEB.init(WebBuffers::new()),
    };
    node::run(stack, state, &mut store, rng, bufs, slots, Some(web)).await;
    defmt::warn!("node revoked: forwarding stopped");
}

/// Generates the node key with the hardware RNG and provisions it.
fn first_boot(rng: &mut Rng<'static, RNG>) -> Option<Credentials> {
    let ip = parse_ipv4(GATEWAY_IP?)?;
    let key = NodeKey::generate(rng);
    let creds = Credentials::provision(
        &key,
        GatewayAddr {
            ip,
            port: GATEWAY_PORT,
        },
        GATEWAY_ID?,
        TOKEN?,
    )
    .ok()?;
    if BOOTSTRAP_ROOT.is_empty() {
        return None;
    }
    creds.with_bootstrap_root(BOOTSTRAP_ROOT).ok()
}
