//! Edge-node records and their one-time enrollment tokens, persisted in the
//! state store (`records/edge.node.<NAME>.rec`).
//!
//! A node is created by an administrator together with a one-time token;
//! the record fixes the identity the node will get,
//! `spiffe://TD/ns/NS/sa/NAME`, before the node ever connects. The token is
//! stored only as its SHA-256 ([`TokenHash`]), expires, and is consumed by
//! the first successful enrollment. Every certificate the node gets — at
//! enrollment and at each renewal — carries the identity from this record,
//! never anything the node asked for in its CSR. Node names are unique
//! gateway-wide (they name the node in the CLI, the API and in service
//! endpoints), so the same name cannot exist in two namespaces.
//!
//! Revocation is permanent for the name: the CA refuses new certificates
//! for the SPIFFE ID while its revocation is kept, and the record stays
//! `revoked` so the tunnel server refuses the node's reconnects.

use core::time::Duration;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use meshgate_ca::secrets::{RandomError, generate_token};
use meshgate_ca::store::{get_json, put_json};
use meshgate_ca::{CaError, CertificateAuthority, Change, IssuedCertificate, RecordKey, Store};
use meshgate_ca::{StoreError, TokenHash};
use meshgate_core::spiffe::{OwnedSpiffeId, OwnedTrustDomain};
use meshgate_core::time::UnixTime;
use meshgate_core::wire::{MAX_LISTENERS, is_valid_host};
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};

/// Prefix of the node records in the store.
const KEY_PREFIX: &str = "edge.node.";
/// Token lifetime when the administrator gives none.
pub(crate) const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest token lifetime accepted (a short-lived token is only less
/// useful, never less safe).
pub(crate) const MIN_TOKEN_TTL: Duration = Duration::from_secs(1);
/// Longest token lifetime accepted: a token is a bearer secret.
pub(crate) const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A node's forwarding rule: legacy clients connecting to `listen_port` on
/// the node reach the mesh service `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ForwardRule {
    /// The node's local TCP port.
    pub(crate) listen_port: u16,
    /// The mesh service host.
    pub(crate) host: String,
    /// The mesh service port.
    pub(crate) port: u16,
}

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NodeState {
    /// A token was issued; the node has not enrolled yet.
    Pending,
    /// The node holds a certificate.
    Enrolled,
    /// Revoked: no certificates, no tunnel, ever again under this name.
    Revoked,
}

impl NodeState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Enrolled => "enrolled",
            NodeState::Revoked => "revoked",
        }
    }
}

/// An unused enrollment token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PendingToken {
    hash: TokenHash,
    expires_at: UnixTime,
}

/// One edge node as persisted.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeRecord {
    pub(crate) name: String,
    pub(crate) namespace: String,
    /// `spiffe://TD/ns/NS/sa/NAME`, fixed at creation.
    pub(crate) spiffe_id: String,
    pub(crate) state: NodeState,
    pub(crate) created_at: UnixTime,
    pub(crate) created_by: String,
    /// The outstanding token, if one was issued and not used.
    token: Option<PendingToken>,
    /// Forwarding rules pushed to the node.
    pub(crate) listeners: Vec<ForwardRule>,
    /// Version of the last configuration content pushed, and its
    /// fingerprint: the version only moves when the content changes, and
    /// never goes back (the node refuses lower versions).
    pub(crate) config_version: u64,
    config_fingerprint: Option<String>,
    pub(crate) enrolled_at: Option<UnixTime>,
    pub(crate) cert_serial: Option<String>,
    /// The serial the node held before its last renewal: its tunnel is
    /// still accepted with it, in case the node never received (or could
    /// not store) the renewed certificate. Any other certificate for the
    /// node's SPIFFE ID — one minted by `meshgate cert issue`, say — is
    /// not the node's (see [`NodeRecord::holds_serial`]).
    #[serde(default)]
    pub(crate) prev_cert_serial: Option<String>,
    pub(crate) cert_not_after: Option<UnixTime>,
    pub(crate) revoked_at: Option<UnixTime>,
    pub(crate) revoked_reason: Option<String>,
}

impl NodeRecord {
    /// True when a certificate with serial `hex_serial` (lowercase hex)
    /// was issued to this node through enrollment or renewal and is its
    /// current or previous one.
    pub(crate) fn holds_serial(&self, hex_serial: &str) -> bool {
        [&self.cert_serial, &self.prev_cert_serial]
            .into_iter()
            .flatten()
            .any(|s| s.eq_ignore_ascii_case(hex_serial))
    }

    /// When the outstanding token expires, if there is one.
    pub(crate) fn token_expires_at(&self) -> Option<UnixTime> {
        self.token.as_ref().map(|t| t.expires_at)
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    /// A name is not a DNS-1123 label.
    #[error(
        "{what} {value:?} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
    )]
    BadName {
        /// Which name.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// The token lifetime is out of range.
    #[error("token TTL {0:?} outside 1 s ..= 7 days")]
    BadTtl(Duration),
    /// A forwarding rule is invalid.
    #[error("invalid listener: {0}")]
    BadListener(String),
    /// No node with this name.
    #[error("no edge node {0:?}")]
    UnknownNode(String),
    /// The name exists in another namespace.
    #[error("edge node {name:?} already exists in namespace {namespace:?}; node names are unique")]
    NameTaken {
        /// The node.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// The node was revoked; its name cannot be used again.
    #[error("edge node {0:?} is revoked; enroll the device under a new name")]
    Revoked(String),
    /// The SPIFFE ID could not be formed.
    #[error("cannot form the node identity: {0}")]
    Identity(String),
    /// The random generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The store failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The CA failed.
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
}

/// Why an enrollment was refused (the node sees the code, not the detail).
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnrollError {
    /// Unknown, used or expired token (deliberately not told apart).
    #[error("enrollment token is unknown, used or expired")]
    InvalidToken,
    /// The CSR was refused by the CA (malformed, bad signature, key type).
    #[error("CSR refused: {0}")]
    BadCsr(CaError),
    /// Issuing or persisting failed on the gateway's side.
    #[error("enrollment failed: {0}")]
    Internal(String),
}

/// The registry of edge nodes.
pub(crate) struct Registry {
    store: Arc<dyn Store>,
    trust_domain: OwnedTrustDomain,
    nodes: Mutex<BTreeMap<String, NodeRecord>>,
    rng: SystemRandom,
}

impl core::fmt::Debug for Registry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registry")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A working copy of node `name`'s record: changes are made to the copy,
/// persisted, and only then put back in the map.
fn copy_of(nodes: &BTreeMap<String, NodeRecord>, name: &str) -> Result<NodeRecord, RegistryError> {
    nodes
        .get(name)
        .cloned()
        .ok_or_else(|| RegistryError::UnknownNode(name.to_owned()))
}

fn record_key(name: &str) -> Result<RecordKey, StoreError> {
    RecordKey::new(format!("{KEY_PREFIX}{name}"))
}

/// A DNS-1123 label, as Kubernetes namespace and service-account names are.
pub(crate) fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_label(what: &'static str, value: &str) -> Result<(), RegistryError> {
    if is_label(value) {
        Ok(())
    } else {
        Err(RegistryError::BadName {
            what,
            value: value.to_owned(),
        })
    }
}

/// Checks forwarding rules: valid ports and hosts, unique listen ports, at
/// most what one `ConfigPush` carries.
pub(crate) fn check_listeners(rules: &[ForwardRule]) -> Result<(), RegistryError> {
    let bad = |m: String| Err(RegistryError::BadListener(m));
    if rules.len() > MAX_LISTENERS {
        return bad(format!("at most {MAX_LISTENERS} listeners per node"));
    }
    for (i, r) in rules.iter().enumerate() {
        if r.listen_port == 0 || r.port == 0 {
            return bad(format!("listener {i}: ports must be non-zero"));
        }
        if !is_valid_host(&r.host) {
            return bad(format!("listener {i}: {:?} is not a DNS host name", r.host));
        }
        if rules[..i].iter().any(|o| o.listen_port == r.listen_port) {
            return bad(format!("listen port {} used twice", r.listen_port));
        }
    }
    Ok(())
}

impl Registry {
    /// Loads every node record from `store`.
    pub(crate) fn load(
        store: Arc<dyn Store>,
        trust_domain: OwnedTrustDomain,
    ) -> Result<Self, RegistryError> {
        let mut nodes = BTreeMap::new();
        for key in store.list(KEY_PREFIX)? {
            if let Some(rec) = get_json::<NodeRecord>(&*store, &key)? {
                nodes.insert(rec.name.clone(), rec);
            }
        }
        Ok(Registry {
            store,
            trust_domain,
            nodes: Mutex::new(nodes),
            rng: SystemRandom::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, NodeRecord>> {
        // Records are only replaced after a successful store write, so a
        // panic elsewhere cannot leave one half-updated.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(
        &self,
        rec: &NodeRecord,
        actor: &str,
        at: UnixTime,
        note: &str,
    ) -> Result<(), StoreError> {
        let change = Change { actor, at, note };
        put_json(&*self.store, &record_key(&rec.name)?, rec, &change)
    }

    /// Creates node `namespace/name` (or re-issues the token of an existing,
    /// non-revoked node) and returns the record and the token — the only
    /// time the token exists outside the node. `listeners` replace the
    /// node's rules when given.
    pub(crate) fn create_token(
        &self,
        namespace: &str,
        name: &str,
        ttl: Option<Duration>,
        listeners: Option<Vec<ForwardRule>>,
        now: UnixTime,
        actor: &str,
    ) -> Result<(NodeRecord, String), RegistryError> {
        check_label("namespace", namespace)?;
        check_label("node name", name)?;
        let ttl = ttl.unwrap_or(DEFAULT_TOKEN_TTL);
        if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&ttl) {
            return Err(RegistryError::BadTtl(ttl));
        }
        if let Some(l) = &listeners {
            check_listeners(l)?;
        }
        let id = format!("spiffe://{}/ns/{namespace}/sa/{name}", self.trust_domain);
        OwnedSpiffeId::parse(&id).map_err(|e| RegistryError::Identity(e.to_string()))?;
        let token = generate_token(&self.rng)?;
        let mut nodes = self.lock();
        let mut rec = match nodes.get(name) {
            Some(existing) if existing.state == NodeState::Revoked => {
                return Err(RegistryError::Revoked(name.to_owned()));
            }
            Some(existing) if existing.namespace != namespace => {
                return Err(RegistryError::NameTaken {
                    name: name.to_owned(),
                    namespace: existing.namespace.clone(),
                });
            }
            Some(existing) => existing.clone(),
            None => NodeRecord {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                spiffe_id: id,
                state: NodeState::Pending,
                created_at: now,
                created_by: actor.to_owned(),
                token: None,
                listeners: Vec::new(),
                config_version: 0,
                config_fingerprint: None,
                enrolled_at: None,
                cert_serial: None,
                prev_cert_serial: None,
                cert_not_after: None,
                revoked_at: None,
                revoked_reason: None,
            },
        };
        rec.token = Some(PendingToken {
            hash: TokenHash::of(&token),
            expires_at: now.saturating_add(ttl),
        });
        if let Some(l) = listeners {
            rec.listeners = l;
        }
        self.persist(
            &rec,
            actor,
            now,
            &format!("edge node {name}: enrollment token issued"),
        )?;
        nodes.insert(name.to_owned(), rec.clone());
        Ok((rec, token))
    }

    /// Trades a token and a CSR for the node's first certificate. The
    /// token is consumed in the same step (under the registry lock): two
    /// connections racing with one token cannot both enroll.
    pub(crate) fn enroll(
        &self,
        token: &str,
        csr_der: &[u8],
        ca: &CertificateAuthority,
        ttl: Option<Duration>,
        now: UnixTime,
    ) -> Result<(NodeRecord, IssuedCertificate), EnrollError> {
        let mut nodes = self.lock();
        // Every pending hash is compared (constant time each); tokens are
        // 256-bit random, so which node matched leaks nothing useful.
        let name = nodes
            .values()
            .filter(|r| r.state != NodeState::Revoked)
            .find(|r| r.token.as_ref().is_some_and(|t| t.hash.matches(token)))
            .map(|r| r.name.clone())
            .ok_or(EnrollError::InvalidToken)?;
        let mut rec = nodes.get(&name).cloned().ok_or(EnrollError::InvalidToken)?;
        if rec.token_expires_at().is_none_or(|at| at <= now) {
            return Err(EnrollError::InvalidToken);
        }
        let id = OwnedSpiffeId::parse(&rec.spiffe_id)
            .map_err(|e| EnrollError::Internal(e.to_string()))?;
        let actor = format!("edge:{name}");
        let issued = ca
            .issue_from_csr(csr_der, &id.borrow(), ttl, now, &actor)
            .map_err(|e| match e {
                CaError::Csr(_) | CaError::CsrSignature | CaError::UnsupportedKey(_) => {
                    EnrollError::BadCsr(e)
                }
                other => EnrollError::Internal(other.to_string()),
            })?;
        rec.token = None;
        rec.state = NodeState::Enrolled;
        rec.enrolled_at = Some(now);
        rec.cert_serial = Some(issued.serial.to_string());
        rec.cert_not_after = Some(issued.not_after);
        // The token is spent only once this is durable; if the write fails
        // the certificate is never sent, so the token stays usable.
        self.persist(&rec, &actor, now, &format!("edge node {name} enrolled"))
            .map_err(|e| EnrollError::Internal(e.to_string()))?;
        nodes.insert(name, rec.clone());
        Ok((rec, issued))
    }

    /// Issues a renewal for an enrolled node, for the identity in its
    /// record (whatever the CSR asks for).
    pub(crate) fn renew(
        &self,
        name: &str,
        csr_der: &[u8],
        ca: &CertificateAuthority,
        ttl: Option<Duration>,
        now: UnixTime,
    ) -> Result<IssuedCertificate, RegistryError> {
        let mut nodes = self.lock();
        let mut rec = copy_of(&nodes, name)?;
        if rec.state != NodeState::Enrolled {
            return Err(RegistryError::Revoked(name.to_owned()));
        }
        let id = OwnedSpiffeId::parse(&rec.spiffe_id)
            .map_err(|e| RegistryError::Identity(e.to_string()))?;
        let actor = format!("edge:{name}");
        let issued = ca.issue_from_csr(csr_der, &id.borrow(), ttl, now, &actor)?;
        rec.prev_cert_serial = rec.cert_serial.take();
        rec.cert_serial = Some(issued.serial.to_string());
        rec.cert_not_after = Some(issued.not_after);
        // The tunnel accepts only serials recorded here, so a renewal that
        // is not durable is not delivered: the node keeps its working
        // certificate and retries (the issued one just goes unused).
        self.persist(&rec, &actor, now, &format!("edge node {name} renewed"))?;
        nodes.insert(name.to_owned(), rec);
        Ok(issued)
    }

    /// Revokes a node: its SPIFFE ID at the CA (no more certificates, and
    /// the tunnel refuses it) and its record. Idempotent.
    pub(crate) fn revoke(
        &self,
        name: &str,
        reason: &str,
        ca: &CertificateAuthority,
        now: UnixTime,
        actor: &str,
    ) -> Result<NodeRecord, RegistryError> {
        let mut nodes = self.lock();
        let mut rec = copy_of(&nodes, name)?;
        if rec.state == NodeState::Revoked {
            return Ok(rec);
        }
        let id = OwnedSpiffeId::parse(&rec.spiffe_id)
            .map_err(|e| RegistryError::Identity(e.to_string()))?;
        ca.revoke_spiffe_id(&id.borrow(), reason, now, actor)?;
        rec.state = NodeState::Revoked;
        rec.token = None;
        rec.revoked_at = Some(now);
        rec.revoked_reason = Some(reason.to_owned());
        self.persist(
            &rec,
            actor,
            now,
            &format!("edge node {name} revoked: {reason}"),
        )?;
        nodes.insert(name.to_owned(), rec.clone());
        Ok(rec)
    }

    /// Replaces a node's forwarding rules.
    pub(crate) fn set_listeners(
        &self,
        name: &str,
        rules: Vec<ForwardRule>,
        now: UnixTime,
        actor: &str,
    ) -> Result<NodeRecord, RegistryError> {
        check_listeners(&rules)?;
        let mut nodes = self.lock();
        let mut rec = copy_of(&nodes, name)?;
        if rec.state == NodeState::Revoked {
            return Err(RegistryError::Revoked(name.to_owned()));
        }
        rec.listeners = rules;
        self.persist(
            &rec,
            actor,
            now,
            &format!("edge node {name}: listeners changed"),
        )?;
        nodes.insert(name.to_owned(), rec.clone());
        Ok(rec)
    }

    /// The version to push for configuration content `fingerprint`: the
    /// current one if the content is unchanged, else the next (persisted
    /// before it is used, so it never goes back across restarts).
    pub(crate) fn config_version(
        &self,
        name: &str,
        fingerprint: &str,
        now: UnixTime,
    ) -> Result<u64, RegistryError> {
        let mut nodes = self.lock();
        let mut rec = copy_of(&nodes, name)?;
        if rec.config_fingerprint.as_deref() == Some(fingerprint) && rec.config_version > 0 {
            return Ok(rec.config_version);
        }
        rec.config_version += 1;
        rec.config_fingerprint = Some(fingerprint.to_owned());
        let note = format!(
            "edge node {name}: configuration version {}",
            rec.config_version
        );
        self.persist(&rec, "meshgate", now, &note)?;
        let v = rec.config_version;
        nodes.insert(name.to_owned(), rec);
        Ok(v)
    }

    /// One node.
    pub(crate) fn get(&self, name: &str) -> Option<NodeRecord> {
        self.lock().get(name).cloned()
    }

    /// The node whose identity is `spiffe_id`.
    pub(crate) fn by_spiffe_id(&self, spiffe_id: &str) -> Option<NodeRecord> {
        self.lock()
            .values()
            .find(|r| r.spiffe_id == spiffe_id)
            .cloned()
    }

    /// Every node, by name.
    pub(crate) fn list(&self) -> Vec<NodeRecord> {
        self.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_ca::{CaConfig, CaSource, FileStore};

    fn setup() -> (tempfile::TempDir, Registry, CertificateAuthority) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = FileStore::open(dir.path()).expect("store");
        let store: Arc<dyn Store> = Arc::new(store);
        let td = OwnedTrustDomain::parse("cluster.local").expect("td");
        let now = UnixTime::from_secs(1_700_000_000);
        let ca = CertificateAuthority::open(
            store.clone(),
            CaConfig::new(td.clone()),
            &CaSource::Generate,
            now,
            "test",
        )
        .expect("ca");
        let reg = Registry::load(store, td).expect("registry");
        (dir, reg, ca)
    }

    fn csr() -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        rcgen::CertificateParams::new(vec!["ignored.example".to_owned()])
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .der()
            .to_vec()
    }

    /// The record holds the enrolled serial, then after each renewal the
    /// new one and the one before it; a reload keeps both.
    #[test]
    fn renewal_keeps_the_current_and_previous_serial() {
        let (dir, reg, ca) = setup();
        let now = UnixTime::from_secs(1_700_000_000);
        let (_, token) = reg
            .create_token("factory", "plc-gw-1", None, None, now, "test")
            .expect("token");
        let (_, s0) = reg.enroll(&token, &csr(), &ca, None, now).expect("enroll");
        let s0 = s0.serial.to_string();
        let rec = reg.get("plc-gw-1").expect("rec");
        assert!(rec.holds_serial(&s0) && rec.holds_serial(&s0.to_ascii_uppercase()));
        let s1 = reg
            .renew("plc-gw-1", &csr(), &ca, None, now)
            .expect("renew")
            .serial
            .to_string();
        let s2 = reg
            .renew("plc-gw-1", &csr(), &ca, None, now)
            .expect("renew")
            .serial
            .to_string();
        let rec = reg.get("plc-gw-1").expect("rec");
        assert!(rec.holds_serial(&s2) && rec.holds_serial(&s1));
        assert!(!rec.holds_serial(&s0), "two renewals old");
        assert!(!rec.holds_serial(""));
        // The store is locked while open: close both users first.
        drop(reg);
        drop(ca);
        let (store, _) = FileStore::open(dir.path()).expect("store");
        let td = OwnedTrustDomain::parse("cluster.local").expect("td");
        let reg = Registry::load(Arc::new(store), td).expect("reload");
        let rec = reg.get("plc-gw-1").expect("rec");
        assert!(rec.holds_serial(&s2) && rec.holds_serial(&s1) && !rec.holds_serial(&s0));
    }

    #[test]
    fn token_is_one_time_expires_and_fixes_the_identity() {
        let (_dir, reg, ca) = setup();
        let now = UnixTime::from_secs(1_700_000_000);
        let (rec, token) = reg
            .create_token("factory", "plc-gw-1", None, None, now, "test")
            .expect("token");
        assert_eq!(
            rec.spiffe_id,
            "spiffe://cluster.local/ns/factory/sa/plc-gw-1"
        );
        assert_eq!(rec.state, NodeState::Pending);
        // Stored hashed only.
        let raw = serde_json::to_string(&reg.get("plc-gw-1").expect("rec")).expect("json");
        assert!(!raw.contains(&token));

        assert!(matches!(
            reg.enroll("not-the-token", &csr(), &ca, None, now),
            Err(EnrollError::InvalidToken)
        ));
        let (rec, issued) = reg.enroll(&token, &csr(), &ca, None, now).expect("enroll");
        assert_eq!(issued.spiffe_id, rec.spiffe_id, "identity from the record");
        assert_eq!(rec.state, NodeState::Enrolled);
        assert!(matches!(
            reg.enroll(&token, &csr(), &ca, None, now),
            Err(EnrollError::InvalidToken)
        ));

        // Expiry.
        let (_, t2) = reg
            .create_token(
                "factory",
                "plc-gw-2",
                Some(Duration::from_secs(60)),
                None,
                now,
                "test",
            )
            .expect("token");
        let later = now.saturating_add(Duration::from_secs(61));
        assert!(matches!(
            reg.enroll(&t2, &csr(), &ca, None, later),
            Err(EnrollError::InvalidToken)
        ));
    }

    #[test]
    fn revocation_is_permanent_and_names_are_unique() {
        let (_dir, reg, ca) = setup();
        let now = UnixTime::from_secs(1_700_000_000);
        let (_, token) = reg
            .create_token("factory", "n1", None, None, now, "test")
            .expect("token");
        assert!(matches!(
            reg.create_token("other", "n1", None, None, now, "test"),
            Err(RegistryError::NameTaken { .. })
        ));
        reg.revoke("n1", "decommissioned", &ca, now, "test")
            .expect("revoke");
        assert!(matches!(
            reg.enroll(&token, &csr(), &ca, None, now),
            Err(EnrollError::InvalidToken)
        ));
        assert!(matches!(
            reg.create_token("factory", "n1", None, None, now, "test"),
            Err(RegistryError::Revoked(_))
        ));
        assert!(matches!(
            reg.renew("n1", &csr(), &ca, None, now),
            Err(RegistryError::Revoked(_))
        ));
        assert!(matches!(
            reg.create_token("factory", "Bad_Name", None, None, now, "test"),
            Err(RegistryError::BadName { .. })
        ));
    }

    #[test]
    fn config_version_moves_only_with_content() {
        let (_dir, reg, _ca) = setup();
        let now = UnixTime::from_secs(1_700_000_000);
        reg.create_token("factory", "n1", None, None, now, "test")
            .expect("token");
        let v1 = reg.config_version("n1", "a", now).expect("v");
        assert_eq!(reg.config_version("n1", "a", now).expect("v"), v1);
        let v2 = reg.config_version("n1", "b", now).expect("v");
        assert!(v2 > v1);
    }
}
