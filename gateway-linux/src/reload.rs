//! Live reload of the policy files: poll their modification times and sizes
//! every few hundred milliseconds and reload through the control plane when
//! anything changed. (SIGHUP forces a reload; see [`crate::serve`].)
//!
//! Polling instead of inotify: it needs no extra dependency, behaves the
//! same on every filesystem, and sees Kubernetes ConfigMap updates (an
//! atomic symlink swap) because metadata follows symlinks.

use std::sync::Arc;

use tokio::sync::watch;

use crate::state::ControlPlane;

/// Polls until `stop` turns true.
pub(crate) async fn watch_files(
    control: Arc<ControlPlane>,
    stop: watch::Receiver<bool>,
    interval: core::time::Duration,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {
                // The control plane logs and records a rejected reload; the
                // previous configuration keeps serving either way.
                let _ignored = control.reload_files(false).await;
            }
            () = crate::serve::stopped(stop.clone()) => return,
        }
    }
}
