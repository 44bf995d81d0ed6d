//! The crate's error type.

/// Errors of Kubernetes mode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// No usable cluster configuration (in-cluster service account or
    /// kubeconfig).
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
    /// A request to the API server failed.
    #[error("Kubernetes API {what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Istio security CRDs are not installed (no served version of a
    /// kind meshgate needs).
    #[error(
        "the API server does not serve {kind} in security.istio.io (v1 or v1beta1); install Istio's CRDs (deploy/istio-crds)"
    )]
    MissingCrd {
        /// The kind.
        kind: String,
    },
    /// A background thread or task is gone.
    #[error("Kubernetes mode: {0}")]
    Internal(String),
}

impl KubeError {
    pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
        let what = what.into();
        move |source| KubeError::Api {
            what,
            source: Box::new(source),
        }
    }
}
