//! What the node persists, and how.
//!
//! [`Credentials`] holds the node's private key, the gateway it talks to
//! (address and pinned SPIFFE identity), the one-time enrollment token until
//! it is used, and — once enrolled — the certificate chain, the trust roots
//! and the leaf's validity. Certificates live in one fixed DER arena sized
//! for the largest `core::wire` Certificate frame, so nothing allocates.
//!
//! [`CredStore`] keeps two slots (A/B) behind the small [`SlotStorage`]
//! trait: each save goes to the slot *not* holding the current record, with
//! a higher generation and a CRC-32, so a write torn by a power cut leaves
//! the previous credentials intact. Boards implement the trait with flash
//! ([`FlashSlots`] over `embedded-storage`'s `NorFlash`); the host uses a
//! file per slot (`FileSlots`, feature `std`).

use core::fmt;

use heapless::{String, Vec};
use meshgate_core::spiffe::SpiffeId;
use meshgate_core::time::UnixTime;
use meshgate_core::wire::{self, BoundedList, MAX_CERT_CHAIN, MAX_TOKEN_LEN, MAX_TRUST_ROOTS};
use serde::{Deserialize, Serialize};

use crate::der;
use crate::enroll::{NodeKey, SECRET_LEN};

/// Bytes of certificate DER the node can hold: a whole `Certificate` frame.
pub const DER_ARENA_LEN: usize = wire::MAX_FRAME_LEN;
/// Longest pinned gateway SPIFFE ID.
pub const MAX_GATEWAY_ID_LEN: usize = 256;
/// Largest encoded record (arena + strings + fixed fields).
pub const RECORD_MAX_LEN: usize = DER_ARENA_LEN + MAX_GATEWAY_ID_LEN + MAX_TOKEN_LEN + 128;

/// Where the gateway's tunnel endpoint is (IPv4: the node's stack is v4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GatewayAddr {
    /// IPv4 address, network byte order.
    pub ip: [u8; 4],
    /// TCP port of the tunnel (and enrollment) endpoint.
    pub port: u16,
}

/// Why credentials were rejected or could not be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CredsError {
    /// The pinned gateway ID is not a SPIFFE ID or is too long.
    BadGatewayId,
    /// The token is empty or longer than `MAX_TOKEN_LEN`.
    BadToken,
    /// The certificate chain and roots do not fit the DER arena.
    TooLarge,
    /// The leaf certificate is unreadable or is not for this node's key.
    LeafKeyMismatch,
    /// The certificate's validity is empty or inverted.
    BadValidity,
    /// The stored key is not a valid P-256 key.
    BadKey,
}

impl fmt::Display for CredsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredsError::BadGatewayId => "gateway identity is not a SPIFFE ID of acceptable length",
            CredsError::BadToken => "enrollment token is empty or too long",
            CredsError::TooLarge => "certificates exceed the node's storage",
            CredsError::LeafKeyMismatch => "issued certificate is not for this node's key",
            CredsError::BadValidity => "certificate validity is empty",
            CredsError::BadKey => "stored private key is invalid",
        })
    }
}

/// The node's persisted state.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    key: [u8; SECRET_LEN],
    gateway: GatewayAddr,
    gateway_id: String<MAX_GATEWAY_ID_LEN>,
    token: String<MAX_TOKEN_LEN>,
    arena: Vec<u8, DER_ARENA_LEN>,
    /// Byte ranges of the chain entries (leaf first) in `arena`.
    chain: Vec<(u16, u16), MAX_CERT_CHAIN>,
    /// Byte ranges of the trust roots in `arena`.
    roots: Vec<(u16, u16), MAX_TRUST_ROOTS>,
    validity: Option<(UnixTime, UnixTime)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the key nor the token is ever printed.
        f.debug_struct("Credentials")
            .field("gateway", &self.gateway)
            .field("gateway_id", &self.gateway_id)
            .field("enrolled", &self.is_enrolled())
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// First-boot credentials: a fresh key, where the gateway is, who it
    /// is, and the one-time token to enroll with. Add the trust root that
    /// verifies the gateway during enrollment with
    /// [`with_bootstrap_root`](Self::with_bootstrap_root).
    pub fn provision(
        key: &NodeKey,
        gateway: GatewayAddr,
        gateway_id: &str,
        token: &str,
    ) -> Result<Self, CredsError> {
        SpiffeId::parse(gateway_id).map_err(|_| CredsError::BadGatewayId)?;
        if token.is_empty() {
            return Err(CredsError::BadToken);
        }
        Ok(Credentials {
            key: key.to_bytes(),
            gateway,
            gateway_id: String::try_from(gateway_id).map_err(|_| CredsError::BadGatewayId)?,
            token: String::try_from(token).map_err(|_| CredsError::BadToken)?,
            arena: Vec::new(),
            chain: Vec::new(),
            roots: Vec::new(),
            validity: None,
        })
    }

    /// Trusts `root` (DER) for the enrollment connection. Enrollment
    /// replaces the roots with the bundle the gateway sends.
    pub fn with_bootstrap_root(mut self, root: &[u8]) -> Result<Self, CredsError> {
        let list: BoundedList<&[u8], 1> =
            BoundedList::from_slice(&[root]).map_err(|_| CredsError::TooLarge)?;
        fill(&mut self.arena, &mut self.roots, &list)?;
        Ok(self)
    }

    /// The node's key.
    pub fn key(&self) -> Result<NodeKey, CredsError> {
        NodeKey::from_bytes(&self.key).map_err(|_| CredsError::BadKey)
    }

    /// The gateway's address.
    pub fn gateway(&self) -> GatewayAddr {
        self.gateway
    }

    /// The pinned gateway identity (validated when stored).
    pub fn gateway_id(&self) -> Option<SpiffeId<'_>> {
        SpiffeId::parse(&self.gateway_id).ok()
    }

    /// The unused enrollment token, if not yet enrolled.
    pub fn token(&self) -> Option<&str> {
        (!self.token.is_empty()).then_some(self.token.as_str())
    }

    /// True once a certificate was issued.
    pub fn is_enrolled(&self) -> bool {
        !self.chain.is_empty()
    }

    fn slice(&self, (start, end): (u16, u16)) -> &[u8] {
        self.arena
            .get(usize::from(start)..usize::from(end))
            .unwrap_or(&[])
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.chain.iter().map(|r| self.slice(*r))
    }

    /// The leaf certificate, if enrolled.
    pub fn leaf(&self) -> Option<&[u8]> {
        self.chain.first().map(|r| self.slice(*r))
    }

    /// The trust roots (several during a roll-over).
    pub fn roots(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.roots.iter().map(|r| self.slice(*r))
    }

    /// The leaf's (notBefore, notAfter).
    pub fn validity(&self) -> Option<(UnixTime, UnixTime)> {
        self.validity
    }

    /// Installs an issued certificate for `key` (the current key after
    /// enrollment, a fresh one after a renewal with key rotation).
    ///
    /// Everything is checked before anything changes: the leaf must carry
    /// `key`'s public key, the validity must be sane and the DER must fit.
    /// On error the previous certificate and key stay in force. The token
    /// is cleared: it was single-use.
    pub fn install(
        &mut self,
        key: &NodeKey,
        cert: &wire::Certificate<'_>,
    ) -> Result<(), CredsError> {
        if cert.not_after <= cert.not_before {
            return Err(CredsError::BadValidity);
        }
        let leaf = cert
            .chain
            .as_slice()
            .first()
            .ok_or(CredsError::LeafKeyMismatch)?;
        let leaf_key = der::subject_public_key(leaf).ok_or(CredsError::LeafKeyMismatch)?;
        if leaf_key != key.public_sec1().as_slice() {
            return Err(CredsError::LeafKeyMismatch);
        }
        let mut arena = Vec::new();
        let mut chain = Vec::new();
        let mut roots = Vec::new();
        fill(&mut arena, &mut chain, &cert.chain)?;
        fill(&mut arena, &mut roots, &cert.roots)?;
        self.key = key.to_bytes();
        self.arena = arena;
        self.chain = chain;
        self.roots = roots;
        self.validity = Some((cert.not_before, cert.not_after));
        self.token.clear();
        Ok(())
    }
}

fn fill<const N: usize, const M: usize>(
    arena: &mut Vec<u8, DER_ARENA_LEN>,
    ranges: &mut Vec<(u16, u16), M>,
    items: &BoundedList<&[u8], N>,
) -> Result<(), CredsError> {
    for der in items.iter() {
        let start = u16::try_from(arena.len()).map_err(|_| CredsError::TooLarge)?;
        arena
            .extend_from_slice(der)
            .map_err(|_| CredsError::TooLarge)?;
        let end = u16::try_from(arena.len()).map_err(|_| CredsError::TooLarge)?;
        ranges
            .push((start, end))
            .map_err(|_| CredsError::TooLarge)?;
    }
    Ok(())
}

/// The serialised form (borrowed, postcard). Field order is the format;
/// bump [`RECORD_MAGIC`] on any change.
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    key: [u8; SECRET_LEN],
    gateway: GatewayAddr,
    gateway_id: &'a str,
    token: &'a str,
    #[serde(borrow)]
    chain: BoundedList<&'a [u8], MAX_CERT_CHAIN>,
    #[serde(borrow)]
    roots: BoundedList<&'a [u8], MAX_TRUST_ROOTS>,
    validity: Option<(UnixTime, UnixTime)>,
}

const RECORD_MAGIC: [u8; 4] = *b"MGE1";
/// magic, generation, payload length, CRC-32 of the payload.
const HEADER_LEN: usize = 16;

/// One of the two storage slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Slot {
    /// The first slot.
    A,
    /// The second slot.
    B,
}

impl Slot {
    fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// Raw storage for two credential slots.
pub trait SlotStorage {
    /// The medium's error.
    type Error: fmt::Debug;
    /// Reads up to `buf.len()` bytes from the start of `slot`; returns how
    /// many were read (fewer when the slot or file is shorter).
    fn read_slot(&mut self, slot: Slot, buf: &mut [u8]) -> Result<usize, Self::Error>;
    /// Replaces the contents of `slot` with `data`.
    fn write_slot(&mut self, slot: Slot, data: &[u8]) -> Result<(), Self::Error>;
}

/// Why loading or saving failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StoreError<E> {
    /// The medium failed.
    Storage(E),
    /// The scratch buffer is smaller than [`RECORD_MAX_LEN`] + header.
    ScratchTooSmall,
    /// The credentials could not be encoded.
    Encode,
    /// A slot held a record with a valid checksum that did not decode
    /// (written by an incompatible firmware).
    Corrupt,
}

impl<E: fmt::Debug> fmt::Display for StoreError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Storage(e) => write!(f, "credential storage failed: {e:?}"),
            StoreError::ScratchTooSmall => f.write_str("scratch buffer too small for a record"),
            StoreError::Encode => f.write_str("credentials could not be encoded"),
            StoreError::Corrupt => f.write_str("stored credentials do not decode"),
        }
    }
}

/// Scratch space [`CredStore`] needs for one record.
pub const SCRATCH_LEN: usize = HEADER_LEN + RECORD_MAX_LEN;

/// A/B credential storage with generations and checksums.
pub struct CredStore<S> {
    storage: S,
    /// Slot and generation of the newest valid record.
    current: Option<(Slot, u32)>,
}

impl<S: SlotStorage> CredStore<S> {
    /// Wraps `storage`; call [`load`](Self::load) before
    /// [`save`](Self::save) so saves go to the right slot.
    pub fn new(storage: S) -> Self {
        CredStore {
            storage,
            current: None,
        }
    }

    /// The storage, e.g. to erase it in tests.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    fn read_record(
        &mut self,
        slot: Slot,
        scratch: &mut [u8],
    ) -> Result<Option<(u32, usize)>, StoreError<S::Error>> {
        let n = self
            .storage
            .read_slot(slot, scratch)
            .map_err(StoreError::Storage)?;
        let data = scratch.get(..n).unwrap_or(&[]);
        let Some((header, payload)) = data.split_at_checked(HEADER_LEN) else {
            return Ok(None);
        };
        let word = |i: usize| {
            header
                .get(i..i + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes)
        };
        if header.get(..4) != Some(RECORD_MAGIC.as_slice()) {
            return Ok(None);
        }
        let (Some(generation), Some(len), Some(crc)) = (word(4), word(8), word(12)) else {
            return Ok(None);
        };
        let Some(payload) = usize::try_from(len).ok().and_then(|l| payload.get(..l)) else {
            return Ok(None);
        };
        if crc32(payload) != crc {
            // A torn write: ignore this slot, the other one is intact.
            return Ok(None);
        }
        Ok(Some((generation, payload.len())))
    }

    /// Loads the newest intact record, `Ok(None)` when neither slot holds
    /// one (first boot). `scratch` needs [`SCRATCH_LEN`] bytes.
    pub fn load(
        &mut self,
        scratch: &mut [u8],
    ) -> Result<Option<Credentials>, StoreError<S::Error>> {
        if scratch.len() < SCRATCH_LEN {
            return Err(StoreError::ScratchTooSmall);
        }
        let a = self.read_record(Slot::A, scratch)?.map(|(g, _)| g);
        let b = self.read_record(Slot::B, scratch)?.map(|(g, _)| g);
        // Generations increase by one per save and wrap; the newer of two
        // is the one the other is "behind" in wrapping arithmetic.
        let newest = match (a, b) {
            (None, None) => return Ok(None),
            (Some(ga), None) => (Slot::A, ga),
            (None, Some(gb)) => (Slot::B, gb),
            (Some(ga), Some(gb)) => {
                if gb.wrapping_sub(ga) as i32 > 0 {
                    (Slot::B, gb)
                } else {
                    (Slot::A, ga)
                }
            }
        };
        let Some((_, len)) = self.read_record(newest.0, scratch)? else {
            return Err(StoreError::Corrupt);
        };
        let payload = scratch
            .get(HEADER_LEN..HEADER_LEN + len)
            .ok_or(StoreError::Corrupt)?;
        let record: Record<'_> = postcard::from_bytes(payload).map_err(|_| StoreError::Corrupt)?;
        let creds = from_record(&record).map_err(|_| StoreError::Corrupt)?;
        self.current = Some(newest);
        Ok(Some(creds))
    }

    /// Saves `creds` to the slot not holding the current record.
    pub fn save(
        &mut self,
        creds: &Credentials,
        scratch: &mut [u8],
    ) -> Result<(), StoreError<S::Error>> {
        if scratch.len() < SCRATCH_LEN {
            return Err(StoreError::ScratchTooSmall);
        }
        let mut chain = BoundedList::new();
        for c in creds.chain() {
            chain.push(c).map_err(|_| StoreError::Encode)?;
        }
        let mut roots = BoundedList::new();
        for r in creds.roots() {
            roots.push(r).map_err(|_| StoreError::Encode)?;
        }
        let record = Record {
            key: creds.key,
            gateway: creds.gateway,
            gateway_id: &creds.gateway_id,
            token: &creds.token,
            chain,
            roots,
            validity: creds.validity,
        };
        let (header, body) = scratch.split_at_mut(HEADER_LEN);
        let len = postcard::to_slice(&record, body)
            .map_err(|_| StoreError::Encode)?
            .len();
        let payload = body.get(..len).ok_or(StoreError::Encode)?;
        let crc = crc32(payload);
        let (slot, generation) = match self.current {
            Some((slot, g)) => (slot.other(), g.wrapping_add(1)),
            None => (Slot::A, 1),
        };
        let len32 = u32::try_from(len).map_err(|_| StoreError::Encode)?;
        header[..4].copy_from_slice(&RECORD_MAGIC);
        header[4..8].copy_from_slice(&generation.to_le_bytes());
        header[8..12].copy_from_slice(&len32.to_le_bytes());
        header[12..16].copy_from_slice(&crc.to_le_bytes());
        let data = scratch.get(..HEADER_LEN + len).ok_or(StoreError::Encode)?;
        self.storage
            .write_slot(slot, data)
            .map_err(StoreError::Storage)?;
        self.current = Some((slot, generation));
        Ok(())
    }
}

fn from_record(r: &Record<'_>) -> Result<Credentials, CredsError> {
    NodeKey::from_bytes(&r.key).map_err(|_| CredsError::BadKey)?;
    SpiffeId::parse(r.gateway_id).map_err(|_| CredsError::BadGatewayId)?;
    let mut creds = Credentials {
        key: r.key,
        gateway: r.gateway,
        gateway_id: String::try_from(r.gateway_id).map_err(|_| CredsError::BadGatewayId)?,
        token: String::try_from(r.token).map_err(|_| CredsError::BadToken)?,
        arena: Vec::new(),
        chain: Vec::new(),
        roots: Vec::new(),
        validity: r.validity,
    };
    fill(&mut creds.arena, &mut creds.chain, &r.chain)?;
    fill(&mut creds.arena, &mut creds.roots, &r.roots)?;
    Ok(creds)
}

/// CRC-32 (IEEE 802.3, reflected), bitwise: a few hundred bytes per save
/// do not justify a 1 KiB table in flash.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// Two slots in NOR flash (`embedded-storage`), e.g. the last two sectors
/// of the MCU's internal flash.
pub struct FlashSlots<F> {
    flash: F,
    /// Offsets of slot A and B; each is `size` bytes, erase-aligned.
    offsets: [u32; 2],
    size: u32,
}

/// Why a flash slot operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FlashSlotError<E> {
    /// The flash driver failed.
    Flash(E),
    /// The record does not fit the slot.
    TooLarge,
    /// The flash's write granularity exceeds the staging buffer.
    Unaligned,
}

impl<F: embedded_storage::nor_flash::NorFlash> FlashSlots<F> {
    /// Slots at `offsets` (relative to the flash driver's origin), each
    /// `size` bytes; both must be multiples of the erase size.
    pub fn new(flash: F, offsets: [u32; 2], size: u32) -> Self {
        FlashSlots {
            flash,
            offsets,
            size,
        }
    }

    fn offset(&self, slot: Slot) -> u32 {
        match slot {
            Slot::A => self.offsets[0],
            Slot::B => self.offsets[1],
        }
    }
}

impl<F: embedded_storage::nor_flash::NorFlash> SlotStorage for FlashSlots<F> {
    type Error = FlashSlotError<F::Error>;

    fn read_slot(&mut self, slot: Slot, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let size = usize::try_from(self.size).map_err(|_| FlashSlotError::TooLarge)?;
        let n = buf.len().min(size);
        let dst = buf.get_mut(..n).ok_or(FlashSlotError::TooLarge)?;
        self.flash
            .read(self.offset(slot), dst)
            .map_err(FlashSlotError::Flash)?;
        Ok(n)
    }

    fn write_slot(&mut self, slot: Slot, data: &[u8]) -> Result<(), Self::Error> {
        const STAGE: usize = 64;
        let ws = F::WRITE_SIZE.max(1);
        if ws > STAGE || !STAGE.is_multiple_of(ws) {
            return Err(FlashSlotError::Unaligned);
        }
        if data.len() > usize::try_from(self.size).map_err(|_| FlashSlotError::TooLarge)? {
            return Err(FlashSlotError::TooLarge);
        }
        let base = self.offset(slot);
        self.flash
            .erase(base, base.saturating_add(self.size))
            .map_err(FlashSlotError::Flash)?;
        // Write through a staging buffer so the last chunk can be padded
        // to the write granularity with the erased value.
        let mut offset = base;
        for chunk in data.chunks(STAGE) {
            let mut stage = [0xffu8; STAGE];
            stage[..chunk.len()].copy_from_slice(chunk);
            let padded = chunk.len().div_ceil(ws) * ws;
            self.flash
                .write(offset, &stage[..padded])
                .map_err(FlashSlotError::Flash)?;
            offset =
                offset.saturating_add(u32::try_from(padded).map_err(|_| FlashSlotError::TooLarge)?);
        }
        Ok(())
    }
}

#[cfg(feature = "std")]
mod file {
    extern crate std;
    use std::path::PathBuf;
    use std::{fs, io};

    use super::{Slot, SlotStorage};

    /// Two files standing in for flash slots on the host. Each write goes
    /// to a temporary file that is then renamed over the slot, so a crash
    /// leaves either the old or the new content.
    pub struct FileSlots {
        dir: PathBuf,
    }

    impl FileSlots {
        /// Slots `creds-a.bin` and `creds-b.bin` in `dir` (created).
        pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
            let dir = dir.into();
            fs::create_dir_all(&dir)?;
            Ok(FileSlots { dir })
        }

        fn path(&self, slot: Slot) -> PathBuf {
            self.dir.join(match slot {
                Slot::A => "creds-a.bin",
                Slot::B => "creds-b.bin",
            })
        }
    }

    impl SlotStorage for FileSlots {
        type Error = io::ErrorKind;

        fn read_slot(&mut self, slot: Slot, buf: &mut [u8]) -> Result<usize, Self::Error> {
            match fs::read(self.path(slot)) {
                Ok(data) => {
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    Ok(n)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(e.kind()),
            }
        }

        fn write_slot(&mut self, slot: Slot, data: &[u8]) -> Result<(), Self::Error> {
            let path = self.path(slot);
            let tmp = path.with_extension("tmp");
            fs::write(&tmp, data).map_err(|e| e.kind())?;
            fs::rename(&tmp, &path).map_err(|e| e.kind())
        }
    }
}
#[cfg(feature = "std")]
pub use file::FileSlots;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pin::tests::TestCa;
    use rand_core::OsRng;
    use std::vec::Vec as StdVec;

    const GATEWAY_ID: &str = "spiffe://cluster.local/ns/meshgate-system/sa/gateway";
    const ADDR: GatewayAddr = GatewayAddr {
        ip: [10, 0, 0, 1],
        port: 15443,
    };

    /// Two in-memory slots with optional torn writes.
    #[derive(Default)]
    struct MemSlots {
        slots: [StdVec<u8>; 2],
        /// Truncate the next write to this many bytes (a power cut).
        tear_next: Option<usize>,
    }

    impl SlotStorage for MemSlots {
        type Error = ();
        fn read_slot(&mut self, slot: Slot, buf: &mut [u8]) -> Result<usize, ()> {
            let s = &self.slots[slot as usize];
            let n = s.len().min(buf.len());
            buf[..n].copy_from_slice(&s[..n]);
            Ok(n)
        }
        fn write_slot(&mut self, slot: Slot, data: &[u8]) -> Result<(), ()> {
            let n = self.tear_next.take().unwrap_or(data.len()).min(data.len());
            self.slots[slot as usize] = data[..n].to_vec();
            Ok(())
        }
    }

    fn issued(ca: &TestCa, key: &NodeKey) -> StdVec<u8> {
        use rcgen::{CertificateParams, PublicKeyData, SanType};
        struct Pub(StdVec<u8>);
        impl PublicKeyData for Pub {
            fn der_bytes(&self) -> &[u8] {
                &self.0
            }
            fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
                &rcgen::PKCS_ECDSA_P256_SHA256
            }
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = std::vec![SanType::URI(
            "spiffe://cluster.local/ns/factory/sa/edge-1"
                .try_into()
                .unwrap()
        )];
        ca.sign(&params, &Pub(key.public_sec1().to_vec()))
    }

    fn cert_msg<'a>(leaf: &'a [u8], root: &'a [u8]) -> wire::Certificate<'a> {
        wire::Certificate {
            chain: BoundedList::from_slice(&[leaf]).unwrap(),
            roots: BoundedList::from_slice(&[root]).unwrap(),
            not_before: UnixTime::from_secs(1000),
            not_after: UnixTime::from_secs(4600),
        }
    }

    #[test]
    fn install_checks_key_and_keeps_old_cert_on_error() {
        let ca = TestCa::new("root");
        let key = NodeKey::generate(&mut OsRng);
        let mut creds = Credentials::provision(&key, ADDR, GATEWAY_ID, "tok").unwrap();
        assert!(!creds.is_enrolled());
        assert_eq!(creds.token(), Some("tok"));
        let leaf = issued(&ca, &key);
        creds.install(&key, &cert_msg(&leaf, &ca.cert_der)).unwrap();
        assert!(creds.is_enrolled());
        assert_eq!(creds.token(), None, "token is single-use");
        assert_eq!(creds.leaf(), Some(leaf.as_slice()));
        assert_eq!(creds.roots().next(), Some(ca.cert_der.as_slice()));

        // A certificate for another key must not replace the working one.
        let other = NodeKey::generate(&mut OsRng);
        let foreign = issued(&ca, &other);
        assert_eq!(
            creds.install(&key, &cert_msg(&foreign, &ca.cert_der)),
            Err(CredsError::LeafKeyMismatch)
        );
        assert_eq!(creds.leaf(), Some(leaf.as_slice()));
        // A renewal with a rotated key is accepted together with that key.
        creds
            .install(&other, &cert_msg(&foreign, &ca.cert_der))
            .unwrap();
        assert_eq!(creds.key().unwrap().public_sec1(), other.public_sec1());
    }

    #[test]
    fn provisioning_rejects_bad_identity_and_token() {
        let key = NodeKey::generate(&mut OsRng);
        assert_eq!(
            Credentials::provision(&key, ADDR, "https://gw", "t").unwrap_err(),
            CredsError::BadGatewayId
        );
        assert_eq!(
            Credentials::provision(&key, ADDR, GATEWAY_ID, "").unwrap_err(),
            CredsError::BadToken
        );
    }

    #[test]
    fn store_round_trips_and_alternates_slots() {
        let ca = TestCa::new("root");
        let key = NodeKey::generate(&mut OsRng);
        let mut creds = Credentials::provision(&key, ADDR, GATEWAY_ID, "tok").unwrap();
        let mut store = CredStore::new(MemSlots::default());
        let mut scratch = std::vec![0u8; SCRATCH_LEN];
        assert_eq!(store.load(&mut scratch).unwrap(), None);
        store.save(&creds, &mut scratch).unwrap();
        let leaf = issued(&ca, &key);
        creds.install(&key, &cert_msg(&leaf, &ca.cert_der)).unwrap();
        store.save(&creds, &mut scratch).unwrap();
        assert!(!store.storage.slots[0].is_empty() && !store.storage.slots[1].is_empty());

        let storage = core::mem::take(&mut store.storage);
        let mut reopened = CredStore::new(storage);
        let loaded = reopened.load(&mut scratch).unwrap().unwrap();
        assert_eq!(loaded, creds);
    }

    #[test]
    fn torn_write_keeps_previous_credentials() {
        let ca = TestCa::new("root");
        let key = NodeKey::generate(&mut OsRng);
        let mut creds = Credentials::provision(&key, ADDR, GATEWAY_ID, "tok").unwrap();
        let mut store = CredStore::new(MemSlots::default());
        let mut scratch = std::vec![0u8; SCRATCH_LEN];
        store.save(&creds, &mut scratch).unwrap();
        let before = creds.clone();
        let leaf = issued(&ca, &key);
        creds.install(&key, &cert_msg(&leaf, &ca.cert_der)).unwrap();
        store.storage.tear_next = Some(40);
        store.save(&creds, &mut scratch).unwrap();
        let storage = core::mem::take(&mut store.storage);
        let mut reopened = CredStore::new(storage);
        assert_eq!(reopened.load(&mut scratch).unwrap().unwrap(), before);
        // Flipping a payload byte of the only good slot is detected too.
        reopened.storage.slots[0][HEADER_LEN + 3] ^= 0xff;
        assert_eq!(reopened.load(&mut scratch).unwrap(), None);
    }

    #[test]
    fn crc32_matches_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
