//! The control plane's state: the configuration now serving, how a change
//! is validated and swapped in, and the control plane's own metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::admin::types::Status;

/// The gateway's control plane, shared by the admin API, the reloader and
/// the identity manager.
#[derive(Debug)]
pub(crate) struct ControlPlane {
    generation: AtomicU64,
    listeners: Mutex<Vec<(String, String)>>,
    last_error: Mutex<Option<String>>,
}

impl ControlPlane {
    /// A control plane serving its first configuration.
    pub(crate) fn new() -> Self {
        ControlPlane {
            generation: AtomicU64::new(1),
            listeners: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
        }
    }

    /// Records the bound data-plane listeners for status output.
    pub(crate) fn set_listeners(&self, listeners: Vec<(String, String)>) {
        *lock(&self.listeners) = listeners;
    }

    /// The status the admin API reports.
    pub(crate) fn status(&self) -> Status {
        Status {
            generation: self.generation.load(Ordering::Acquire),
            listeners: lock(&self.listeners).clone(),
            identity: None,
            identity_expires: None,
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Prometheus text for the control plane's metrics.
    pub(crate) fn render_metrics(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP meshgate_config_generation Configuration generation now serving.\n");
        out.push_str("# TYPE meshgate_config_generation gauge\n");
        out.push_str(&format!(
            "meshgate_config_generation {}\n",
            self.generation.load(Ordering::Acquire)
        ));
        out
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it:
/// the values guarded here are plain snapshots that stay consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
