//! The control plane's state: the configuration now serving, and how a
//! change is validated, persisted and swapped in.
//!
//! Policies come from two sources: the gateway's policy files (named in the
//! settings, watched by [`crate::reload`]) and the admin API (`meshgate
//! apply`), whose policies are persisted in the state store. Every change —
//! a file edit, SIGHUP, an API apply or delete — goes through one path,
//! serialised by a mutex:
//!
//! 1. build the complete candidate policy list off to the side;
//! 2. compile it into a `meshgate_core::policy::PolicySet` and let every
//!    [`Subscriber`] (the data plane) prepare what it derives from it;
//! 3. only if all of that succeeded: persist (API changes), then swap the
//!    new [`Config`] in (`ArcSwap`) and commit the subscribers' parts.
//!
//! An invalid change is rejected whole with located errors and the previous
//! configuration keeps serving.

use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use meshgate_ca::{Change, RecordKey, Store, StoreError};
use meshgate_config::error::ConfigErrors;
use meshgate_config::policy::{Policy, parse_policies};
use meshgate_core::policy::{BuildError, MeshConfig, PolicySet};
use meshgate_core::time::UnixTime;

use crate::admin::types::{
    ChangeKind, ChangeResult, ErrorDetail, Origin, ResourceChange, ResourceRef,
};

/// The store record holding every policy applied through the admin API, as
/// one multi-document YAML stream: one record, so an apply of several
/// documents is committed (or not) as a unit.
pub(crate) const API_POLICIES_KEY: &str = "policies.api.yaml";

/// (kind, namespace, name): what identifies a policy.
pub(crate) type PolicyKey = (String, String, String);

/// The key of a policy.
pub(crate) fn key_of(p: &Policy) -> PolicyKey {
    let m = p.meta();
    (p.kind().to_owned(), m.namespace.clone(), m.name.clone())
}

fn resource_ref(k: &PolicyKey) -> ResourceRef {
    ResourceRef {
        kind: k.0.clone(),
        namespace: k.1.clone(),
        name: k.2.clone(),
    }
}

/// One policy and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PolicyEntry {
    /// The resource.
    pub(crate) policy: Policy,
    /// File or API.
    pub(crate) origin: Origin,
}

/// The mesh-level settings policies are compiled against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MeshSettings {
    /// E.g. `cluster.local`.
    pub(crate) trust_domain: String,
    /// E.g. `istio-system`.
    pub(crate) root_namespace: String,
}

/// A service behind the gateway, as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceInfo {
    /// Host names; the first is the display name.
    pub(crate) hosts: Vec<String>,
    /// Namespace of the workload.
    pub(crate) namespace: String,
    /// Workload labels.
    pub(crate) labels: Vec<(String, String)>,
    /// Workload service account.
    pub(crate) service_account: Option<String>,
    /// Ports.
    pub(crate) ports: Vec<PortInfo>,
}

/// One service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PortInfo {
    /// Service port.
    pub(crate) number: u16,
    /// Port name.
    pub(crate) name: Option<String>,
    /// `http` or `tcp`.
    pub(crate) protocol: String,
    /// Workload port.
    pub(crate) target_port: u16,
}

/// One complete, valid configuration. Immutable; a change builds a new one.
#[derive(Debug)]
pub(crate) struct Config {
    /// Starts at 1, +1 per applied change.
    pub(crate) generation: u64,
    /// Mesh settings.
    pub(crate) mesh: MeshSettings,
    /// Every policy, sorted by (kind, namespace, name).
    pub(crate) policies: Vec<PolicyEntry>,
    /// The compiled policies.
    pub(crate) set: Arc<PolicySet>,
    /// The services behind the gateway.
    pub(crate) services: Arc<Vec<ServiceInfo>>,
}

/// Something derived from the configuration (the data plane's snapshot).
/// `prepare` builds it without publishing and may refuse; the returned
/// commit publishes it and cannot fail.
pub(crate) trait Subscriber: Send + Sync {
    /// Builds the derived state for `config`.
    fn prepare(&self, config: &Arc<Config>) -> Result<Commit, String>;
}

/// Publishes prepared state.
pub(crate) type Commit = Box<dyn FnOnce() + Send>;

/// Why a change was rejected.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChangeError {
    /// YAML syntax, schema or Istio validation errors, with locations.
    #[error("invalid configuration, nothing was changed:\n{0}")]
    Invalid(ConfigErrors),
    /// The combined policy set does not compile.
    #[error("the resulting policy set is invalid, nothing was changed: {0}")]
    Build(BuildError),
    /// A policy is defined both in a file and through the API.
    #[error(
        "{resource} is defined in the policy file {path}; change it there (the API can only change policies it applied)"
    )]
    DefinedInFile {
        /// The policy.
        resource: ResourceRef,
        /// The file.
        path: String,
    },
    /// Policy files that cannot be read, or define a policy twice.
    #[error("policy files rejected, nothing was changed:\n{}", .0.join("\n"))]
    Files(Vec<String>),
    /// Delete of something that does not exist.
    #[error("{0} not found, nothing was deleted")]
    NotFound(ResourceRef),
    /// The submission contained no policy.
    #[error("no PeerAuthentication or AuthorizationPolicy in the input")]
    Empty,
    /// The data plane refused the configuration.
    #[error("the data plane refused the configuration, nothing was changed: {0}")]
    Subscriber(String),
    /// Persisting failed; nothing was changed.
    #[error("cannot persist the change, nothing was changed: {0}")]
    Store(#[from] StoreError),
    /// A stored policy record no longer parses (detected, never replaced).
    #[error("stored policies in record {key} are corrupt:\n{errors}")]
    CorruptStore {
        /// The record.
        key: String,
        /// What is wrong.
        errors: ConfigErrors,
    },
}

impl ChangeError {
    /// Located problems, for the API's `details`.
    pub(crate) fn details(&self) -> Vec<ErrorDetail> {
        match self {
            ChangeError::Invalid(errs) | ChangeError::CorruptStore { errors: errs, .. } => errs
                .diagnostics()
                .iter()
                .map(|d| ErrorDetail {
                    file: Some(d.file.clone()),
                    document: d.document,
                    line: d.location.map(|l| l.line),
                    column: d.location.map(|l| l.column),
                    field: (!d.field.is_empty()).then(|| d.field.clone()),
                    message: d.kind.to_string(),
                })
                .collect(),
            ChangeError::Build(b) => b
                .errors
                .iter()
                .map(|e| ErrorDetail {
                    file: None,
                    document: None,
                    line: None,
                    column: None,
                    field: Some(format!(
                        "{} {}/{}: {}",
                        e.kind, e.namespace, e.name, e.error.field
                    )),
                    message: e.error.kind.to_string(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the client's input is at fault (HTTP 4xx) or the gateway
    /// (5xx).
    pub(crate) fn is_client_error(&self) -> bool {
        !matches!(
            self,
            ChangeError::Store(_) | ChangeError::CorruptStore { .. } | ChangeError::Subscriber(_)
        )
    }
}

/// Size and modification time of a watched file (`None`: missing).
type Stamp = Option<(SystemTime, u64)>;

/// The result of loading the policy files: the policies and the stamps of
/// the files they came from.
type Loaded = (Vec<PolicyEntry>, Vec<(PathBuf, Stamp)>);

/// What the change path owns (behind the change mutex).
struct Sources {
    policy_paths: Vec<PathBuf>,
    /// Policies of the last successful file load.
    file_policies: Vec<PolicyEntry>,
    /// The files of the last load attempt and their stamps.
    stamps: Vec<(PathBuf, Stamp)>,
    /// When each file policy without a creationTimestamp was first seen, so
    /// that its age (which decides conflicts) survives reloads.
    first_seen: HashMap<PolicyKey, UnixTime>,
    /// Policies applied through the API, as persisted.
    api_policies: Vec<Policy>,
    /// Kubernetes mode: the policies read from the API server.
    kube_policies: Vec<PolicyEntry>,
}

impl Sources {
    /// Policies the admin API cannot change: files and the cluster's.
    fn read_only(&self) -> Vec<PolicyEntry> {
        let mut v = self.file_policies.clone();
        v.extend(self.kube_policies.iter().cloned());
        v
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    applied: AtomicU64,
    rejected: AtomicU64,
}

/// The gateway's control plane, shared by the admin API, the reloader and
/// the identity manager.
pub(crate) struct ControlPlane {
    current: ArcSwap<Config>,
    sources: tokio::sync::Mutex<Sources>,
    store: Arc<dyn Store>,
    subscribers: Mutex<Vec<Arc<dyn Subscriber>>>,
    last_error: Mutex<Option<String>>,
    counters: Counters,
    listeners: Mutex<Vec<(String, String)>>,
    identity: Mutex<Option<(String, UnixTime)>>,
    /// The running data plane, once `serve` has started it (never in
    /// client commands or unit tests).
    data_plane: std::sync::OnceLock<crate::dataplane::DataPlane>,
}

impl core::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("generation", &self.current.load().generation)
            .finish_non_exhaustive()
    }
}

/// The current wall-clock time, truncated to whole seconds (what an RFC
/// 3339 creationTimestamp can carry, so persisted times round-trip).
pub(crate) fn now_secs() -> UnixTime {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    UnixTime::from_secs(secs)
}

impl ControlPlane {
    /// Loads the initial configuration: the policy files and the policies
    /// persisted in `store`. All-or-nothing: any problem fails the start.
    pub(crate) fn load(
        mesh: MeshSettings,
        services: Vec<ServiceInfo>,
        policy_paths: Vec<PathBuf>,
        store: Arc<dyn Store>,
    ) -> Result<Self, ChangeError> {
        let now = now_secs();
        let api_policies = load_api_policies(&*store)?;
        let mut sources = Sources {
            policy_paths,
            file_policies: Vec::new(),
            stamps: Vec::new(),
            first_seen: HashMap::new(),
            api_policies,
            kube_policies: Vec::new(),
        };
        let (files, stamps) = load_files(&mut sources, now)?;
        sources.file_policies = files;
        sources.stamps = stamps;
        let config = build_config(
            1,
            &mesh,
            Arc::new(services),
            &sources.file_policies,
            &sources.api_policies,
        )?;
        Ok(ControlPlane {
            current: ArcSwap::from_pointee(config),
            sources: tokio::sync::Mutex::new(sources),
            store,
            subscribers: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
            counters: Counters::default(),
            listeners: Mutex::new(Vec::new()),
            identity: Mutex::new(None),
            data_plane: std::sync::OnceLock::new(),
        })
    }

    /// Adds a subscriber and publishes the current configuration to it.
    pub(crate) fn subscribe(&self, s: Arc<dyn Subscriber>) -> Result<(), ChangeError> {
        let commit = s
            .prepare(&self.current.load_full())
            .map_err(ChangeError::Subscriber)?;
        commit();
        lock(&self.subscribers).push(s);
        Ok(())
    }

    /// The configuration now serving.
    pub(crate) fn current(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Validates candidate policies and swaps them in; `persist` runs after
    /// validation and before the swap, and may veto.
    fn commit(
        &self,
        file_policies: &[PolicyEntry],
        api_policies: &[Policy],
        persist: impl FnOnce() -> Result<(), ChangeError>,
    ) -> Result<u64, ChangeError> {
        let old = self.current.load_full();
        let config = Arc::new(build_config(
            old.generation + 1,
            &old.mesh,
            old.services.clone(),
            file_policies,
            api_policies,
        )?);
        let subscribers = lock(&self.subscribers).clone();
        let commits = subscribers
            .iter()
            .map(|s| s.prepare(&config))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ChangeError::Subscriber)?;
        persist()?;
        let generation = config.generation;
        self.current.store(config);
        for c in commits {
            c();
        }
        Ok(generation)
    }

    fn record(&self, result: Result<u64, String>, what: &str) {
        match result {
            Ok(generation) => {
                self.counters.applied.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_error) = None;
                tracing::info!(generation, "{what}: configuration applied");
            }
            Err(e) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "{what}: change rejected; previous configuration keeps serving");
                *lock(&self.last_error) = Some(format!("{what}: {e}"));
            }
        }
    }

    /// `meshgate apply`: creates or replaces the policies in `text`.
    pub(crate) async fn apply_yaml(
        &self,
        origin: &str,
        text: &str,
        actor: &str,
    ) -> Result<ChangeResult, ChangeError> {
        let now = now_secs();
        self.change_api_policies(actor, "apply", |read_only, api| {
            let submitted = parse_policies(origin, text, now).map_err(ChangeError::Invalid)?;
            if submitted.is_empty() {
                return Err(ChangeError::Empty);
            }
            let mut changes = Vec::new();
            for mut p in submitted {
                let k = key_of(&p);
                refuse_file_defined(read_only, &k)?;
                let change = match api.get(&k) {
                    None => ChangeKind::Created,
                    Some(old) => {
                        // Re-applying keeps the original age unless the
                        // YAML sets one: age decides conflicts, and an
                        // edit must not make a policy lose to a younger one.
                        if p.meta().creation == now {
                            set_creation(&mut p, old.meta().creation);
                        }
                        if *old == p {
                            ChangeKind::Unchanged
                        } else {
                            ChangeKind::Configured
                        }
                    }
                };
                changes.push(ResourceChange {
                    resource: resource_ref(&k),
                    change,
                });
                api.insert(k, p);
            }
            Ok(changes)
        })
        .await
    }

    /// `meshgate delete -f`: removes the policies named in `text`.
    pub(crate) async fn delete_yaml(
        &self,
        origin: &str,
        text: &str,
        actor: &str,
    ) -> Result<ChangeResult, ChangeError> {
        let submitted = parse_policies(origin, text, now_secs()).map_err(ChangeError::Invalid)?;
        if submitted.is_empty() {
            return Err(ChangeError::Empty);
        }
        let keys = submitted.iter().map(key_of).collect();
        self.delete_keys(keys, actor).await
    }

    /// Deletes policies by key (all or none).
    pub(crate) async fn delete_keys(
        &self,
        keys: Vec<PolicyKey>,
        actor: &str,
    ) -> Result<ChangeResult, ChangeError> {
        self.change_api_policies(actor, "delete", |read_only, api| {
            let mut changes = Vec::new();
            for k in keys {
                refuse_file_defined(read_only, &k)?;
                if api.remove(&k).is_none() {
                    return Err(ChangeError::NotFound(resource_ref(&k)));
                }
                changes.push(ResourceChange {
                    resource: resource_ref(&k),
                    change: ChangeKind::Deleted,
                });
            }
            Ok(changes)
        })
        .await
    }

    /// One all-or-nothing change of the API-managed policies: `edit` gets
    /// the read-only (file and Kubernetes) policies and a copy of the API
    /// ones to change; the result is validated, persisted and swapped in
    /// only if every step succeeds, and is recorded as `what` either way.
    async fn change_api_policies<F>(
        &self,
        actor: &str,
        what: &str,
        edit: F,
    ) -> Result<ChangeResult, ChangeError>
    where
        F: FnOnce(
            &[PolicyEntry],
            &mut BTreeMap<PolicyKey, Policy>,
        ) -> Result<Vec<ResourceChange>, ChangeError>,
    {
        let mut sources = self.sources.lock().await;
        let read_only = sources.read_only();
        let result = (|| -> Result<_, ChangeError> {
            let mut api: BTreeMap<PolicyKey, Policy> = sources
                .api_policies
                .iter()
                .map(|p| (key_of(p), p.clone()))
                .collect();
            let changes = edit(&read_only, &mut api)?;
            let new_api: Vec<Policy> = api.into_values().collect();
            let note = summarize(&changes);
            let generation = self.commit(&read_only, &new_api, || {
                persist_api_policies(&*self.store, &new_api, actor, &note)
            })?;
            Ok((generation, changes, new_api))
        })();
        let recorded = result
            .as_ref()
            .map(|(g, _, _)| *g)
            .map_err(ToString::to_string);
        self.record(recorded, what);
        let (generation, changes, new_api) = result?;
        sources.api_policies = new_api;
        Ok(ChangeResult {
            changes,
            generation,
        })
    }

    /// Reloads the policy files if any changed since the last attempt (or
    /// always, with `force`, for SIGHUP). Returns the new generation when a
    /// configuration was applied.
    pub(crate) async fn reload_files(&self, force: bool) -> Result<Option<u64>, ChangeError> {
        let mut sources = self.sources.lock().await;
        if !force {
            let current = stamps_of(&expand(&sources.policy_paths));
            if current == sources.stamps {
                return Ok(None);
            }
        }
        let now = now_secs();
        let result = load_files(&mut sources, now).and_then(|(files, stamps)| {
            let mut all = files.clone();
            all.extend(sources.kube_policies.iter().cloned());
            let g = self.commit(&all, &sources.api_policies, || Ok(()))?;
            Ok((g, files, stamps))
        });
        match result {
            Ok((g, files, stamps)) => {
                sources.file_policies = files;
                sources.stamps = stamps;
                self.record(Ok(g), "reload");
                Ok(Some(g))
            }
            Err(e) => {
                // Remember what was tried, so a broken file is reported once
                // rather than every poll; the next edit retries.
                sources.stamps = stamps_of(&expand(&sources.policy_paths));
                self.record(Err(e.to_string()), "reload");
                Err(e)
            }
        }
    }

    /// Kubernetes mode: replaces every policy read from the API server, as
    /// one change. They show as origin `kubernetes:KIND/NS/NAME` and, like
    /// file policies, cannot be changed through the admin API (the cluster
    /// is their source of truth).
    pub(crate) async fn replace_kubernetes_policies(
        &self,
        policies: Vec<Policy>,
    ) -> Result<u64, ChangeError> {
        let mut sources = self.sources.lock().await;
        let kube: Vec<PolicyEntry> = policies
            .into_iter()
            .map(|policy| {
                let m = policy.meta();
                let path = format!("kubernetes:{}/{}/{}", policy.kind(), m.namespace, m.name);
                PolicyEntry {
                    policy,
                    origin: Origin::File { path },
                }
            })
            .collect();
        let mut all = sources.file_policies.clone();
        all.extend(kube.iter().cloned());
        let result = self.commit(&all, &sources.api_policies, || Ok(()));
        self.record(
            result.as_ref().map(|g| *g).map_err(ToString::to_string),
            "kubernetes",
        );
        let g = result?;
        sources.kube_policies = kube;
        Ok(g)
    }

    /// Records the bound data-plane listeners for `/api/v1/status`: name
    /// and `ADDR (http|tcp)`.
    pub(crate) fn set_listeners(&self, listeners: Vec<(String, String)>) {
        *lock(&self.listeners) = listeners;
    }

    /// Hands the running data plane to the admin API (set once by
    /// `serve`; a second call is ignored and reported as `false`).
    pub(crate) fn set_data_plane(&self, dp: crate::dataplane::DataPlane) -> bool {
        self.data_plane.set(dp).is_ok()
    }

    /// The running data plane: plaintext clients
    /// ([`crate::dataplane::DataPlane::plaintext_clients`]), the recent
    /// access log ([`crate::dataplane::DataPlane::recent_access_log`]),
    /// open connections ([`crate::dataplane::DataPlane::active_connections`]).
    /// `None` until `serve` has bound the listeners.
    pub(crate) fn data_plane(&self) -> Option<&crate::dataplane::DataPlane> {
        self.data_plane.get()
    }

    /// A certificate was revoked: close the data plane's open connections
    /// of revoked peers now (new handshakes already consult the CA).
    /// Returns how many connections were told to close.
    pub(crate) fn revocations_changed(&self) -> usize {
        self.data_plane()
            .map_or(0, crate::dataplane::DataPlane::close_revoked)
    }

    /// The store's audit log: entries with `seq > after`, oldest first.
    #[allow(dead_code, reason = "read by the admin UI's audit view")]
    pub(crate) fn audit_log(
        &self,
        after: u64,
    ) -> Result<Vec<meshgate_ca::AuditEntry>, meshgate_ca::StoreError> {
        self.store.audit_log(after)
    }

    /// Records the gateway's current identity and its expiry.
    pub(crate) fn set_identity(&self, spiffe_id: String, not_after: UnixTime) {
        *lock(&self.identity) = Some((spiffe_id, not_after));
    }

    /// The status the admin API reports.
    pub(crate) fn status(&self) -> crate::admin::types::Status {
        let identity = lock(&self.identity).clone();
        crate::admin::types::Status {
            generation: self.current.load().generation,
            listeners: lock(&self.listeners).clone(),
            identity: identity.as_ref().map(|(id, _)| id.clone()),
            identity_expires: identity.map(|(_, t)| rfc3339(t)),
            last_error: lock(&self.last_error).clone(),
            workers: tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_workers()),
        }
    }

    /// Prometheus text for the control plane's metrics.
    pub(crate) fn render_metrics(&self) -> String {
        use core::fmt::Write as _;
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        gauge(
            "meshgate_config_generation",
            "Configuration generation now serving.",
            "gauge",
            self.current.load().generation,
        );
        gauge(
            "meshgate_config_changes_applied_total",
            "Configuration changes applied (API, file reload, SIGHUP).",
            "counter",
            self.counters.applied.load(Ordering::Relaxed),
        );
        gauge(
            "meshgate_config_changes_rejected_total",
            "Configuration changes rejected as invalid; the previous configuration kept serving.",
            "counter",
            self.counters.rejected.load(Ordering::Relaxed),
        );
        if let Some((_, not_after)) = lock(&self.identity).clone() {
            gauge(
                "meshgate_identity_cert_expiry_seconds",
                "Unix time at which the gateway's own certificate expires.",
                "gauge",
                not_after.as_secs(),
            );
        }
        out
    }
}

fn summarize(changes: &[ResourceChange]) -> String {
    changes
        .iter()
        .map(|c| format!("{:?} {}", c.change, c.resource).to_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

fn set_creation(p: &mut Policy, t: UnixTime) {
    match p {
        Policy::PeerAuthentication(pa) => pa.meta.creation = t,
        Policy::AuthorizationPolicy(ap) => ap.meta.creation = t,
    }
}

/// Refuses an API change of a policy a file (or the cluster) defines: the
/// file is the source of truth for it.
fn refuse_file_defined(read_only: &[PolicyEntry], k: &PolicyKey) -> Result<(), ChangeError> {
    match file_origin(read_only, k) {
        Some(path) => Err(ChangeError::DefinedInFile {
            resource: resource_ref(k),
            path,
        }),
        None => Ok(()),
    }
}

fn file_origin(files: &[PolicyEntry], k: &PolicyKey) -> Option<String> {
    files
        .iter()
        .find(|e| key_of(&e.policy) == *k)
        .and_then(|e| match &e.origin {
            Origin::File { path } => Some(path.clone()),
            Origin::Api => None,
        })
}

/// Compiles file + API policies into a configuration.
fn build_config(
    generation: u64,
    mesh: &MeshSettings,
    services: Arc<Vec<ServiceInfo>>,
    file_policies: &[PolicyEntry],
    api_policies: &[Policy],
) -> Result<Config, ChangeError> {
    let mut entries: Vec<PolicyEntry> = file_policies.to_vec();
    for p in api_policies {
        let k = key_of(p);
        if let Some(path) = file_origin(file_policies, &k) {
            return Err(ChangeError::DefinedInFile {
                resource: resource_ref(&k),
                path,
            });
        }
        entries.push(PolicyEntry {
            policy: p.clone(),
            origin: Origin::Api,
        });
    }
    entries.sort_by_key(|e| key_of(&e.policy));
    let mut pas = Vec::new();
    let mut aps = Vec::new();
    for e in &entries {
        match &e.policy {
            Policy::PeerAuthentication(p) => pas.push(p.clone()),
            Policy::AuthorizationPolicy(a) => aps.push(a.clone()),
        }
    }
    let set = PolicySet::new(
        MeshConfig {
            root_namespace: &mesh.root_namespace,
            trust_domain: &mesh.trust_domain,
        },
        &pas,
        &aps,
    )
    .map_err(ChangeError::Build)?;
    Ok(Config {
        generation,
        mesh: mesh.clone(),
        policies: entries,
        set: Arc::new(set),
        services,
    })
}

/// The files behind the configured paths: a file as is, a directory's
/// `*.yaml`, `*.yml` and `*.json` (sorted, dot-files skipped). A missing
/// path is kept so that loading reports it.
pub(crate) fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|f| is_policy_file(f))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    out
}

fn is_policy_file(f: &Path) -> bool {
    let hidden = f
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext_ok = f
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
    f.is_file() && !hidden && ext_ok
}

fn stamps_of(files: &[PathBuf]) -> Vec<(PathBuf, Stamp)> {
    files
        .iter()
        .map(|f| {
            let stamp = std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (f.clone(), stamp)
        })
        .collect()
}

/// Reads and parses every policy file; all-or-nothing.
fn load_files(sources: &mut Sources, now: UnixTime) -> Result<Loaded, ChangeError> {
    let files = expand(&sources.policy_paths);
    let stamps = stamps_of(&files);
    let mut errors = Vec::new();
    let mut entries: Vec<PolicyEntry> = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        let text = match read_limited(f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        match parse_policies(&name, &text, now) {
            Ok(policies) => {
                for mut p in policies {
                    let k = key_of(&p);
                    if p.meta().creation == now {
                        let first = *sources.first_seen.entry(k.clone()).or_insert(now);
                        set_creation(&mut p, first);
                    }
                    if let Some(prev) = entries.iter().find(|e| key_of(&e.policy) == k) {
                        errors.push(format!(
                            "{name}: {} {}/{} is also defined in {}",
                            k.0, k.1, k.2, prev.origin
                        ));
                        continue;
                    }
                    entries.push(PolicyEntry {
                        policy: p,
                        origin: Origin::File { path: name.clone() },
                    });
                }
            }
            Err(e) => return Err(ChangeError::Invalid(e)),
        }
    }
    if !errors.is_empty() {
        return Err(ChangeError::Files(errors));
    }
    Ok((entries, stamps))
}

fn read_limited(f: &Path) -> std::io::Result<String> {
    let len = std::fs::metadata(f)?.len();
    if len > meshgate_config::MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} bytes", meshgate_config::MAX_FILE_BYTES),
        ));
    }
    std::fs::read_to_string(f)
}

fn api_key() -> Result<RecordKey, StoreError> {
    RecordKey::new(API_POLICIES_KEY)
}

fn load_api_policies(store: &dyn Store) -> Result<Vec<Policy>, ChangeError> {
    let key = api_key()?;
    let Some(bytes) = store.get(&key)? else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8_lossy(&bytes);
    // The persisted YAML carries creationTimestamp, so the default passed
    // here is never used for a valid record.
    parse_policies(&format!("<store:{API_POLICIES_KEY}>"), &text, now_secs()).map_err(|errors| {
        ChangeError::CorruptStore {
            key: API_POLICIES_KEY.to_owned(),
            errors,
        }
    })
}

fn persist_api_policies(
    store: &dyn Store,
    policies: &[Policy],
    actor: &str,
    note: &str,
) -> Result<(), ChangeError> {
    let key = api_key()?;
    let yaml = meshgate_config::emit::policies_to_yaml(policies);
    let change = Change {
        actor,
        at: now_secs(),
        note,
    };
    store.put(&key, yaml.as_bytes(), &change)?;
    Ok(())
}

/// RFC 3339 (UTC, seconds) for API output.
pub(crate) fn rfc3339(t: UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it:
/// the values guarded here are replaced whole, so they stay consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicBool;

    const STRICT: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
spec:
  mtls: {mode: STRICT}
";

    fn plane(dir: &Path) -> ControlPlane {
        let (store, _) = meshgate_ca::FileStore::open(dir).expect("store");
        ControlPlane::load(
            MeshSettings {
                trust_domain: "cluster.local".into(),
                root_namespace: "istio-system".into(),
            },
            Vec::new(),
            Vec::new(),
            Arc::new(store),
        )
        .expect("load")
    }

    /// Refuses while `refuse` is set; counts commits.
    struct Gate {
        refuse: AtomicBool,
        commits: Arc<AtomicU64>,
    }

    impl Subscriber for Gate {
        fn prepare(&self, _config: &Arc<Config>) -> Result<Commit, String> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err("refused".into());
            }
            let commits = self.commits.clone();
            Ok(Box::new(move || {
                commits.fetch_add(1, Ordering::SeqCst);
            }))
        }
    }

    #[tokio::test]
    async fn a_refusing_subscriber_rejects_the_change_and_nothing_is_persisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = plane(dir.path());
        let commits = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Gate {
            refuse: AtomicBool::new(false),
            commits: commits.clone(),
        });
        cp.subscribe(gate.clone()).expect("subscribe");
        assert_eq!(
            commits.load(Ordering::SeqCst),
            1,
            "initial config published"
        );

        gate.refuse.store(true, Ordering::SeqCst);
        let err = cp
            .apply_yaml("t.yaml", STRICT, "test")
            .await
            .expect_err("refused");
        assert!(matches!(err, ChangeError::Subscriber(_)), "{err}");
        assert_eq!(cp.current().generation, 1);
        assert!(cp.current().policies.is_empty());
        drop(cp);
        // Not persisted either: a restart sees no policy.
        let cp = plane(dir.path());
        assert!(cp.current().policies.is_empty());

        gate.refuse.store(false, Ordering::SeqCst);
        cp.subscribe(gate.clone()).expect("subscribe");
        let res = cp
            .apply_yaml("t.yaml", STRICT, "test")
            .await
            .expect("apply");
        assert_eq!(res.generation, 2);
        assert_eq!(commits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn deleting_a_missing_policy_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = plane(dir.path());
        cp.apply_yaml("t.yaml", STRICT, "test")
            .await
            .expect("apply");
        let missing = (
            "PeerAuthentication".into(),
            "bookinfo".into(),
            "nope".into(),
        );
        let existing = (
            "PeerAuthentication".into(),
            "bookinfo".into(),
            "default".into(),
        );
        let err = cp
            .delete_keys(vec![existing, missing], "test")
            .await
            .expect_err("not found");
        assert!(matches!(err, ChangeError::NotFound(_)));
        assert_eq!(cp.current().policies.len(), 1, "all-or-nothing");
    }

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(rfc3339(UnixTime::from_secs(0)), "1970-01-01T00:00:00Z");
    }
}
