//! Leader election with a coordination.k8s.io/v1 Lease.
//!
//! This module owns which replica runs the singleton work (creating the CA
//! on first start, root roll-over, dropping retired roots). The algorithm
//! is client-go's:
//!
//! - the Lease names its holder, the lease duration and the last renew
//!   time; every write is a create or a `replace` carrying the
//!   resourceVersion that was read, so of two replicas racing for the same
//!   Lease exactly one write succeeds (the other gets `409 Conflict`);
//! - a replica takes a Lease held by someone else only after it has seen
//!   the same Lease record (same resourceVersion) unchanged for a whole
//!   lease duration *on its own monotonic clock* — never by comparing its
//!   wall clock with the holder's `renewTime`, so clock skew between nodes
//!   cannot produce two leaders;
//! - the holder renews every `renew_interval` and steps down (publishes
//!   "not leader") as soon as a renewal fails for longer than the
//!   `renew_deadline`, before anyone else can take over;
//! - on a clean stop the holder releases the Lease (empty holder), so a
//!   successor takes over at once instead of after the lease duration.

use core::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::KubeError;

/// Timing of the election.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTiming {
    /// How long a Lease is valid without renewal (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// The holder gives up leadership if it could not renew for this long
    /// (must be shorter than `lease_duration`).
    pub renew_deadline: Duration,
    /// How often the holder renews and the others retry.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    /// client-go's defaults: 15 s / 10 s / 2 s.
    fn default() -> Self {
        LeaseTiming {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One replica's participation in the election for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    leader_tx: watch::Sender<bool>,
    /// The Lease record last seen (resourceVersion) and when it was first
    /// seen with that version, on the local monotonic clock.
    observed: Option<(String, Instant)>,
    /// When this replica last renewed successfully.
    last_renew: Option<Instant>,
}

impl core::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("lease", &self.name)
            .field("identity", &self.identity)
            .field("leader", &*self.leader_tx.borrow())
            .finish_non_exhaustive()
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX).max(1)
}

impl LeaderElector {
    /// An elector for Lease `namespace/name` as `identity` (the Pod name;
    /// must be unique per replica).
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Self {
        let (leader_tx, _) = watch::channel(false);
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            leader_tx,
            observed: None,
            last_renew: None,
        }
    }

    /// Follows leadership: `true` while this replica holds the Lease.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader_tx.subscribe()
    }

    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        *self.leader_tx.borrow()
    }

    fn set_leader(&self, leader: bool) {
        let changed = self.leader_tx.send_if_modified(|l| {
            let changed = *l != leader;
            *l = leader;
            changed
        });
        if changed {
            let what = if leader {
                "became the leader"
            } else {
                "no longer the leader"
            };
            tracing::info!(lease = %self.name, identity = %self.identity, "{what}");
        }
    }

    fn spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds(self.timing.lease_duration)),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: acquire or renew. Returns whether this replica is the
    /// leader afterwards.
    ///
    /// # Errors
    /// API errors other than the expected `404`/`409`.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, KubeError> {
        let result = self.round().await;
        let now = Instant::now();
        let leader = match result {
            Ok(true) => {
                self.last_renew = Some(now);
                true
            }
            Ok(false) => false,
            // A failed renewal keeps leadership until the renew deadline:
            // the Lease is still ours for longer than that.
            Err(_) => {
                self.is_leader()
                    && self
                        .last_renew
                        .is_some_and(|t| now.duration_since(t) < self.timing.renew_deadline)
            }
        };
        self.set_leader(leader);
        result.map(|_| leader)
    }

    async fn round(&mut self) -> Result<bool, KubeError> {
        let now = Instant::now();
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(KubeError::api("get Lease"))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(KubeError::api("create Lease")(e)),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours && holder.is_some() {
            // Someone else's: take it only once it has not changed for a
            // whole lease duration as measured here.
            let first_seen = match &self.observed {
                Some((seen_rv, at)) if *seen_rv == rv => *at,
                _ => {
                    self.observed = Some((rv.clone(), now));
                    now
                }
            };
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.timing.lease_duration, Duration::from_secs);
            if now.duration_since(first_seen) < duration {
                return Ok(false);
            }
            tracing::info!(lease = %self.name, previous = ?holder, "lease expired; taking over");
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if ours {
            self.spec(transitions, spec.acquire_time.clone())
        } else {
            self.spec(transitions.saturating_add(1), None)
        });
        // `replace` sends the resourceVersion read above: if anyone wrote
        // in between, the API server answers 409 and nobody is harmed.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observed = written
                    .metadata
                    .resource_version
                    .map(|rv| (rv, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(KubeError::api("update Lease")(e)),
        }
    }

    /// Gives the Lease up if this replica holds it (clean shutdown), so a
    /// successor does not wait for the lease duration.
    ///
    /// # Errors
    /// API errors (a 409 means someone else holds it now: not an error).
    pub async fn release(&mut self) -> Result<(), KubeError> {
        let was_leader = self.is_leader();
        self.set_leader(false);
        if !was_leader {
            return Ok(());
        }
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(KubeError::api("get Lease"))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        // A 1 s duration lets followers that do not watch for the empty
        // holder retry right away too.
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(KubeError::api("release Lease")(e)),
        }
    }

    /// Takes part in the election until `stop` turns true, then releases
    /// the Lease. Leadership is published through [`Self::subscribe`].
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.try_acquire_or_renew().await {
                tracing::warn!(lease = %self.name, error = %e, "leader election round failed");
            }
            tokio::select! {
                () = tokio::time::sleep(self.timing.retry_period) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if let Err(e) = self.release().await {
            tracing::warn!(lease = %self.name, error = %e, "could not release the lease");
        }
    }
}
