//! Peer-authentication modes and connection admission.

/// An Istio PeerAuthentication mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MtlsMode {
    /// Inherit from the parent scope (PERMISSIVE when there is none).
    Unset,
    /// TLS is not terminated: the connection passes as it is.
    Disable,
    /// Plaintext and mTLS are both accepted on the same port.
    Permissive,
    /// Only mTLS with a certificate from the mesh is accepted.
    Strict,
}
