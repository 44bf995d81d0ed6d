//! meshgate's Kubernetes-native mode.
//!
//! In a cluster, users `kubectl apply` Istio's PeerAuthentication and
//! AuthorizationPolicy and expect enforcement; several gateway replicas
//! share their state through the API server instead of a local file. This
//! crate owns everything that talks to the API server:
//!
//! - [`controller`]: list + watch the Istio security resources (newest
//!   served of `security.istio.io/v1`, `v1beta1`) and the routed Services
//!   and EndpointSlices; resume after disconnects and `410 Gone` through a
//!   keyed cache; recompute the whole configuration and hand it to the
//!   gateway only if it builds; invalid resources are excluded and reported.
//! - [`policies`] / [`services`]: conversion of one Kubernetes object into
//!   meshgate's types (reusing meshgate-config's parser and validation).
//! - [`events`]: Warning Events regarding refused resources.
//! - [`secret_store`]: [`KubeSecretStore`], the [`meshgate_ca::Store`]
//!   implementation on Secrets (CA, tokens, edge nodes, applied policies).
//! - [`lease`]: leader election on a coordination.k8s.io/v1 Lease, for the
//!   singleton work (CA creation, root roll-over, dropping retired roots).
//! - [`ca`]: opening the one CA all replicas share.
//! - `fake_apiserver` (feature `test-util`): the in-process Kubernetes API
//!   server the tests run against.
//!
//! [`KubeMode`] bundles them for `meshgate serve --kubernetes`.

pub mod ca;
pub mod controller;
mod error;
pub mod events;
#[cfg(feature = "test-util")]
pub mod fake_apiserver;
pub mod lease;
pub mod policies;
pub mod secret_store;
pub mod services;

use core::time::Duration;
use std::sync::Arc;

pub use ca::{SharedCaError, cacerts_from_secret, open_shared_ca};
pub use controller::{ControllerOptions, PolicyUpdate};
pub use error::KubeError;
pub use lease::{LeaderElector, LeaseTiming};
pub use policies::{InvalidResource, ResourceKey};
pub use secret_store::KubeSecretStore;

use meshgate_ca::{CaConfig, CaSource, CertificateAuthority, Store};
use tokio::sync::watch;

/// Names and timing of Kubernetes mode.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// The gateway's own namespace (Secrets, Lease): env `POD_NAMESPACE`,
    /// default `meshgate-system`.
    pub namespace: String,
    /// This replica's unique name (Lease holder, Event reporter): env
    /// `POD_NAME`, else `HOSTNAME`.
    pub pod_name: String,
    /// Secret holding the state store's records (`meshgate-state`; its
    /// audit log goes to `meshgate-state-audit`).
    pub state_secret: String,
    /// Lease for the singleton work (`meshgate-leader`).
    pub lease_name: String,
    /// Leader-election timing.
    pub lease: LeaseTiming,
    /// What the policy controller watches.
    pub controller: ControllerOptions,
}

impl KubeOptions {
    /// Options from the Pod's environment (downward API `POD_NAMESPACE`,
    /// `POD_NAME`) and the gateway settings.
    pub fn from_env(trust_domain: &str, root_namespace: &str) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let namespace = var("POD_NAMESPACE").unwrap_or_else(|| "meshgate-system".to_owned());
        let pod_name = var("POD_NAME")
            .or_else(|| var("HOSTNAME"))
            .unwrap_or_else(|| "meshgate".to_owned());
        KubeOptions {
            controller: ControllerOptions::new(trust_domain, root_namespace, &pod_name),
            namespace,
            pod_name,
            state_secret: "meshgate-state".to_owned(),
            lease_name: "meshgate-leader".to_owned(),
            lease: LeaseTiming::default(),
        }
    }
}

/// A connection to the cluster and everything Kubernetes mode runs on it.
#[derive(Clone)]
pub struct KubeMode {
    config: kube::Config,
    client: kube::Client,
    options: KubeOptions,
}

impl core::fmt::Debug for KubeMode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KubeMode")
            .field("cluster", &self.config.cluster_url.to_string())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KubeMode {
    /// Connects with the in-cluster service account, or the kubeconfig
    /// (`KUBECONFIG`, `~/.kube/config`) outside a cluster.
    ///
    /// # Errors
    /// No usable configuration.
    pub async fn connect(options: KubeOptions) -> Result<Self, KubeError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?;
        Self::from_config(config, options)
    }

    /// Uses an explicit client configuration (tests: the fake API server).
    ///
    /// # Errors
    /// The client cannot be built.
    pub fn from_config(config: kube::Config, options: KubeOptions) -> Result<Self, KubeError> {
        let client =
            kube::Client::try_from(config.clone()).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(KubeMode {
            config,
            client,
            options,
        })
    }

    /// The options in use.
    pub fn options(&self) -> &KubeOptions {
        &self.options
    }

    /// The API client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The state store on the `state_secret` Secret: what `serve` uses
    /// instead of the data directory's file store.
    ///
    /// # Errors
    /// The store's client cannot be started.
    pub fn state_store(&self) -> Result<Arc<KubeSecretStore>, KubeError> {
        Ok(Arc::new(KubeSecretStore::new(
            self.config.clone(),
            &self.options.namespace,
            &self.options.state_secret,
        )?))
    }

    /// This replica's elector for the `lease_name` Lease.
    pub fn leader_elector(&self) -> LeaderElector {
        LeaderElector::new(
            self.client.clone(),
            &self.options.namespace,
            &self.options.lease_name,
            &self.options.pod_name,
            self.options.lease,
        )
    }

    /// Opens the shared CA (see [`open_shared_ca`]), polling every
    /// `retry_period` while waiting for the leader to create it.
    ///
    /// # Errors
    /// See [`open_shared_ca`].
    pub async fn open_ca(
        &self,
        store: Arc<dyn Store>,
        config: CaConfig,
        source: CaSource,
        elector: &mut LeaderElector,
    ) -> Result<CertificateAuthority, SharedCaError> {
        let poll = self.options.lease.retry_period.min(Duration::from_secs(1));
        let actor = format!("kubernetes:{}", self.options.pod_name);
        open_shared_ca(store, config, source, elector, &actor, poll).await
    }

    /// Starts the policy controller and returns once the first complete
    /// configuration from the cluster is applied (see [`controller::spawn`]):
    /// what `meshgate serve --kubernetes` calls.
    ///
    /// # Errors
    /// See [`controller::spawn`].
    pub async fn spawn_controller<F, Fut>(
        &self,
        apply: F,
        stop: watch::Receiver<bool>,
        initial_timeout: Duration,
    ) -> Result<tokio::task::JoinHandle<()>, KubeError>
    where
        F: FnMut(PolicyUpdate) -> Fut + Send + 'static,
        Fut: core::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        controller::spawn(
            self.client.clone(),
            self.options.controller.clone(),
            apply,
            stop,
            initial_timeout,
        )
        .await
    }

    /// Runs the policy controller until `stop` (see [`controller::run`]).
    ///
    /// # Errors
    /// See [`controller::run`].
    pub async fn run_controller<F, Fut>(
        &self,
        apply: F,
        stop: watch::Receiver<bool>,
    ) -> Result<(), KubeError>
    where
        F: FnMut(PolicyUpdate) -> Fut + Send,
        Fut: core::future::Future<Output = Result<(), String>> + Send,
    {
        controller::run(
            self.client.clone(),
            self.options.controller.clone(),
            apply,
            stop,
        )
        .await
    }
}
