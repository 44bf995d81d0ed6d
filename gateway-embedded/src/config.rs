//! The forwarding rules the gateway pushes: which local ports the node
//! listens on for legacy clients (and which mesh service each reaches),
//! and which legacy endpoints behind the node are published as mesh
//! services.
//!
//! A [`ConfigPush`] borrows its frame; [`NodeConfig`] is the owned copy the
//! node keeps between frames. Until the first push the configuration is
//! empty and the node forwards nothing (fail closed). A push replaces the
//! whole configuration (it is not a delta), and an older version than the
//! one applied is refused so a stale or replayed push cannot roll rules
//! back.

use core::fmt;

use heapless::{String, Vec};
use meshgate_core::wire::{
    ConfigPush, DeviceAddr, MAX_EXPOSED, MAX_HOST_LEN, MAX_LISTENERS, MeshTarget,
};

/// An owned mesh service name and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedTarget {
    /// DNS host name, validated by `core::wire`.
    pub host: String<MAX_HOST_LEN>,
    /// Non-zero port.
    pub port: u16,
}

impl OwnedTarget {
    fn from_wire(t: &MeshTarget<'_>) -> Result<Self, ConfigError> {
        Ok(OwnedTarget {
            host: String::try_from(t.host).map_err(|_| ConfigError::TooLarge)?,
            port: t.port,
        })
    }

    /// An owned copy, `None` if the host does not fit (it always does for
    /// a validated frame).
    pub(crate) fn try_from_wire(t: &MeshTarget<'_>) -> Option<Self> {
        Self::from_wire(t).ok()
    }

    /// The borrowed wire form, for `StreamOpen`.
    pub fn as_wire(&self) -> MeshTarget<'_> {
        MeshTarget {
            host: self.host.as_str(),
            port: self.port,
        }
    }

    fn matches(&self, t: &MeshTarget<'_>) -> bool {
        // Host names compare case-insensitively, as in DNS and core::wire.
        self.port == t.port && self.host.eq_ignore_ascii_case(t.host)
    }
}

/// A legacy-client port on the node and its mesh target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerRule {
    /// Local TCP port.
    pub listen_port: u16,
    /// Mesh service reached through the gateway.
    pub target: OwnedTarget,
}

/// A legacy endpoint published as a mesh service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExposedRule {
    /// Mesh service name and port.
    pub service: OwnedTarget,
    /// The device behind the node.
    pub device: DeviceAddr,
}

/// The applied configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// `None` until the first push.
    version: Option<u64>,
    listeners: Vec<ListenerRule, MAX_LISTENERS>,
    exposed: Vec<ExposedRule, MAX_EXPOSED>,
}

/// Why a push was not applied (the previous configuration stays).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfigError {
    /// The push breaks a protocol rule (see `core::wire::Invalid`).
    Invalid(meshgate_core::wire::Invalid),
    /// The push's version is older than the applied one.
    Stale {
        /// The applied version.
        applied: u64,
        /// The refused version.
        pushed: u64,
    },
    /// A field exceeds the node's storage (cannot happen for a valid push).
    TooLarge,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid(i) => write!(f, "invalid configuration: {i}"),
            ConfigError::Stale { applied, pushed } => {
                write!(
                    f,
                    "configuration version {pushed} is older than applied {applied}"
                )
            }
            ConfigError::TooLarge => f.write_str("configuration exceeds the node's capacity"),
        }
    }
}

/// What applying a push changed, so the caller can open or close listeners
/// and cut streams that are no longer allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The version now in effect (acknowledge it).
    pub version: u64,
    /// False when the same version was pushed again (nothing changed).
    pub changed: bool,
}

impl NodeConfig {
    /// An empty configuration: nothing is forwarded.
    pub const fn new() -> Self {
        NodeConfig {
            version: None,
            listeners: Vec::new(),
            exposed: Vec::new(),
        }
    }

    /// The applied version, `None` before the first push.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// Replaces the configuration with `push`, or leaves it unchanged and
    /// returns why not.
    pub fn apply(&mut self, push: &ConfigPush<'_>) -> Result<Applied, ConfigError> {
        push.validate().map_err(ConfigError::Invalid)?;
        if let Some(applied) = self.version {
            if push.version < applied {
                return Err(ConfigError::Stale {
                    applied,
                    pushed: push.version,
                });
            }
            if push.version == applied {
                // A reconnect re-sends the current configuration; it must
                // be identical, so there is nothing to redo.
                return Ok(Applied {
                    version: applied,
                    changed: false,
                });
            }
        }
        // Build the new tables completely before replacing the old ones, so
        // a failure leaves the previous configuration in force.
        let mut listeners = Vec::new();
        for l in push.listeners.iter() {
            let rule = ListenerRule {
                listen_port: l.listen_port,
                target: OwnedTarget::from_wire(&l.target)?,
            };
            listeners.push(rule).map_err(|_| ConfigError::TooLarge)?;
        }
        let mut exposed = Vec::new();
        for e in push.exposed.iter() {
            let rule = ExposedRule {
                service: OwnedTarget::from_wire(&e.service)?,
                device: e.device,
            };
            exposed.push(rule).map_err(|_| ConfigError::TooLarge)?;
        }
        self.version = Some(push.version);
        self.listeners = listeners;
        self.exposed = exposed;
        Ok(Applied {
            version: push.version,
            changed: true,
        })
    }

    /// Forgets every rule (revocation): nothing is forwarded any more.
    pub fn clear(&mut self) {
        self.listeners.clear();
        self.exposed.clear();
    }

    /// The local ports to listen on.
    pub fn listeners(&self) -> &[ListenerRule] {
        &self.listeners
    }

    /// The mesh target for a legacy client on `listen_port`, if allowed.
    pub fn target_for_port(&self, listen_port: u16) -> Option<&OwnedTarget> {
        self.listeners
            .iter()
            .find(|l| l.listen_port == listen_port)
            .map(|l| &l.target)
    }

    /// The device behind an exposed mesh service, if allowed.
    pub fn device_for(&self, service: &MeshTarget<'_>) -> Option<DeviceAddr> {
        self.exposed
            .iter()
            .find(|e| e.service.matches(service))
            .map(|e| e.device)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use meshgate_core::wire::{BoundedList, DeviceIp, Exposed, Listener};

    pub(crate) fn push(version: u64) -> ConfigPush<'static> {
        ConfigPush {
            version,
            listeners: BoundedList::from_slice(&[Listener {
                listen_port: 8080,
                target: MeshTarget {
                    host: "details.bookinfo.svc.cluster.local",
                    port: 9080,
                },
            }])
            .unwrap(),
            exposed: BoundedList::from_slice(&[Exposed {
                service: MeshTarget {
                    host: "plc-1.factory",
                    port: 502,
                },
                device: DeviceAddr {
                    ip: DeviceIp::V4([192, 168, 7, 20]),
                    port: 502,
                },
            }])
            .unwrap(),
        }
    }

    #[test]
    fn empty_config_forwards_nothing() {
        let cfg = NodeConfig::new();
        assert_eq!(cfg.version(), None);
        assert!(cfg.target_for_port(8080).is_none());
        assert!(
            cfg.device_for(&MeshTarget {
                host: "plc-1.factory",
                port: 502
            })
            .is_none()
        );
    }

    #[test]
    fn push_is_applied_and_looked_up() {
        let mut cfg = NodeConfig::new();
        let applied = cfg.apply(&push(3)).unwrap();
        assert_eq!(
            applied,
            Applied {
                version: 3,
                changed: true
            }
        );
        let t = cfg.target_for_port(8080).unwrap();
        assert_eq!(
            t.as_wire(),
            MeshTarget {
                host: "details.bookinfo.svc.cluster.local",
                port: 9080
            }
        );
        assert!(cfg.target_for_port(8081).is_none());
        let dev = cfg
            .device_for(&MeshTarget {
                host: "PLC-1.Factory",
                port: 502,
            })
            .unwrap();
        assert_eq!(dev.ip, DeviceIp::V4([192, 168, 7, 20]));
        assert!(
            cfg.device_for(&MeshTarget {
                host: "plc-1.factory",
                port: 503
            })
            .is_none()
        );
    }

    #[test]
    fn stale_push_is_refused_and_same_version_is_idempotent() {
        let mut cfg = NodeConfig::new();
        cfg.apply(&push(5)).unwrap();
        let mut older = push(4);
        older.listeners = BoundedList::new();
        assert_eq!(
            cfg.apply(&older),
            Err(ConfigError::Stale {
                applied: 5,
                pushed: 4
            })
        );
        assert!(cfg.target_for_port(8080).is_some(), "old rules stay");
        assert_eq!(
            cfg.apply(&push(5)).unwrap(),
            Applied {
                version: 5,
                changed: false
            }
        );
    }

    #[test]
    fn invalid_push_leaves_previous_rules() {
        let mut cfg = NodeConfig::new();
        cfg.apply(&push(1)).unwrap();
        let mut bad = push(2);
        bad.listeners = BoundedList::from_slice(&[
            Listener {
                listen_port: 80,
                target: MeshTarget { host: "a", port: 1 },
            },
            Listener {
                listen_port: 80,
                target: MeshTarget { host: "b", port: 1 },
            },
        ])
        .unwrap();
        assert!(matches!(cfg.apply(&bad), Err(ConfigError::Invalid(_))));
        assert_eq!(cfg.version(), Some(1));
        assert!(cfg.target_for_port(8080).is_some());
    }

    #[test]
    fn clear_stops_forwarding() {
        let mut cfg = NodeConfig::new();
        cfg.apply(&push(1)).unwrap();
        cfg.clear();
        assert!(cfg.target_for_port(8080).is_none());
        assert!(cfg.listeners().is_empty());
    }
}
