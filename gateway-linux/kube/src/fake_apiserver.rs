//! A fake Kubernetes API server for tests (feature `test-util`).
//!
//! This module owns an in-process HTTP server on loopback that speaks
//! enough of the Kubernetes API for meshgate's Kubernetes mode, with the
//! real protocol's semantics rather than canned answers:
//!
//! - discovery: `/api`, `/api/v1`, `/apis`, `/apis/{group}`,
//!   `/apis/{group}/{version}`;
//! - one global, increasing resourceVersion; create (`generateName`
//!   supported, `409 AlreadyExists`), get, replace (`409 Conflict` when the
//!   body's resourceVersion is not the stored one), delete;
//! - list (cluster-wide or per namespace, equality label selectors) with the
//!   list's resourceVersion;
//! - watch from a resourceVersion: the events after it are replayed from
//!   the history, then live ADDED/MODIFIED/DELETED follow; BOOKMARK events
//!   when `allowWatchBookmarks=true`; a resourceVersion older than the last
//!   [`FakeApiServer::compact`] gets the API server's `410 Gone` (an ERROR
//!   event with a `Status` of code 410, as a real server sends it);
//!   `timeoutSeconds` ends the stream;
//! - `security.istio.io` is served at `v1` and `v1beta1` over one storage,
//!   as CRD versions are.
//!
//! Test controls: [`FakeApiServer::apply`]/[`FakeApiServer::delete`] change
//! objects as `kubectl` would; [`FakeApiServer::drop_watches`] cuts every
//! open watch connection; [`FakeApiServer::inject_conflicts`] makes the
//! next updates of a resource fail with 409.
//!
//! The server runs on its own thread and runtime, so a test blocked in a
//! synchronous call (the [`Store`](meshgate_ca::Store) trait) never stalls
//! it.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A resource type the fake serves.
#[derive(Clone, Copy, Debug)]
struct ResourceType {
    group: &'static str,
    versions: &'static [&'static str],
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        versions: &["v1"],
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
    },
    ResourceType {
        group: "",
        versions: &["v1"],
        plural: "services",
        kind: "Service",
        namespaced: true,
    },
    ResourceType {
        group: "",
        versions: &["v1"],
        plural: "events",
        kind: "Event",
        namespaced: true,
    },
    ResourceType {
        group: "",
        versions: &["v1"],
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
    },
    ResourceType {
        group: "discovery.k8s.io",
        versions: &["v1"],
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    ResourceType {
        group: "coordination.k8s.io",
        versions: &["v1"],
        plural: "leases",
        kind: "Lease",
        namespaced: true,
    },
    ResourceType {
        group: "security.istio.io",
        versions: &["v1", "v1beta1"],
        plural: "peerauthentications",
        kind: "PeerAuthentication",
        namespaced: true,
    },
    ResourceType {
        group: "security.istio.io",
        versions: &["v1", "v1beta1"],
        plural: "authorizationpolicies",
        kind: "AuthorizationPolicy",
        namespaced: true,
    },
];

fn find_type(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural && r.versions.contains(&version))
}

fn find_kind(api_version: &str, kind: &str) -> Option<(&'static ResourceType, String)> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind && r.versions.contains(&version))
        .map(|r| (r, version.to_owned()))
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

type TypeKey = (&'static str, &'static str);
type ObjKey = (String, String);

/// One recorded change.
#[derive(Clone, Debug)]
struct HistoryEvent {
    rv: u64,
    ty: TypeKey,
    kind: &'static str,
    event_type: &'static str,
    object: Value,
}

struct Watch {
    id: u64,
    ty: TypeKey,
    version: String,
    namespace: Option<String>,
    selector: Vec<Requirement>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    next_uid: u64,
    objects: HashMap<TypeKey, BTreeMap<ObjKey, Value>>,
    history: Vec<HistoryEvent>,
    /// Watches starting before this resourceVersion get 410 Gone.
    compacted: u64,
    watches: Vec<Watch>,
    next_watch: u64,
    conflicts: HashMap<&'static str, usize>,
    requests: Vec<String>,
    /// apiVersions (`group/version`) not served, e.g. a cluster without
    /// Istio's v1 or without Istio at all.
    hidden: Vec<String>,
    /// While set, new watch requests answer 503 (an API server that is
    /// unreachable for watches), so changes made meanwhile are certainly
    /// missed by the client's live stream.
    watches_paused: bool,
}

/// A label selector requirement (`k=v`, `k==v`, `k!=v`, `k`).
#[derive(Clone, Debug)]
enum Requirement {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
}

fn parse_selector(s: &str) -> Vec<Requirement> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let p = p.trim();
            if let Some((k, v)) = p.split_once("!=") {
                Requirement::Ne(k.to_owned(), v.to_owned())
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Requirement::Eq(k.to_owned(), v.to_owned())
            } else {
                Requirement::Exists(p.to_owned())
            }
        })
        .collect()
}

fn selector_matches(sel: &[Requirement], obj: &Value) -> bool {
    let labels = obj.pointer("/metadata/labels");
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    sel.iter().all(|r| match r {
        Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
        Requirement::Ne(k, v) => get(k) != Some(v.as_str()),
        Requirement::Exists(k) => get(k).is_some(),
    })
}

fn namespace_of(obj: &Value) -> String {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn with_type(mut obj: Value, api_version: &str, kind: &str) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(api_version.to_owned()));
        m.insert("kind".into(), Value::String(kind.to_owned()));
    }
    obj
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Records an event and sends it to the matching watches.
    fn publish(
        &mut self,
        ty: TypeKey,
        kind: &'static str,
        event_type: &'static str,
        object: Value,
    ) {
        let rv = self.rv;
        self.history.push(HistoryEvent {
            rv,
            ty,
            kind,
            event_type,
            object: object.clone(),
        });
        let ns = namespace_of(&object);
        self.watches.retain(|w| {
            if w.ty != ty
                || w.namespace.as_ref().is_some_and(|n| *n != ns)
                || !selector_matches(&w.selector, &object)
            {
                return !w.tx.is_closed();
            }
            let av = api_version(ty.0, &w.version);
            let line = watch_line(event_type, &with_type(object.clone(), &av, kind));
            w.tx.send(line).is_ok()
        });
    }

    fn store(&mut self, ty: TypeKey, kind: &'static str, mut obj: Value, created: bool) -> Value {
        let rv = self.bump();
        if let Some(m) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let key = (namespace_of(&obj), name_of(&obj));
        self.objects.entry(ty).or_default().insert(key, obj.clone());
        self.publish(
            ty,
            kind,
            if created { "ADDED" } else { "MODIFIED" },
            obj.clone(),
        );
        obj
    }

    fn create(
        &mut self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, (u16, Value)> {
        let ty = (rt.group, rt.plural);
        let meta = obj
            .as_object_mut()
            .map(|m| m.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| (400, status(400, "BadRequest", "object has no metadata")))?;
        if let Some(ns) = ns {
            meta.insert("namespace".into(), Value::String(ns.to_owned()));
        }
        let has_name = meta
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .ok_or_else(|| (422, status(422, "Invalid", "metadata.name: Required value")))?
                .to_owned();
            self.next_uid += 1;
            meta.insert(
                "name".into(),
                Value::String(format!("{prefix}{:05x}", self.next_uid)),
            );
        }
        self.next_uid += 1;
        meta.insert(
            "uid".into(),
            Value::String(format!("uid-{}", self.next_uid)),
        );
        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        let key = (namespace_of(&obj), name_of(&obj));
        if self.objects.get(&ty).is_some_and(|m| m.contains_key(&key)) {
            let msg = format!("{} \"{}\" already exists", rt.plural, key.1);
            return Err((409, status(409, "AlreadyExists", &msg)));
        }
        Ok(self.store(ty, rt.kind, obj, true))
    }

    fn replace(
        &mut self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
    ) -> Result<Value, (u16, Value)> {
        let ty = (rt.group, rt.plural);
        let key = (ns.unwrap_or_default().to_owned(), name.to_owned());
        let Some(old) = self.objects.get(&ty).and_then(|m| m.get(&key)).cloned() else {
            let msg = format!("{} \"{name}\" not found", rt.plural);
            return Err((404, status(404, "NotFound", &msg)));
        };
        if let Some(n) = self.conflicts.get_mut(rt.plural).filter(|n| **n > 0) {
            *n -= 1;
            return Err((
                409,
                status(
                    409,
                    "Conflict",
                    "injected conflict: the object has been modified",
                ),
            ));
        }
        let sent_rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let stored_rv = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if sent_rv.is_some() && sent_rv != stored_rv {
            let msg = format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.plural
            );
            return Err((409, status(409, "Conflict", &msg)));
        }
        let meta = obj
            .as_object_mut()
            .map(|m| m.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| (400, status(400, "BadRequest", "object has no metadata")))?;
        meta.insert("name".into(), Value::String(name.to_owned()));
        if let Some(ns) = ns {
            meta.insert("namespace".into(), Value::String(ns.to_owned()));
        }
        for k in ["uid", "creationTimestamp"] {
            if let Some(v) = old.pointer(&format!("/metadata/{k}")) {
                meta.insert(k.into(), v.clone());
            }
        }
        Ok(self.store(ty, rt.kind, obj, false))
    }

    fn delete(
        &mut self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, (u16, Value)> {
        let ty = (rt.group, rt.plural);
        let key = (ns.unwrap_or_default().to_owned(), name.to_owned());
        let Some(mut obj) = self.objects.get_mut(&ty).and_then(|m| m.remove(&key)) else {
            let msg = format!("{} \"{name}\" not found", rt.plural);
            return Err((404, status(404, "NotFound", &msg)));
        };
        let rv = self.bump();
        if let Some(m) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        self.publish(ty, rt.kind, "DELETED", obj.clone());
        Ok(obj)
    }
}

fn watch_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": event_type, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// The fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl core::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Test code: a panic in a handler must not hide later assertions.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often BOOKMARK events are sent to watches that asked for them.
const BOOKMARK_INTERVAL: Duration = Duration::from_millis(500);

impl FakeApiServer {
    /// Starts the server on 127.0.0.1 (a free port) on its own thread.
    ///
    /// # Panics
    /// If the thread, runtime or socket cannot be created (test setup).
    pub fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let state = inner.clone();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fake API server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind fake API server");
                    addr_tx
                        .send(listener.local_addr().expect("local addr"))
                        .expect("report address");
                    let ticker_state = state.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(BOOKMARK_INTERVAL).await;
                            send_bookmarks(&ticker_state);
                        }
                    });
                    let app = Router::new().fallback(handle).with_state(state);
                    tokio::select! {
                        r = axum::serve(listener, app) => { let _ = r; }
                        _ = shutdown_rx => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_millis(200));
            })
            .expect("fake API server thread");
        let addr = addr_rx.recv().expect("fake API server address");
        FakeApiServer {
            addr,
            inner,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration pointing at this server (no auth).
    ///
    /// # Panics
    /// Never for the loopback URL this server has.
    pub fn kube_config(&self) -> kube::Config {
        let mut c = kube::Config::new(self.url().parse().expect("server URL"));
        c.default_namespace = "default".to_owned();
        c.read_timeout = Some(Duration::from_secs(295));
        c
    }

    /// Creates or replaces an object the way `kubectl apply` would (no
    /// resourceVersion check). The object must carry `apiVersion`, `kind`
    /// and `metadata.name` (and `namespace` for namespaced kinds).
    ///
    /// # Panics
    /// On an unknown kind (a test error).
    pub fn apply(&self, obj: Value) -> Value {
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let (rt, _) = find_kind(&av, &kind)
            .unwrap_or_else(|| panic!("fake API server does not serve {av} {kind}"));
        let ns = namespace_of(&obj);
        let ns = rt.namespaced.then_some(ns.as_str());
        let name = name_of(&obj);
        let mut inner = lock(&self.inner);
        inner.requests.push(format!("TEST apply {kind} {name}"));
        let exists = inner
            .objects
            .get(&(rt.group, rt.plural))
            .is_some_and(|m| m.contains_key(&(ns.unwrap_or_default().to_owned(), name.clone())));
        let mut obj = obj;
        if let Some(m) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let result = if exists {
            inner.replace(rt, ns, &name, obj)
        } else {
            inner.create(rt, ns, obj)
        };
        result.unwrap_or_else(|(code, s)| panic!("apply {kind} {name}: {code} {s}"))
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let Some((rt, _)) = find_kind(api_version, kind) else {
            return false;
        };
        let ns = rt.namespaced.then_some(namespace);
        lock(&self.inner).delete(rt, ns, name).is_ok()
    }

    /// The stored object, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let (rt, _) = find_kind(api_version, kind)?;
        lock(&self.inner)
            .objects
            .get(&(rt.group, rt.plural))
            .and_then(|m| m.get(&(namespace.to_owned(), name.to_owned())))
            .cloned()
    }

    /// Every stored object of a kind.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some((rt, _)) = find_kind(api_version, kind) else {
            return Vec::new();
        };
        lock(&self.inner)
            .objects
            .get(&(rt.group, rt.plural))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Cuts every open watch connection (the clients see the stream end,
    /// as when a connection drops).
    pub fn drop_watches(&self) {
        lock(&self.inner).watches.clear();
    }

    /// Cuts every open watch and refuses new ones with `503` until
    /// [`Self::resume_watches`]: what a client sees while the connection to
    /// the API server is down.
    pub fn pause_watches(&self) {
        let mut inner = lock(&self.inner);
        inner.watches_paused = true;
        inner.watches.clear();
    }

    /// Accepts watch requests again.
    pub fn resume_watches(&self) {
        lock(&self.inner).watches_paused = false;
    }

    /// Forgets the history up to now: a watch resuming from an older
    /// resourceVersion gets `410 Gone` and must re-list.
    pub fn compact(&self) {
        let mut inner = lock(&self.inner);
        inner.compacted = inner.rv + 1;
        inner.history.clear();
    }

    /// Makes the next `n` updates of resources called `plural` (e.g.
    /// `secrets`) fail with `409 Conflict`.
    pub fn inject_conflicts(&self, plural: &str, n: usize) {
        if let Some(rt) = RESOURCES.iter().find(|r| r.plural == plural) {
            lock(&self.inner).conflicts.insert(rt.plural, n);
        }
    }

    /// Stops serving an API version (`security.istio.io/v1`): discovery
    /// no longer lists it and its paths answer 404, as in a cluster with an
    /// older Istio (or none). Objects stay stored and are served at the
    /// other versions of their group.
    pub fn hide_api_version(&self, api_version: &str) {
        lock(&self.inner).hidden.push(api_version.to_owned());
    }

    /// Injected conflicts not yet consumed for `plural`.
    pub fn pending_conflicts(&self, plural: &str) -> usize {
        lock(&self.inner)
            .conflicts
            .get(plural)
            .copied()
            .unwrap_or(0)
    }

    /// Number of watch connections open now.
    pub fn open_watches(&self) -> usize {
        let mut inner = lock(&self.inner);
        inner.watches.retain(|w| !w.tx.is_closed());
        inner.watches.len()
    }

    /// Every request seen, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.inner).requests.clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        lock(&self.inner).watches.clear();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn send_bookmarks(state: &Mutex<Inner>) {
    let mut inner = lock(state);
    let rv = inner.rv.to_string();
    inner.watches.retain(|w| {
        if !w.bookmarks {
            return !w.tx.is_closed();
        }
        let rt = RESOURCES.iter().find(|r| (r.group, r.plural) == w.ty);
        let kind = rt.map_or("", |r| r.kind);
        let bm = json!({
            "apiVersion": api_version(w.ty.0, &w.version),
            "kind": kind,
            "metadata": {"resourceVersion": rv}
        });
        w.tx.send(watch_line("BOOKMARK", &bm)).is_ok()
    });
}

fn json_response(code: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = core::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn discovery(path: &[&str], hidden: &[String]) -> Option<Value> {
    let served = |g: &str, v: &str| {
        RESOURCES
            .iter()
            .any(|r| r.group == g && r.versions.contains(&v))
            && !hidden.contains(&api_version(g, v))
    };
    let resource_list = |group: &str, version: &str| {
        let resources: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.group == group && r.versions.contains(&version))
            .map(|r| {
                json!({
                    "name": r.plural, "singularName": r.kind.to_lowercase(),
                    "namespaced": r.namespaced, "kind": r.kind,
                    "verbs": ["create", "delete", "get", "list", "update", "watch"]
                })
            })
            .collect();
        json!({"kind": "APIResourceList", "apiVersion": "v1",
               "groupVersion": api_version(group, version), "resources": resources})
    };
    let group_json = |name: &str| {
        let versions: Vec<&str> = RESOURCES
            .iter()
            .find(|r| r.group == name)
            .map(|r| r.versions.to_vec())
            .unwrap_or_default()
            .into_iter()
            .filter(|v| served(name, v))
            .collect();
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
            .collect();
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": vs,
               "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
    };
    match path {
        ["api"] => Some(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        ["api", "v1"] => Some(resource_list("", "v1")),
        ["apis"] => {
            let mut names: Vec<&str> = RESOURCES
                .iter()
                .map(|r| r.group)
                .filter(|g| !g.is_empty())
                .filter(|g| {
                    RESOURCES
                        .iter()
                        .any(|r| r.group == *g && r.versions.iter().any(|v| served(g, v)))
                })
                .collect();
            names.dedup();
            let groups: Vec<Value> = names.iter().map(|n| group_json(n)).collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", g]
            if RESOURCES
                .iter()
                .any(|r| r.group == *g && r.versions.iter().any(|v| served(g, v))) =>
        {
            Some(group_json(g))
        }
        ["apis", g, v] if served(g, v) => Some(resource_list(g, v)),
        _ => None,
    }
}

/// (type, version, namespace, name) addressed by a resource path.
type Target<'a> = (
    &'static ResourceType,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
);

fn parse_target<'a>(path: &[&'a str], hidden: &[String]) -> Option<Target<'a>> {
    let (group, version, rest) = match path {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (ns, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    let rt = find_type(group, version, plural)?;
    if hidden.contains(&api_version(group, version)) {
        return None;
    }
    Some((rt, version, ns, name))
}

async fn handle(
    State(state): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path_and_query = uri
        .path_and_query()
        .map_or(uri.path(), |p| p.as_str())
        .to_owned();
    lock(&state)
        .requests
        .push(format!("{method} {path_and_query}"));
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let hidden = lock(&state).hidden.clone();
    if method == Method::GET
        && let Some(d) = discovery(&segments, &hidden)
    {
        return json_response(200, &d);
    }
    let Some((rt, version, ns, name)) = parse_target(&segments, &hidden) else {
        return json_response(
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    let av = api_version(rt.group, version);
    let ty = (rt.group, rt.plural);
    let query = query_map(&uri);
    let parse_body = || {
        serde_json::from_slice::<Value>(&body).map_err(|e| {
            (
                400,
                status(400, "BadRequest", &format!("invalid JSON: {e}")),
            )
        })
    };
    let respond = |r: Result<Value, (u16, Value)>, ok: u16| match r {
        Ok(v) => json_response(ok, &with_type(v, &av, rt.kind)),
        Err((code, s)) => json_response(code, &s),
    };
    match (&method, name) {
        (&Method::GET, None)
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch(&state, rt, version, ns, &query)
        }
        (&Method::GET, None) => {
            let sel = parse_selector(query.get("labelSelector").map_or("", String::as_str));
            let inner = lock(&state);
            let items: Vec<Value> = inner
                .objects
                .get(&ty)
                .map(|m| {
                    m.values()
                        .filter(|o| ns.is_none_or(|n| namespace_of(o) == n))
                        .filter(|o| selector_matches(&sel, o))
                        .map(|o| with_type(o.clone(), &av, rt.kind))
                        .collect()
                })
                .unwrap_or_default();
            let list = json!({"apiVersion": av, "kind": format!("{}List", rt.kind),
                              "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items});
            json_response(200, &list)
        }
        (&Method::POST, None) => match parse_body() {
            Ok(obj) => respond(lock(&state).create(rt, ns, obj), 201),
            Err(e) => respond(Err(e), 400),
        },
        (&Method::GET, Some(name)) => {
            let inner = lock(&state);
            match inner
                .objects
                .get(&ty)
                .and_then(|m| m.get(&(ns.unwrap_or_default().to_owned(), name.to_owned())))
            {
                Some(o) => json_response(200, &with_type(o.clone(), &av, rt.kind)),
                None => json_response(
                    404,
                    &status(
                        404,
                        "NotFound",
                        &format!("{} \"{name}\" not found", rt.plural),
                    ),
                ),
            }
        }
        (&Method::PUT, Some(name)) => match parse_body() {
            Ok(obj) => respond(lock(&state).replace(rt, ns, name, obj), 200),
            Err(e) => respond(Err(e), 400),
        },
        (&Method::DELETE, Some(name)) => respond(lock(&state).delete(rt, ns, name), 200),
        _ => json_response(
            405,
            &status(405, "MethodNotAllowed", "method not supported by the fake"),
        ),
    }
}

fn watch(
    state: &Arc<Mutex<Inner>>,
    rt: &'static ResourceType,
    version: &str,
    ns: Option<&str>,
    query: &HashMap<String, String>,
) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let ty = (rt.group, rt.plural);
    let av = api_version(rt.group, version);
    let selector = parse_selector(query.get("labelSelector").map_or("", String::as_str));
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut inner = lock(state);
    if inner.watches_paused {
        return json_response(
            503,
            &status(503, "ServiceUnavailable", "watches are paused by the test"),
        );
    }
    if from != 0 && from < inner.compacted {
        // What a real API server does for a compacted resourceVersion: a
        // 200 response whose only event is an ERROR carrying 410 Gone.
        let s = status(
            410,
            "Expired",
            &format!("too old resource version: {from} ({})", inner.compacted),
        );
        let _ = tx.send(watch_line("ERROR", &s));
        drop(tx);
    } else {
        // Replay what happened after `from`, then stay registered for live
        // events (under the same lock, so nothing falls in between).
        let replay: Vec<Bytes> = inner
            .history
            .iter()
            .filter(|e| e.ty == ty && e.rv > from && from != 0)
            .filter(|e| ns.is_none_or(|n| namespace_of(&e.object) == n))
            .filter(|e| selector_matches(&selector, &e.object))
            .map(|e| watch_line(e.event_type, &with_type(e.object.clone(), &av, e.kind)))
            .collect();
        for line in replay {
            let _ = tx.send(line);
        }
        // With resourceVersion 0/unset a real server starts with ADDED for
        // every existing object.
        if from == 0
            && let Some(m) = inner.objects.get(&ty)
        {
            for o in m.values() {
                if ns.is_none_or(|n| namespace_of(o) == n) && selector_matches(&selector, o) {
                    let _ = tx.send(watch_line("ADDED", &with_type(o.clone(), &av, rt.kind)));
                }
            }
        }
        inner.next_watch += 1;
        let id = inner.next_watch;
        inner.watches.push(Watch {
            id,
            ty,
            version: version.to_owned(),
            namespace: ns.map(str::to_owned),
            selector,
            bookmarks,
            tx,
        });
        if let Some(t) = timeout {
            let state = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                lock(&state).watches.retain(|w| w.id != id);
            });
        }
    }
    drop(inner);
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let body = Body::from_stream(futures_util::StreamExt::map(
        stream,
        Ok::<_, std::io::Error>,
    ));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| json_response(500, &status(500, "InternalError", "response")))
}
