//! Reporting invalid resources as Kubernetes Events.
//!
//! This module owns how meshgate tells a user, through `kubectl describe`,
//! that a resource was not applied: one core/v1 `Event` of type `Warning`,
//! reason `InvalidResource`, regarding the resource (`involvedObject` with
//! its uid and resourceVersion), created in the resource's namespace. The
//! same text goes to the log, so a failed Event creation (RBAC, API
//! server down) never hides the problem.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::policies::InvalidResource;

/// The Event reason for a resource meshgate refused.
pub const REASON_INVALID: &str = "InvalidResource";
/// The reporting component written into Events.
pub const COMPONENT: &str = "meshgate";
/// Kubernetes rejects Event messages over 1 KiB.
const MAX_MESSAGE: usize = 1024;

/// Creates Events for refused resources.
#[derive(Clone)]
pub struct EventReporter {
    client: Client,
    instance: String,
}

impl core::fmt::Debug for EventReporter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EventReporter")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl EventReporter {
    /// A reporter writing as `instance` (the Pod name).
    pub fn new(client: Client, instance: impl Into<String>) -> Self {
        EventReporter {
            client,
            instance: instance.into(),
        }
    }

    /// Logs the problem and creates a Warning Event regarding the resource.
    pub async fn invalid(&self, r: &InvalidResource) {
        tracing::warn!(
            resource = %r.key,
            resource_version = %r.resource_version,
            error = %r.message,
            "invalid resource ignored; the other resources keep applying"
        );
        let message = format!("meshgate ignores this resource: {}", r.message);
        let event = event_for(r, truncate(&message, MAX_MESSAGE), &self.instance);
        let ns = if r.key.namespace.is_empty() {
            "default"
        } else {
            &r.key.namespace
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(resource = %r.key, error = %e, "cannot create the Kubernetes Event");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn event_for(r: &InvalidResource, message: String, instance: &str) -> Event {
    let now = Time(Timestamp::now());
    Event {
        metadata: ObjectMeta {
            // The API server appends a random suffix: one Event per report.
            generate_name: Some(format!("{}.", r.key.name)),
            namespace: Some(r.key.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(r.api_version.clone()),
            kind: Some(r.key.kind.clone()),
            name: Some(r.key.name.clone()),
            namespace: Some(r.key.namespace.clone()),
            uid: r.uid.clone(),
            resource_version: Some(r.resource_version.clone()),
            ..ObjectReference::default()
        },
        reason: Some(REASON_INVALID.to_owned()),
        message: Some(message),
        type_: Some("Warning".to_owned()),
        action: Some("Validate".to_owned()),
        source: Some(EventSource {
            component: Some(COMPONENT.to_owned()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        let long = "é".repeat(600);
        let t = truncate(&long, 1024);
        assert!(t.len() <= 1024 && t.ends_with("..."));
    }
}
