//! The CA shared by every replica.
//!
//! This module owns how replicas agree on one CA: its state lives in the
//! [`KubeSecretStore`](crate::KubeSecretStore) Secret, so every replica
//! that opens [`CertificateAuthority`] from it gets the same roots (the
//! same trust bundle) and the same signing material. Creating the CA on
//! the very first start is singleton work: only the Lease holder does it,
//! the others wait until the state record exists and then open it.
//!
//! A plugged-in Istio CA is accepted as a Secret in the `cacerts` layout
//! (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`), either
//! mounted as a volume (deploy/base does that; use
//! `meshgate serve --cacerts DIR`) or read through the API with
//! [`cacerts_from_secret`].

use core::time::Duration;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use meshgate_ca::cacerts::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use meshgate_ca::{CaConfig, CaError, CaSource, CertificateAuthority, RecordKey, Store};
use meshgate_core::time::UnixTime;

use crate::error::KubeError;
use crate::lease::LeaderElector;

/// The record meshgate-ca writes when it creates a CA (its state: roots and
/// the signing root). Its presence means "the CA exists".
pub const CA_STATE_RECORD: &str = "ca.state";

/// Errors while opening the shared CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedCaError {
    /// The CA refused to open or create.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Reading the store or the API failed.
    #[error(transparent)]
    Kube(#[from] KubeError),
}

fn unix_now() -> UnixTime {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    UnixTime::from_secs(secs)
}

/// Opens the CA kept in `store`, creating it only while holding the Lease.
///
/// If the CA state exists, every replica opens it. If it does not, the
/// replica that wins the election creates it (from `source`); the others
/// poll every `poll` until it appears. The elector keeps its leadership
/// state, so the caller can go on to [`LeaderElector::run`] with it.
///
/// # Errors
/// The CA cannot be opened or created; the store is unreachable.
pub async fn open_shared_ca(
    store: Arc<dyn Store>,
    config: CaConfig,
    source: CaSource,
    elector: &mut LeaderElector,
    actor: &str,
    poll: Duration,
) -> Result<CertificateAuthority, SharedCaError> {
    let state_key = RecordKey::new(CA_STATE_RECORD).map_err(CaError::from)?;
    loop {
        let exists = {
            let store = store.clone();
            let key = state_key.clone();
            blocking(move || store.get(&key).map(|v| v.is_some())).await?
        };
        let may_create = !exists && elector.try_acquire_or_renew().await.unwrap_or(false);
        if exists || may_create {
            if may_create {
                tracing::info!("no CA in the cluster yet; this replica (the leader) creates it");
            }
            let store = store.clone();
            let config = config.clone();
            let source = source.clone();
            let actor = actor.to_owned();
            let ca = blocking(move || {
                CertificateAuthority::open(store, config, &source, unix_now(), &actor)
            })
            .await?;
            return Ok(ca);
        }
        tracing::info!("waiting for the leader to create the CA");
        tokio::time::sleep(poll).await;
    }
}

/// Runs blocking store work off the async worker.
async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, SharedCaError>
where
    T: Send + 'static,
    E: Into<SharedCaError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KubeError::Internal(format!("blocking task: {e}")))?
        .map_err(Into::into)
}

impl From<meshgate_ca::StoreError> for SharedCaError {
    fn from(e: meshgate_ca::StoreError) -> Self {
        SharedCaError::Ca(CaError::Store(e))
    }
}

/// Reads an Istio `cacerts` Secret through the API and writes its four
/// files into `dir` (created 0700, files 0600), then chooses the CA source
/// the way istiod does ([`CaSource::detect`]): all four files → plugged-in
/// CA, none (or no Secret) → generate, some → error.
///
/// # Errors
/// API errors other than 404, file-system errors, an incomplete Secret.
pub async fn cacerts_from_secret(
    client: Client,
    namespace: &str,
    name: &str,
    dir: &Path,
) -> Result<CaSource, KubeError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let secret = api
        .get_opt(name)
        .await
        .map_err(KubeError::api(format!("get Secret {namespace}/{name}")))?;
    let data = secret.and_then(|s| s.data).unwrap_or_default();
    let io = |e: std::io::Error| KubeError::Internal(format!("{}: {e}", dir.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    for file in [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN] {
        let path = dir.join(file);
        match data.get(file) {
            Some(bytes) => {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                f.write_all(&bytes.0)
                    .and_then(|()| f.sync_all())
                    .map_err(io)?;
            }
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            },
        }
    }
    CaSource::detect(dir).map_err(|e| KubeError::Config(format!("Secret {namespace}/{name}: {e}")))
}
