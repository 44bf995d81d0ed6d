//! An embassy-net driver for the SMSC LAN9118 Ethernet controller (the
//! LAN9220 of ARM's MPS2 boards is register-compatible), as QEMU models it
//! for `mps2-an386` at 0x4020_0000.
//!
//! The controller is used in its simplest mode: 32-bit PIO through the RX
//! and TX data FIFOs, one frame per TX command, no checksum offload, no
//! interrupts. The driver is *polled*: when nothing is pending it parks
//! the network runner's waker in [`POLL_WAKER`], and a board task wakes it
//! every millisecond ([`poll_tick`]). (The chip's interrupt, IRQ 13 on the
//! AN386, would save those wake-ups; it needs the NVIC set up and is not
//! used yet.)
//!
//! Register use, checked against QEMU's model (hw/net/lan9118.c):
//! - identification: `BYTE_TEST` reads 0x8765_4321, `ID_REV` has chip id
//!   0x0118 (or 0x9220 on the real board) in its upper half;
//! - reset: `HW_CFG.SRST`, then wait for it to clear and `PMT_CTRL.READY`;
//! - MAC registers go through `MAC_CSR_CMD`/`MAC_CSR_DATA` (busy bit 31,
//!   read bit 30); PHY registers through the MAC's `MII_ACC`/`MII_DATA`
//!   (PHY address 1, busy bit 0, write bit 1);
//! - receive: `RX_FIFO_INF[23:16]` counts status words; each `RX_STATUS`
//!   word gives the frame length (with its 4-byte FCS) in bits 29:16 and the
//!   error summary in bit 15; the frame follows in `RX_DATA` as
//!   little-endian words;
//! - transmit: `TX_CMD_A` (first + last segment, buffer length),
//!   `TX_CMD_B` (frame length), then the frame as little-endian words into
//!   `TX_DATA`; `TX_FIFO_INF[15:0]` is the free space and `[23:16]` the
//!   number of TX status words, which are popped so the status FIFO never
//!   fills.

use core::sync::atomic::{AtomicU32, Ordering};
use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;
use embassy_time::{Duration, Instant};

/// Largest Ethernet frame without FCS (1500-byte IP MTU + 14-byte header).
pub(crate) const MTU: usize = 1514;

/// Woken by [`poll_tick`]; the driver registers the runner's waker here
/// whenever it has nothing to do.
pub(crate) static POLL_WAKER: AtomicWaker = AtomicWaker::new();

/// Called periodically by a board task: lets the runner poll the FIFOs.
pub(crate) fn poll_tick() {
    POLL_WAKER.wake();
}

mod mmio {
    //! The only `unsafe` of the board: volatile access to the LAN9118's
    //! 256-byte register block.
    #![allow(unsafe_code)]

    use core::sync::atomic::{AtomicBool, Ordering};

    /// Base address of the LAN9118 on the MPS2 AN385/AN386 FPGA images.
    const AN386_BASE: usize = 0x4020_0000;

    static TAKEN: AtomicBool = AtomicBool::new(false);

    /// Exclusive access to the register block.
    pub(crate) struct Regs {
        base: usize,
    }

    impl Regs {
        /// The AN386's LAN9118, once (a second call returns `None`), so
        /// only one driver instance ever touches the FIFOs.
        pub(crate) fn take() -> Option<Self> {
            if TAKEN.swap(true, Ordering::AcqRel) {
                return None;
            }
            Some(Regs { base: AN386_BASE })
        }

        pub(crate) fn read(&self, offset: usize) -> u32 {
            let addr = self.base + (offset & 0xfc);
            // SAFETY: `addr` is a 4-byte aligned address inside the 256-byte
            // register block of the LAN9118, which this board maps as device
            // memory at AN386_BASE; `Regs` exists once (see `take`), so no
            // other code accesses the block, and a 32-bit volatile read is
            // the access width the controller supports.
            unsafe { core::ptr::read_volatile(addr as *const u32) }
        }

        pub(crate) fn write(&self, offset: usize, value: u32) {
            let addr = self.base + (offset & 0xfc);
            // SAFETY: as in `read`: aligned, inside the register block,
            // exclusive, 32-bit volatile write.
            unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
        }
    }
}

pub(crate) use mmio::Regs;

// System control and status registers (byte offsets).
const RX_DATA: usize = 0x00;
const TX_DATA: usize = 0x20;
const RX_STATUS: usize = 0x40;
const TX_STATUS: usize = 0x48;
const ID_REV: usize = 0x50;
const INT_STS: usize = 0x58;
const INT_EN: usize = 0x5c;
const BYTE_TEST: usize = 0x64;
const RX_CFG: usize = 0x6c;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7c;
const TX_FIFO_INF: usize = 0x80;
const PMT_CTRL: usize = 0x84;
const FREE_RUN: usize = 0x9c;
const MAC_CSR_CMD: usize = 0xa4;
const MAC_CSR_DATA: usize = 0xa8;

const BYTE_TEST_VALUE: u32 = 0x8765_4321;
const HW_CFG_SRST: u32 = 1 << 0;
const PMT_CTRL_READY: u32 = 1 << 0;
const TX_CFG_TX_ON: u32 = 1 << 1;
const CSR_BUSY: u32 = 1 << 31;
const CSR_READ: u32 = 1 << 30;

// MAC registers (indirect).
const MAC_CR: u32 = 1;
const MAC_ADDRH: u32 = 2;
const MAC_ADDRL: u32 = 3;
const MII_ACC: u32 = 6;
const MII_DATA: u32 = 7;
const MAC_CR_RXEN: u32 = 1 << 2;
const MAC_CR_TXEN: u32 = 1 << 3;
const MAC_CR_FDPX: u32 = 1 << 20;
const MII_BUSY: u32 = 1 << 0;
const MII_WRITE: u32 = 1 << 1;
const PHY_ADDR: u32 = 1;

// PHY registers.
const PHY_BCR: u32 = 0;
const PHY_BSR: u32 = 1;
const PHY_BCR_AUTONEG: u32 = 1 << 12;
const PHY_BCR_RESTART_AN: u32 = 1 << 9;
const PHY_BSR_LINK: u32 = 1 << 2;

// Frame status and commands.
const RX_STS_LEN_SHIFT: u32 = 16;
const RX_STS_LEN_MASK: u32 = 0x3fff;
const RX_STS_ERROR: u32 = 1 << 15;
const RX_STS_FILTER_FAIL: u32 = 1 << 30;
const TX_CMD_A_FIRST: u32 = 1 << 13;
const TX_CMD_A_LAST: u32 = 1 << 12;

/// Busy-wait bound for register handshakes (QEMU completes them at once;
/// the real chip within microseconds).
const SPIN: u32 = 100_000;

/// How often the PHY's link bit is re-read.
const LINK_POLL: Duration = Duration::from_millis(500);

/// Why the controller could not be brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InitError {
    /// `BYTE_TEST` did not read back its fixed pattern: no LAN9118 here.
    NotFound(u32),
    /// The chip id is not a LAN9118-family part.
    UnknownChip(u32),
    /// A reset or register handshake did not finish.
    Timeout,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NotFound(v) => write!(f, "no LAN9118 (BYTE_TEST read {v:#010x})"),
            InitError::UnknownChip(id) => write!(f, "unknown chip id {id:#06x}"),
            InitError::Timeout => f.write_str("register handshake timed out"),
        }
    }
}

/// Frames received (good), dropped (errors, too long) and sent; read by
/// the board's status log.
pub(crate) static RX_FRAMES: AtomicU32 = AtomicU32::new(0);
pub(crate) static RX_DROPPED: AtomicU32 = AtomicU32::new(0);
pub(crate) static TX_FRAMES: AtomicU32 = AtomicU32::new(0);

/// The first few received frames are logged (type and source), so a boot
/// log shows traffic arriving even before any socket uses it.
const LOG_FIRST_FRAMES: u32 = 8;

/// The driver.
pub(crate) struct Lan9118 {
    regs: Regs,
    mac: [u8; 6],
    chip: u32,
    rx: [u8; MTU],
    tx: [u8; MTU],
    link: bool,
    link_checked: Option<Instant>,
}

impl Lan9118 {
    /// Resets and configures the controller: MAC address from the chip
    /// (QEMU's `-nic ...,mac=`, or the board EEPROM), else `fallback_mac`;
    /// receive our unicast and broadcast frames; transmit on; PHY
    /// auto-negotiation restarted.
    pub(crate) fn new(regs: Regs, fallback_mac: [u8; 6]) -> Result<Self, InitError> {
        let test = regs.read(BYTE_TEST);
        if test != BYTE_TEST_VALUE {
            return Err(InitError::NotFound(test));
        }
        let chip = regs.read(ID_REV) >> 16;
        if !matches!(chip, 0x0115..=0x0118 | 0x0215..=0x0218 | 0x9220 | 0x9221) {
            return Err(InitError::UnknownChip(chip));
        }
        regs.write(HW_CFG, HW_CFG_SRST);
        spin_until(|| regs.read(HW_CFG) & HW_CFG_SRST == 0)?;
        spin_until(|| regs.read(PMT_CTRL) & PMT_CTRL_READY != 0)?;
        let mut dev = Lan9118 {
            regs,
            mac: [0; 6],
            chip,
            rx: [0; MTU],
            tx: [0; MTU],
            link: false,
            link_checked: None,
        };
        // Polled operation: no interrupts, and stale status cleared.
        dev.regs.write(INT_EN, 0);
        dev.regs.write(INT_STS, u32::MAX);
        let lo = dev.mac_read(MAC_ADDRL)?.to_le_bytes();
        let hi = dev.mac_read(MAC_ADDRH)?.to_le_bytes();
        let mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
        // An all-zero, all-ones or multicast address is no station address.
        dev.mac = if mac == [0; 6] || mac == [0xff; 6] || mac[0] & 1 != 0 {
            dev.mac_write(
                MAC_ADDRL,
                u32::from_le_bytes([
                    fallback_mac[0],
                    fallback_mac[1],
                    fallback_mac[2],
                    fallback_mac[3],
                ]),
            )?;
            dev.mac_write(
                MAC_ADDRH,
                u32::from(fallback_mac[4]) | (u32::from(fallback_mac[5]) << 8),
            )?;
            fallback_mac
        } else {
            mac
        };
        // No RX offset or end padding: frames start at a word boundary.
        dev.regs.write(RX_CFG, 0);
        dev.regs.write(TX_CFG, TX_CFG_TX_ON);
        // Perfect filtering of our unicast address plus broadcast (the
        // reset value is promiscuous).
        dev.mac_write(MAC_CR, MAC_CR_RXEN | MAC_CR_TXEN | MAC_CR_FDPX)?;
        dev.phy_write(PHY_BCR, PHY_BCR_AUTONEG | PHY_BCR_RESTART_AN)?;
        Ok(dev)
    }

    /// The station address in use.
    pub(crate) fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The free-running 25 MHz counter (`FREE_RUN`): the time since the
    /// chip came out of reset, the test image's only source of boot-time
    /// variation.
    pub(crate) fn free_run(&self) -> u32 {
        self.regs.read(FREE_RUN)
    }

    /// The chip id from `ID_REV`.
    pub(crate) fn chip(&self) -> u32 {
        self.chip
    }

    fn mac_wait(&self) -> Result<(), InitError> {
        spin_until(|| self.regs.read(MAC_CSR_CMD) & CSR_BUSY == 0)
    }

    fn mac_read(&self, reg: u32) -> Result<u32, InitError> {
        self.mac_wait()?;
        self.regs.write(MAC_CSR_CMD, CSR_BUSY | CSR_READ | reg);
        self.mac_wait()?;
        Ok(self.regs.read(MAC_CSR_DATA))
    }

    fn mac_write(&self, reg: u32, value: u32) -> Result<(), InitError> {
        self.mac_wait()?;
        self.regs.write(MAC_CSR_DATA, value);
        self.regs.write(MAC_CSR_CMD, CSR_BUSY | reg);
        self.mac_wait()
    }

    fn mii_wait(&self) -> Result<(), InitError> {
        for _ in 0..SPIN {
            if self.mac_read(MII_ACC)? & MII_BUSY == 0 {
                return Ok(());
            }
        }
        Err(InitError::Timeout)
    }

    fn phy_read(&self, reg: u32) -> Result<u32, InitError> {
        self.mii_wait()?;
        self.mac_write(MII_ACC, (PHY_ADDR << 11) | (reg << 6) | MII_BUSY)?;
        self.mii_wait()?;
        Ok(self.mac_read(MII_DATA)? & 0xffff)
    }

    fn phy_write(&self, reg: u32, value: u32) -> Result<(), InitError> {
        self.mii_wait()?;
        self.mac_write(MII_DATA, value & 0xffff)?;
        self.mac_write(
            MII_ACC,
            (PHY_ADDR << 11) | (reg << 6) | MII_WRITE | MII_BUSY,
        )?;
        self.mii_wait()
    }

    /// Pops the next good frame into `self.rx`; returns its length.
    /// Frames with errors or too long for the buffer are read out and
    /// dropped (the FIFO must be drained either way).
    fn rx_frame(&mut self) -> Option<usize> {
        loop {
            if (self.regs.read(RX_FIFO_INF) >> 16) & 0xff == 0 {
                return None;
            }
            let status = self.regs.read(RX_STATUS);
            let with_fcs = ((status >> RX_STS_LEN_SHIFT) & RX_STS_LEN_MASK) as usize;
            let words = with_fcs.div_ceil(4);
            let len = with_fcs.saturating_sub(4);
            let bad =
                status & (RX_STS_ERROR | RX_STS_FILTER_FAIL) != 0 || !(14..=MTU).contains(&len);
            for w in 0..words {
                let bytes = self.regs.read(RX_DATA).to_le_bytes();
                if bad {
                    continue;
                }
                for (k, b) in bytes.iter().enumerate() {
                    let at = w * 4 + k;
                    if at < len
                        && let Some(slot) = self.rx.get_mut(at)
                    {
                        *slot = *b;
                    }
                }
            }
            if bad {
                RX_DROPPED.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let n = RX_FRAMES.fetch_add(1, Ordering::Relaxed);
            if n < LOG_FIRST_FRAMES
                && let (Some(src), Some(ty)) = (self.rx.get(6..12), self.rx.get(12..14))
            {
                log::info!(
                    "lan9118: rx frame {} bytes, ethertype {:#06x}, from {:02x?}",
                    len,
                    u16::from_be_bytes([ty[0], ty[1]]),
                    src
                );
            }
            return Some(len);
        }
    }

    fn tx_ready(regs: &Regs) -> bool {
        // Drop TX status words: they only report what QEMU (and, with
        // collisions impossible in full duplex, the chip) always reports.
        while (regs.read(TX_FIFO_INF) >> 16) & 0xff != 0 {
            let _ = regs.read(TX_STATUS);
        }
        (regs.read(TX_FIFO_INF) & 0xffff) as usize >= MTU + 8
    }

    fn refresh_link(&mut self) {
        let now = Instant::now();
        if self
            .link_checked
            .is_some_and(|at| now.saturating_duration_since(at) < LINK_POLL)
        {
            return;
        }
        self.link_checked = Some(now);
        self.link = self
            .phy_read(PHY_BSR)
            .is_ok_and(|bsr| bsr & PHY_BSR_LINK != 0);
    }
}

fn spin_until(mut done: impl FnMut() -> bool) -> Result<(), InitError> {
    for _ in 0..SPIN {
        if done() {
            return Ok(());
        }
    }
    Err(InitError::Timeout)
}

/// A received frame.
pub(crate) struct RxToken<'a> {
    frame: &'a mut [u8],
}

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Room for one frame to send.
pub(crate) struct TxToken<'a> {
    regs: &'a Regs,
    buf: &'a mut [u8; MTU],
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        let frame = self.buf.get_mut(..len).unwrap_or(&mut []);
        let r = f(frame);
        // The token was handed out with FIFO space for a full frame; wait
        // (bounded) only if a frame was queued in between.
        let _ = spin_until(|| Lan9118::tx_ready(self.regs));
        let n = u32::try_from(len).unwrap_or(0);
        self.regs.write(TX_DATA, TX_CMD_A_FIRST | TX_CMD_A_LAST | n);
        self.regs.write(TX_DATA, n);
        for chunk in frame.chunks(4) {
            let mut word = [0u8; 4];
            word.get_mut(..chunk.len())
                .unwrap_or(&mut [])
                .copy_from_slice(chunk);
            self.regs.write(TX_DATA, u32::from_le_bytes(word));
        }
        TX_FRAMES.fetch_add(1, Ordering::Relaxed);
        r
    }
}

impl embassy_net_driver::Driver for Lan9118 {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if !Self::tx_ready(&self.regs) {
            POLL_WAKER.register(cx.waker());
            return None;
        }
        let Some(len) = self.rx_frame() else {
            POLL_WAKER.register(cx.waker());
            return None;
        };
        let Lan9118 { regs, rx, tx, .. } = self;
        Some((
            RxToken {
                frame: rx.get_mut(..len).unwrap_or(&mut []),
            },
            TxToken { regs, buf: tx },
        ))
    }

    fn transmit(&mut self, cx: &mut Context<'_>) -> Option<TxToken<'_>> {
        if !Self::tx_ready(&self.regs) {
            POLL_WAKER.register(cx.waker());
            return None;
        }
        let Lan9118 { regs, tx, .. } = self;
        Some(TxToken { regs, buf: tx })
    }

    fn link_state(&mut self, cx: &mut Context<'_>) -> LinkState {
        self.refresh_link();
        POLL_WAKER.register(cx.waker());
        if self.link {
            LinkState::Up
        } else {
            LinkState::Down
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(1);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
