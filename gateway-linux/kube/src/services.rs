//! Kubernetes Services and EndpointSlices, turned into the services the
//! gateway routes to.
//!
//! This module owns the mapping from the Kubernetes service model to
//! meshgate-config's [`Service`] (the ServiceEntry/WorkloadEntry subset the
//! data plane routes with):
//!
//! - only Services carrying the label selected by the controller (by
//!   default `meshgate.io/expose=true`) are routed: an ingress gateway
//!   should not publish every Service of the cluster;
//! - host `<name>.<namespace>.svc.<cluster domain>`;
//! - ports: the Service's TCP ports; protocol from `appProtocol`, else from
//!   the port name the way Istio selects it (`http-web` → HTTP), else TCP;
//!   a named `targetPort` is resolved through the EndpointSlices' ports;
//! - workloads: every ready address of the EndpointSlices labelled
//!   `kubernetes.io/service-name=<name>`, with the Service's
//!   `spec.selector` as their labels (every Pod behind the Service carries
//!   at least those labels, which is what policy selectors are matched
//!   against — selectors using other Pod labels do not match here);
//! - annotations on the Service choose what Kubernetes does not say:
//!   `meshgate.io/service-account` (default `default`) and
//!   `meshgate.io/upstream: mesh|plaintext` (default `plaintext`; `mesh`
//!   means the gateway originates mTLS and requires the upstream to present
//!   `spiffe://<trust domain>/ns/<ns>/sa/<service account>`).
//!
//! A Service that cannot be mapped (e.g. a bad annotation) is reported like
//! an invalid policy and left out; the others keep routing.

use core::net::IpAddr;
use std::collections::BTreeMap;

use kube::api::DynamicObject;
use meshgate_config::settings::{Address, Protocol, Service, ServicePort, UpstreamTls, Workload};
use meshgate_core::spiffe::OwnedSpiffeId;
use serde_json::Value;

use crate::policies::{InvalidResource, ResourceKey, key_of};

/// Label of the Services the gateway routes to (`=true`).
pub const EXPOSE_LABEL: &str = "meshgate.io/expose";
/// Annotation naming the workloads' service account.
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "meshgate.io/service-account";
/// Annotation choosing the upstream transport: `mesh` or `plaintext`.
pub const UPSTREAM_ANNOTATION: &str = "meshgate.io/upstream";
/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Builds the routed services from the watched Services and EndpointSlices.
/// Returns the services (sorted by namespace and name) and the Services
/// that were left out.
pub fn build_services<'a>(
    services: impl IntoIterator<Item = &'a DynamicObject>,
    slices: impl IntoIterator<Item = &'a DynamicObject> + Clone,
    trust_domain: &str,
    cluster_domain: &str,
) -> (Vec<Service>, Vec<InvalidResource>) {
    let mut by_service: BTreeMap<(String, String), Vec<&DynamicObject>> = BTreeMap::new();
    for s in slices {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        if let Some(name) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            by_service.entry((ns, name.clone())).or_default().push(s);
        }
    }
    let mut out = Vec::new();
    let mut invalid = Vec::new();
    for svc in services {
        let key = key_of("Service", svc);
        let slices = by_service
            .get(&(key.namespace.clone(), key.name.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        match convert_service(svc, slices, trust_domain, cluster_domain) {
            Ok(s) => out.push(s),
            Err(message) => invalid.push(InvalidResource {
                key,
                api_version: "v1".to_owned(),
                uid: svc.metadata.uid.clone(),
                resource_version: svc.metadata.resource_version.clone().unwrap_or_default(),
                message,
            }),
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    (out, invalid)
}

fn str_field<'v>(v: &'v Value, name: &str) -> Option<&'v str> {
    v.get(name).and_then(Value::as_str)
}

fn protocol_of(port: &Value) -> Protocol {
    let by_name = |s: &str| match s
        .split('-')
        .next()
        .unwrap_or(s)
        .to_ascii_lowercase()
        .as_str()
    {
        "http" | "http1" => Some(Protocol::Http),
        "http2" | "h2c" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        "https" => Some(Protocol::Https),
        "tls" => Some(Protocol::Tls),
        "tcp" => Some(Protocol::Tcp),
        _ => None,
    };
    // appProtocol may be a plain name or a prefixed one
    // (`kubernetes.io/h2c`); only the last segment matters here.
    str_field(port, "appProtocol")
        .and_then(|a| by_name(a.rsplit('/').next().unwrap_or(a)))
        .or_else(|| str_field(port, "name").and_then(by_name))
        .unwrap_or(Protocol::Tcp)
}

fn port_number(v: Option<&Value>) -> Option<u16> {
    v.and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n != 0)
}

fn convert_service(
    svc: &DynamicObject,
    slices: &[&DynamicObject],
    trust_domain: &str,
    cluster_domain: &str,
) -> Result<Service, String> {
    let key: ResourceKey = key_of("Service", svc);
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    let service_account = annotations
        .get(SERVICE_ACCOUNT_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| "default".to_owned());
    let upstream = match annotations.get(UPSTREAM_ANNOTATION).map(String::as_str) {
        None | Some("plaintext") => UpstreamTls::Plaintext,
        Some("mesh") => {
            let id = format!(
                "spiffe://{trust_domain}/ns/{}/sa/{service_account}",
                key.namespace
            );
            let id = OwnedSpiffeId::parse(&id).map_err(|e| {
                format!("metadata.annotations[{SERVICE_ACCOUNT_ANNOTATION}]: {id}: {e}")
            })?;
            UpstreamTls::Mesh {
                identities: vec![id],
            }
        }
        Some(other) => {
            return Err(format!(
                "metadata.annotations[{UPSTREAM_ANNOTATION}]: {other:?} is not \"mesh\" or \"plaintext\""
            ));
        }
    };
    let spec = svc.data.get("spec").cloned().unwrap_or(Value::Null);
    let labels: Vec<(String, String)> = spec
        .get("selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();

    // Workload port per service port name, from the slices.
    let mut slice_ports: BTreeMap<String, u16> = BTreeMap::new();
    for s in slices {
        for p in s
            .data
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = port_number(p.get("port")) {
                let name = str_field(p, "name").unwrap_or_default().to_owned();
                slice_ports.entry(name).or_insert(n);
            }
        }
    }

    let mut ports = Vec::new();
    let raw_ports = spec.get("ports").and_then(Value::as_array);
    for (i, p) in raw_ports.into_iter().flatten().enumerate() {
        if str_field(p, "protocol").is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let number = port_number(p.get("port"))
            .ok_or_else(|| format!("spec.ports[{i}].port: not a port number"))?;
        let name = str_field(p, "name").unwrap_or_default().to_owned();
        let target_port = match p.get("targetPort") {
            Some(Value::String(_)) => slice_ports.get(&name).copied().unwrap_or(number),
            other => port_number(other).unwrap_or(number),
        };
        ports.push(ServicePort {
            number,
            name,
            protocol: protocol_of(p),
            target_port,
        });
    }

    let mut workloads = Vec::new();
    for s in slices {
        let address_type = s.data.get("addressType").and_then(Value::as_str);
        if !matches!(address_type, Some("IPv4" | "IPv6")) {
            continue;
        }
        let workload_ports: Vec<(String, u16)> = s
            .data
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let name = str_field(p, "name").unwrap_or_default().to_owned();
                port_number(p.get("port")).map(|n| (name, n))
            })
            .collect();
        let slice_name = s.metadata.name.clone().unwrap_or_default();
        let endpoints = s.data.get("endpoints").and_then(Value::as_array);
        for (i, ep) in endpoints.into_iter().flatten().enumerate() {
            // `ready` unset means ready (the API's documented default).
            let ready = ep
                .get("conditions")
                .and_then(|c| c.get("ready"))
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            let name = ep
                .get("targetRef")
                .and_then(|t| str_field(t, "name"))
                .map_or_else(|| format!("{slice_name}-{i}"), str::to_owned);
            for a in ep
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(ip) = a.as_str().and_then(|a| a.parse::<IpAddr>().ok()) else {
                    continue;
                };
                workloads.push(Workload {
                    name: name.clone(),
                    namespace: key.namespace.clone(),
                    labels: labels.clone(),
                    service_account: service_account.clone(),
                    address: Address::Ip(ip),
                    ports: workload_ports.clone(),
                    upstream: upstream.clone(),
                });
            }
        }
    }
    workloads.sort_by(|a, b| {
        (&a.name, &a.address.to_string_key()).cmp(&(&b.name, &b.address.to_string_key()))
    });

    Ok(Service {
        hosts: vec![format!(
            "{}.{}.svc.{cluster_domain}",
            key.name, key.namespace
        )],
        name: key.name,
        namespace: key.namespace,
        ports,
        workloads,
        mesh_external: false,
    })
}

/// Sorting helper: addresses have no `Ord`.
trait AddressKey {
    fn to_string_key(&self) -> String;
}

impl AddressKey for Address {
    fn to_string_key(&self) -> String {
        match self {
            Address::Ip(ip) => ip.to_string(),
            Address::Dns(name) => name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: Value) -> DynamicObject {
        serde_json::from_value(v).expect("object")
    }

    #[test]
    fn service_with_slices_becomes_a_routed_service() {
        let svc = object(serde_json::json!({
            "metadata": {"name": "details", "namespace": "bookinfo", "resourceVersion": "3",
                "annotations": {"meshgate.io/upstream": "mesh", "meshgate.io/service-account": "bookinfo-details"}},
            "spec": {"selector": {"app": "details"},
                "ports": [{"name": "http", "port": 9080, "targetPort": "web"},
                          {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }));
        let slice = object(serde_json::json!({
            "metadata": {"name": "details-abc", "namespace": "bookinfo",
                "labels": {"kubernetes.io/service-name": "details"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.7"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "details-1"}},
                {"addresses": ["10.0.0.8"], "conditions": {"ready": false}}
            ]
        }));
        let (services, invalid) =
            build_services([&svc], [&slice], "cluster.local", "cluster.local");
        assert!(invalid.is_empty(), "{invalid:?}");
        let s = &services[0];
        assert_eq!(s.hosts, vec!["details.bookinfo.svc.cluster.local"]);
        assert_eq!(s.ports.len(), 1, "UDP port skipped");
        assert_eq!(s.ports[0].protocol, Protocol::Http);
        assert_eq!(s.ports[0].target_port, 8080, "named targetPort resolved");
        assert_eq!(s.workloads.len(), 1, "not-ready endpoint skipped");
        let w = &s.workloads[0];
        assert_eq!(w.name, "details-1");
        assert_eq!(w.labels, vec![("app".to_owned(), "details".to_owned())]);
        assert_eq!(w.service_account, "bookinfo-details");
        match &w.upstream {
            UpstreamTls::Mesh { identities } => assert_eq!(
                identities[0].to_string(),
                "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-details"
            ),
            UpstreamTls::Plaintext => panic!("expected mesh upstream"),
        }
    }

    #[test]
    fn bad_upstream_annotation_excludes_only_that_service() {
        let bad = object(serde_json::json!({
            "metadata": {"name": "a", "namespace": "x", "resourceVersion": "5",
                "annotations": {"meshgate.io/upstream": "tls"}},
            "spec": {"ports": [{"port": 80}]}
        }));
        let good = object(serde_json::json!({
            "metadata": {"name": "b", "namespace": "x"},
            "spec": {"ports": [{"port": 80}]}
        }));
        let (services, invalid) =
            build_services([&bad, &good], [], "cluster.local", "cluster.local");
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].name, "b");
        assert_eq!(invalid.len(), 1);
        assert_eq!(invalid[0].resource_version, "5");
        assert!(invalid[0].message.contains("meshgate.io/upstream"));
    }
}
