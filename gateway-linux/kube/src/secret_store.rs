//! [`KubeSecretStore`]: meshgate's state store in Kubernetes Secrets.
//!
//! This module owns how the CA's records (roots, keys, issued index,
//! revocations), enrollment tokens, edge-node records and API-applied
//! policies are kept when meshgate runs in a cluster, so that every
//! replica reads the same state:
//!
//! - records: the data keys of one Secret (default `meshgate-state`; the
//!   record key character set is the Secret key character set). Each
//!   `put`/`delete` is a read-modify-write of that Secret sent with the
//!   resourceVersion that was read; on `409 Conflict` (another replica
//!   wrote meanwhile) it re-reads and retries, so concurrent writers of
//!   different records never lose each other's changes;
//! - audit log: a second Secret (`<name>-audit`, key `audit.jsonl`, one
//!   JSON [`AuditEntry`] per line, the newest [`AUDIT_KEEP`] entries).
//!   As with the file store, the audit entry is written *before* the
//!   record, so a crash in between leaves an entry for a change that did
//!   not happen, never a change without an entry.
//!
//! The [`Store`] trait is synchronous (the CA calls it under its own lock),
//! while the Kubernetes client is async. The store therefore runs its own
//! client on a dedicated thread with a single-threaded runtime and the
//! trait methods wait for it; this works from any caller, including code
//! running on a current-thread runtime, without `block_in_place`.

use core::future::Future;
use core::pin::Pin;
use core::time::Duration;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use meshgate_ca::store::AuditAction;
use meshgate_ca::{AuditEntry, Change, RecordKey, Store, StoreError};

use crate::error::KubeError;

/// Audit entries kept in the audit Secret (older ones are dropped; the
/// Kubernetes API server's own audit log is the long-term record).
pub const AUDIT_KEEP: usize = 1000;
/// The data key of the audit Secret.
pub const AUDIT_DATA_KEY: &str = "audit.jsonl";
/// Label put on the Secrets this store creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshgate");
/// Attempts of a read-modify-write before giving up on conflicts.
const MAX_ATTEMPTS: usize = 20;
/// Upper bound of one store operation.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

type JobFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type Job = Box<dyn FnOnce(Api<Secret>) -> JobFuture + Send>;

/// The state store in a Secret (see the module docs).
pub struct KubeSecretStore {
    jobs: Mutex<mpsc::Sender<Job>>,
    name: String,
    audit_name: String,
    namespace: String,
}

impl core::fmt::Debug for KubeSecretStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KubeSecretStore")
            .field("namespace", &self.namespace)
            .field("secret", &self.name)
            .finish_non_exhaustive()
    }
}

fn backend(what: &str, e: impl core::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl KubeSecretStore {
    /// Starts the store's client thread for Secret `namespace/name` (and
    /// `name-audit`). Nothing is read yet; the Secrets are created on the
    /// first write.
    ///
    /// # Errors
    /// The client cannot be built from `config`, or the thread cannot start.
    pub fn new(config: kube::Config, namespace: &str, name: &str) -> Result<Self, KubeError> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), KubeError>>(1);
        let ns = namespace.to_owned();
        std::thread::Builder::new()
            .name("meshgate-kube-store".to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(KubeError::Internal(format!("runtime: {e}"))));
                        return;
                    }
                };
                // The client (and its connection pool) lives on this
                // thread's runtime, independent of the caller's.
                let client = match rt.block_on(async { kube::Client::try_from(config) }) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(KubeError::Config(e.to_string())));
                        return;
                    }
                };
                let api: Api<Secret> = Api::namespaced(client, &ns);
                let _ = ready_tx.send(Ok(()));
                while let Ok(job) = jobs_rx.recv() {
                    rt.block_on(job(api.clone()));
                }
            })
            .map_err(|e| KubeError::Internal(format!("store thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| KubeError::Internal("store thread exited".to_owned()))??;
        Ok(KubeSecretStore {
            jobs: Mutex::new(jobs_tx),
            name: name.to_owned(),
            audit_name: format!("{name}-audit"),
            namespace: namespace.to_owned(),
        })
    }

    /// The Secret holding the records.
    pub fn secret_name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on the store thread and waits for its result.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Api<Secret>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |api| {
            Box::pin(async move {
                let r = match tokio::time::timeout(OP_TIMEOUT, f(api)).await {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::Backend(format!(
                        "Kubernetes API did not answer within {OP_TIMEOUT:?}"
                    ))),
                };
                let _ = tx.send(r);
            })
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| StoreError::Backend("store thread is gone".to_owned()))?;
        rx.recv()
            .map_err(|_| StoreError::Backend("store thread is gone".to_owned()))?
    }

    /// Read-modify-write of one Secret's data with conflict retries.
    /// `modify` returns `None` to leave the Secret untouched.
    fn modify<T, M>(&self, secret: String, modify: M) -> Result<T, StoreError>
    where
        T: Send + 'static,
        M: Fn(&mut BTreeMap<String, ByteString>) -> (bool, T) + Send + 'static,
    {
        self.call(move |api| async move {
            for _ in 0..MAX_ATTEMPTS {
                let current = api
                    .get_opt(&secret)
                    .await
                    .map_err(|e| backend(&format!("get Secret {secret}"), e))?;
                match current {
                    None => {
                        let mut data = BTreeMap::new();
                        let (write, out) = modify(&mut data);
                        if !write {
                            return Ok(out);
                        }
                        let s = Secret {
                            metadata: ObjectMeta {
                                name: Some(secret.clone()),
                                labels: Some(BTreeMap::from([(
                                    MANAGED_BY.0.to_owned(),
                                    MANAGED_BY.1.to_owned(),
                                )])),
                                ..ObjectMeta::default()
                            },
                            data: Some(data),
                            type_: Some("Opaque".to_owned()),
                            ..Secret::default()
                        };
                        match api.create(&PostParams::default(), &s).await {
                            Ok(_) => return Ok(out),
                            Err(e) if is_status(&e, 409) => continue,
                            Err(e) => return Err(backend(&format!("create Secret {secret}"), e)),
                        }
                    }
                    Some(mut s) => {
                        let mut data = s.data.take().unwrap_or_default();
                        let (write, out) = modify(&mut data);
                        if !write {
                            return Ok(out);
                        }
                        s.data = Some(data);
                        // Values are written as `data` only.
                        s.string_data = None;
                        match api.replace(&secret, &PostParams::default(), &s).await {
                            Ok(_) => return Ok(out),
                            Err(e) if is_status(&e, 409) => continue,
                            Err(e) => return Err(backend(&format!("update Secret {secret}"), e)),
                        }
                    }
                }
            }
            Err(StoreError::Backend(format!(
                "Secret {secret}: still conflicting after {MAX_ATTEMPTS} attempts"
            )))
        })
    }

    fn read_data(&self, secret: String) -> Result<BTreeMap<String, ByteString>, StoreError> {
        self.call(move |api| async move {
            let s = api
                .get_opt(&secret)
                .await
                .map_err(|e| backend(&format!("get Secret {secret}"), e))?;
            let mut data = s.as_ref().and_then(|s| s.data.clone()).unwrap_or_default();
            // `stringData` is write-only in a real API server, but a
            // Secret written by hand through a fake or an old tool may
            // carry it; treat it as data.
            for (k, v) in s.and_then(|s| s.string_data).unwrap_or_default() {
                data.entry(k).or_insert(ByteString(v.into_bytes()));
            }
            Ok(data)
        })
    }

    fn append_audit(
        &self,
        action: AuditAction,
        key: &RecordKey,
        value: Option<&[u8]>,
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        let template = AuditEntry {
            seq: 0,
            at: change.at,
            actor: change.actor.to_owned(),
            action,
            key: key.as_str().to_owned(),
            value_sha256: value.map(sha256_hex),
            note: change.note.to_owned(),
        };
        self.modify(self.audit_name.clone(), move |data| {
            let mut entries = parse_audit(data.get(AUDIT_DATA_KEY).map(|b| b.0.as_slice()));
            let mut entry = template.clone();
            entry.seq = entries.last().map_or(1, |e| e.seq + 1);
            entries.push(entry);
            let skip = entries.len().saturating_sub(AUDIT_KEEP);
            let text: String = entries[skip..]
                .iter()
                .filter_map(|e| serde_json::to_string(e).ok())
                .map(|l| l + "\n")
                .collect();
            data.insert(AUDIT_DATA_KEY.to_owned(), ByteString(text.into_bytes()));
            (true, ())
        })
    }
}

/// SHA-256 as lowercase hex, the form the file store's audit log uses.
fn sha256_hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut s = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses the audit lines; a line that does not parse is skipped (the
/// audit Secret is informational and must not block the records).
fn parse_audit(bytes: Option<&[u8]>) -> Vec<AuditEntry> {
    let Some(bytes) = bytes else {
        return Vec::new();
    };
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Store for KubeSecretStore {
    fn get(&self, key: &RecordKey) -> Result<Option<Vec<u8>>, StoreError> {
        let mut data = self.read_data(self.name.clone())?;
        Ok(data.remove(key.as_str()).map(|b| b.0))
    }

    fn put(&self, key: &RecordKey, value: &[u8], change: &Change<'_>) -> Result<(), StoreError> {
        self.append_audit(AuditAction::Put, key, Some(value), change)?;
        let k = key.as_str().to_owned();
        let v = value.to_vec();
        self.modify(self.name.clone(), move |data| {
            data.insert(k.clone(), ByteString(v.clone()));
            (true, ())
        })
    }

    fn delete(&self, key: &RecordKey, change: &Change<'_>) -> Result<bool, StoreError> {
        if self.get(key)?.is_none() {
            return Ok(false);
        }
        self.append_audit(AuditAction::Delete, key, None, change)?;
        let k = key.as_str().to_owned();
        self.modify(self.name.clone(), move |data| {
            let existed = data.remove(&k).is_some();
            (existed, existed)
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<RecordKey>, StoreError> {
        let data = self.read_data(self.name.clone())?;
        // BTreeMap keys are already sorted.
        data.keys()
            .filter(|k| k.starts_with(prefix))
            .map(|k| RecordKey::new(k.clone()))
            .collect()
    }

    fn audit_log(&self, after: u64) -> Result<Vec<AuditEntry>, StoreError> {
        let data = self.read_data(self.audit_name.clone())?;
        Ok(
            parse_audit(data.get(AUDIT_DATA_KEY).map(|b| b.0.as_slice()))
                .into_iter()
                .filter(|e| e.seq > after)
                .collect(),
        )
    }
}
