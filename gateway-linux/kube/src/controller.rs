//! The policy controller: list + watch the Istio security resources and the
//! routed Services, and hand every complete, valid change to the gateway.
//!
//! This module owns the watch loop and the keyed cache behind it.
//!
//! - One kube-runtime [`watcher`] per source (PeerAuthentication and
//!   AuthorizationPolicy at the newest served `security.istio.io` version,
//!   Services with the expose label, EndpointSlices). The watcher resumes
//!   from the last resourceVersion after a dropped connection (the API
//!   server replays what happened meanwhile) and re-lists after `410 Gone`.
//! - The cache is keyed by (namespace, name) per source. A re-list is
//!   buffered from `Init` to `InitDone` and then *replaces* that source's
//!   entries, so objects deleted while disconnected disappear and nothing
//!   is counted twice; watch events insert or remove by key, so a replayed
//!   event is idempotent.
//! - Nothing is applied until every source has finished its first list
//!   (an empty cache must never be mistaken for "no policies").
//! - After each burst of events the full configuration is recomputed from
//!   the cache: invalid resources are excluded (and reported once per
//!   resourceVersion as a Kubernetes Event and in the log), the valid ones
//!   are compiled into one [`PolicySet`], and the callback gets it only if
//!   that build succeeded and the result differs from what was last
//!   applied. A change is therefore never applied in part.
//!
//! Decision (as Istio): one invalid resource is *excluded*; it does not
//! block the others. Its previous valid version is not kept either: the
//! cluster says the resource is what it is now, and the Event says it is
//! ignored.

use core::time::Duration;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use meshgate_config::policy::Policy;
use meshgate_config::settings::Service;
use meshgate_core::policy::{MeshConfig, PolicySet};
use meshgate_core::time::UnixTime;
use tokio::sync::watch;

use crate::error::KubeError;
use crate::events::EventReporter;
use crate::policies::{
    InvalidResource, POLICY_KINDS, ResourceKey, SECURITY_GROUP, SECURITY_VERSIONS, convert,
};
use crate::services::{EXPOSE_LABEL, build_services};

/// What the controller watches and how it names things.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Mesh trust domain (`cluster.local`).
    pub trust_domain: String,
    /// Istio root namespace (`istio-system`).
    pub root_namespace: String,
    /// The cluster's DNS domain, for service hosts (`cluster.local`).
    pub cluster_domain: String,
    /// Label selector of the Services to route; `None` routes no Service
    /// (services then come from the settings file only).
    pub service_selector: Option<String>,
    /// This replica's name in Events (the Pod name).
    pub instance: String,
    /// How long to wait for more events before recomputing, so that a
    /// `kubectl apply` of many resources is applied as one change.
    pub settle: Duration,
}

impl ControllerOptions {
    /// Defaults: routes Services labelled `meshgate.io/expose=true`,
    /// cluster domain `cluster.local`, 50 ms settle time.
    pub fn new(trust_domain: &str, root_namespace: &str, instance: &str) -> Self {
        ControllerOptions {
            trust_domain: trust_domain.to_owned(),
            root_namespace: root_namespace.to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            service_selector: Some(format!("{EXPOSE_LABEL}=true")),
            instance: instance.to_owned(),
            settle: Duration::from_millis(50),
        }
    }
}

/// One complete, valid configuration read from the cluster.
#[derive(Clone, Debug)]
pub struct PolicyUpdate {
    /// 1 for the first complete list, +1 per change handed over.
    pub generation: u64,
    /// Every valid PeerAuthentication and AuthorizationPolicy, sorted by
    /// (kind, namespace, name).
    pub policies: Vec<Policy>,
    /// The same policies, compiled.
    pub set: Arc<PolicySet>,
    /// The routed Services (empty without a service selector).
    pub services: Vec<Service>,
    /// Resources left out because they are invalid.
    pub excluded: Vec<InvalidResource>,
}

/// A watched source.
#[derive(Clone, Debug)]
struct Source {
    kind: String,
    api_version: String,
    resource: ApiResource,
    labels: Option<String>,
}

/// Chooses the newest served version of each Istio security kind.
async fn discover_policy_sources(client: &Client) -> Result<Vec<Source>, KubeError> {
    let group = kube::discovery::group(client, SECURITY_GROUP)
        .await
        .map_err(|_| KubeError::MissingCrd {
            kind: POLICY_KINDS.join(", "),
        })?;
    let mut out = Vec::new();
    for kind in POLICY_KINDS {
        let found = SECURITY_VERSIONS.iter().find_map(|v| {
            group
                .versioned_resources(v)
                .into_iter()
                .find(|(ar, _)| ar.kind == *kind)
        });
        let (ar, _caps) = found.ok_or_else(|| KubeError::MissingCrd {
            kind: (*kind).to_owned(),
        })?;
        tracing::info!(kind, version = %ar.api_version, "watching Istio security resources");
        out.push(Source {
            kind: (*kind).to_owned(),
            api_version: ar.api_version.clone(),
            resource: ar,
            labels: None,
        });
    }
    Ok(out)
}

/// Per-source cache.
#[derive(Default)]
struct Cache {
    current: BTreeMap<(String, String), DynamicObject>,
    /// Objects of a re-list in progress (between `Init` and `InitDone`).
    relist: Option<BTreeMap<(String, String), DynamicObject>>,
    synced: bool,
}

fn obj_key(o: &DynamicObject) -> (String, String) {
    (
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

impl Cache {
    /// Applies one watcher event; returns whether `current` changed.
    fn apply(&mut self, event: Event<DynamicObject>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(o) => {
                self.relist.get_or_insert_default().insert(obj_key(&o), o);
                false
            }
            Event::InitDone => {
                self.current = self.relist.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(o) => {
                self.current.insert(obj_key(&o), o);
                true
            }
            Event::Delete(o) => self.current.remove(&obj_key(&o)).is_some(),
        }
    }
}

fn unix_now() -> UnixTime {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    UnixTime::from_millis(ms)
}

/// The controller's state between events.
struct Controller {
    options: ControllerOptions,
    sources: Vec<Source>,
    caches: Vec<Cache>,
    reporter: EventReporter,
    /// resourceVersion last reported per invalid resource.
    reported: HashMap<ResourceKey, String>,
    /// The invalid resources of the last recompute, reported after the
    /// valid ones were applied (enforcement first, Events second).
    pending_reports: Vec<InvalidResource>,
    last: Option<(Vec<Policy>, Vec<Service>)>,
    generation: u64,
}

impl Controller {
    /// Recomputes the configuration from the cache. Returns the update to
    /// hand over, or `None` if nothing changed or the build failed.
    fn recompute(&mut self) -> Option<PolicyUpdate> {
        if !self.caches.iter().all(|c| c.synced) {
            return None;
        }
        let (root_namespace, trust_domain) = (
            self.options.root_namespace.clone(),
            self.options.trust_domain.clone(),
        );
        let mesh = MeshConfig {
            root_namespace: &root_namespace,
            trust_domain: &trust_domain,
        };
        let now = unix_now();
        let mut policies = Vec::new();
        let mut excluded = Vec::new();
        let mut services_objs = Vec::new();
        let mut slices = Vec::new();
        for (src, cache) in self.sources.iter().zip(&self.caches) {
            match src.kind.as_str() {
                "Service" => services_objs.extend(cache.current.values()),
                "EndpointSlice" => slices.extend(cache.current.values()),
                kind => {
                    for obj in cache.current.values() {
                        match convert(kind, &src.api_version, obj, mesh, now) {
                            Ok(p) => policies.push(p),
                            Err(e) => excluded.push(*e),
                        }
                    }
                }
            }
        }
        let (services, bad_services) = build_services(
            services_objs,
            slices,
            &trust_domain,
            &self.options.cluster_domain,
        );
        excluded.extend(bad_services);
        self.pending_reports.clone_from(&excluded);

        policies.sort_by(|a, b| {
            let (ma, mb) = (a.meta(), b.meta());
            (a.kind(), &ma.namespace, &ma.name).cmp(&(b.kind(), &mb.namespace, &mb.name))
        });
        if self
            .last
            .as_ref()
            .is_some_and(|(p, s)| *p == policies && *s == services)
        {
            return None;
        }
        let mut pas = Vec::new();
        let mut aps = Vec::new();
        for p in &policies {
            match p {
                Policy::PeerAuthentication(pa) => pas.push(pa.clone()),
                Policy::AuthorizationPolicy(ap) => aps.push(ap.clone()),
            }
        }
        let set = match PolicySet::new(mesh, &pas, &aps) {
            Ok(set) => Arc::new(set),
            Err(e) => {
                // Every resource compiled on its own, so this is not
                // expected; keep serving the previous set rather than
                // applying part of the change.
                tracing::error!(error = %e, "policy set from the cluster does not build; previous configuration keeps serving");
                return None;
            }
        };
        self.generation += 1;
        Some(PolicyUpdate {
            generation: self.generation,
            policies,
            set,
            services,
            excluded,
        })
    }

    /// Reports each invalid resource once per resourceVersion.
    async fn report(&mut self) {
        let excluded = core::mem::take(&mut self.pending_reports);
        let mut still = HashMap::new();
        for r in &excluded {
            if self.reported.get(&r.key) != Some(&r.resource_version) {
                self.reporter.invalid(r).await;
            }
            still.insert(r.key.clone(), r.resource_version.clone());
        }
        self.reported = still;
    }
}

type Tagged = (usize, Result<Event<DynamicObject>, watcher::Error>);

/// Runs the controller until `stop` turns true: discovers the served
/// versions, watches, and calls `apply` with every complete valid change
/// (the first call after the initial list of every source). `apply`
/// returns an error to refuse an update (e.g. the data plane could not
/// build from it); the controller logs it and offers the next change.
///
/// # Errors
/// Discovery failures (API server unreachable, Istio CRDs missing). Watch
/// errors after the start are retried with backoff and only logged.
pub async fn run<F, Fut>(
    client: Client,
    options: ControllerOptions,
    apply: F,
    stop: watch::Receiver<bool>,
) -> Result<(), KubeError>
where
    F: FnMut(PolicyUpdate) -> Fut + Send,
    Fut: core::future::Future<Output = Result<(), String>> + Send,
{
    let sources = discover(&client, &options).await?;
    watch_loop(client, options, sources, apply, stop).await
}

/// Discovers the sources, starts the controller on the runtime, and
/// returns once the first complete configuration from the cluster has
/// been applied (so a gateway never serves before the cluster's policies
/// are in force), or fails.
///
/// # Errors
/// Discovery failures; the first configuration was not applied within
/// `initial_timeout` (API server unreachable, RBAC missing, or `apply`
/// refused it).
pub async fn spawn<F, Fut>(
    client: Client,
    options: ControllerOptions,
    mut apply: F,
    stop: watch::Receiver<bool>,
    initial_timeout: Duration,
) -> Result<tokio::task::JoinHandle<()>, KubeError>
where
    F: FnMut(PolicyUpdate) -> Fut + Send + 'static,
    Fut: core::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let sources = discover(&client, &options).await?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let mut first_tx = Some(first_tx);
    let apply = move |u: PolicyUpdate| {
        let fut = apply(u);
        let first = first_tx.take();
        async move {
            let r = fut.await;
            // A refused first update drops the notifier: `spawn` then
            // fails the start instead of serving without the cluster's
            // policies.
            if let (Ok(()), Some(tx)) = (&r, first) {
                let _ = tx.send(());
            }
            r
        }
    };
    let task = tokio::spawn(async move {
        if let Err(e) = watch_loop(client, options, sources, apply, stop).await {
            tracing::error!(error = %e, "Kubernetes policy controller stopped");
        }
    });
    let failure = match tokio::time::timeout(initial_timeout, first_rx).await {
        Ok(Ok(())) => return Ok(task),
        Ok(Err(_)) => "the first configuration from the API server was refused".to_owned(),
        Err(_) => format!(
            "no complete configuration from the API server within {initial_timeout:?} (API server reachable? RBAC?)"
        ),
    };
    task.abort();
    Err(KubeError::Internal(failure))
}

async fn discover(client: &Client, options: &ControllerOptions) -> Result<Vec<Source>, KubeError> {
    let mut sources = discover_policy_sources(client).await?;
    if let Some(selector) = &options.service_selector {
        sources.push(Source {
            kind: "Service".to_owned(),
            api_version: "v1".to_owned(),
            resource: ApiResource::erase::<K8sService>(&()),
            labels: Some(selector.clone()),
        });
        sources.push(Source {
            kind: "EndpointSlice".to_owned(),
            api_version: "discovery.k8s.io/v1".to_owned(),
            resource: ApiResource::erase::<EndpointSlice>(&()),
            labels: None,
        });
    }
    Ok(sources)
}

async fn watch_loop<F, Fut>(
    client: Client,
    options: ControllerOptions,
    sources: Vec<Source>,
    mut apply: F,
    mut stop: watch::Receiver<bool>,
) -> Result<(), KubeError>
where
    F: FnMut(PolicyUpdate) -> Fut + Send,
    Fut: core::future::Future<Output = Result<(), String>> + Send,
{
    let streams: Vec<BoxStream<'static, Tagged>> = sources
        .iter()
        .enumerate()
        .map(|(i, src)| {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &src.resource);
            let mut config = watcher::Config::default();
            if let Some(l) = &src.labels {
                config = config.labels(l);
            }
            watcher(api, config)
                .default_backoff()
                .map(move |e| (i, e))
                .boxed()
        })
        .collect();
    let mut events = stream::select_all(streams);
    let mut controller = Controller {
        caches: sources.iter().map(|_| Cache::default()).collect(),
        reporter: EventReporter::new(client.clone(), options.instance.clone()),
        options,
        sources,
        reported: HashMap::new(),
        pending_reports: Vec::new(),
        last: None,
        generation: 0,
    };
    loop {
        let first = tokio::select! {
            e = events.next() => e,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let Some(first) = first else {
            return Err(KubeError::Internal("watch streams ended".to_owned()));
        };
        let mut changed = controller.handle(first);
        // Take everything that arrives within the settle time, so one
        // `kubectl apply` of many resources becomes one change.
        let deadline = tokio::time::Instant::now() + controller.options.settle;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.next()).await {
            changed |= controller.handle(e);
        }
        // Drain whatever is already queued without waiting further.
        while let Some(Some(e)) = events.next().now_or_never() {
            changed |= controller.handle(e);
        }
        if !changed {
            continue;
        }
        let update = controller.recompute();
        if let Some(update) = update {
            let snapshot = (update.policies.clone(), update.services.clone());
            let generation = update.generation;
            match apply(update).await {
                Ok(()) => {
                    tracing::info!(
                        generation,
                        policies = snapshot.0.len(),
                        services = snapshot.1.len(),
                        "configuration from Kubernetes applied"
                    );
                    controller.last = Some(snapshot);
                }
                Err(e) => {
                    tracing::warn!(generation, error = %e, "configuration from Kubernetes refused; previous configuration keeps serving")
                }
            }
        }
        controller.report().await;
    }
}

impl Controller {
    fn handle(&mut self, (i, event): Tagged) -> bool {
        match event {
            Ok(e) => self.caches.get_mut(i).is_some_and(|c| c.apply(e)),
            Err(e) => {
                let kind = self.sources.get(i).map_or("?", |s| s.kind.as_str());
                tracing::warn!(kind, error = %e, "watch interrupted; resuming");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, rv: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}
        }))
        .expect("object")
    }

    #[test]
    fn relist_replaces_instead_of_duplicating() {
        let mut c = Cache::default();
        c.apply(Event::Init);
        c.apply(Event::InitApply(obj("a", "1")));
        c.apply(Event::InitApply(obj("b", "2")));
        assert!(!c.synced, "not synced before InitDone");
        assert!(c.apply(Event::InitDone));
        assert_eq!(c.current.len(), 2);
        // A replayed event for the same key does not add an entry.
        c.apply(Event::Apply(obj("a", "3")));
        c.apply(Event::Apply(obj("a", "3")));
        assert_eq!(c.current.len(), 2);
        // After a 410: the re-list no longer has "b" (deleted while
        // disconnected) and has a new "c".
        c.apply(Event::Init);
        c.apply(Event::InitApply(obj("a", "3")));
        c.apply(Event::InitApply(obj("c", "5")));
        assert_eq!(c.current.len(), 2, "old entries serve until InitDone");
        c.apply(Event::InitDone);
        let names: Vec<_> = c.current.keys().map(|k| k.1.as_str()).collect();
        assert_eq!(names, vec!["a", "c"]);
        assert!(c.apply(Event::Delete(obj("a", "6"))));
        assert!(
            !c.apply(Event::Delete(obj("a", "6"))),
            "second delete is a no-op"
        );
    }
}
