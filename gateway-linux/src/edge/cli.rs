//! `meshgate edge ...`: manage edge nodes through a running gateway's
//! admin API.
//!
//! ```text
//! meshgate edge token create --namespace NS --name NODE [--ttl 24h] [--listen 8080=HOST:PORT]...
//! meshgate edge list
//! meshgate edge status NODE
//! meshgate edge listeners NODE [--listen 8080=HOST:PORT]...
//! meshgate edge revoke NODE [--reason TEXT]
//! ```

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::Method;

use super::api::{CreateRequest, CreateResponse, ListenersRequest, NodeList, RevokeRequest};
use super::registry::ForwardRule;
use crate::cli::{AdminArgs, parse_duration};
use crate::client::{AdminClient, resolve_token};

/// `meshgate edge`.
#[derive(Debug, Args)]
pub(crate) struct EdgeArgs {
    #[command(subcommand)]
    pub(crate) command: EdgeCommand,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// The edge subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum EdgeCommand {
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List edge nodes with their state and tunnel status.
    List,
    /// Show one edge node.
    Status {
        /// The node's name.
        name: String,
    },
    /// Replace a node's forwarding rules (pushed at once if it is connected).
    Listeners {
        /// The node's name.
        name: String,
        /// `LOCAL_PORT=HOST:PORT`: legacy clients connecting to LOCAL_PORT on
        /// the node reach mesh service HOST:PORT. Repeatable; none clears.
        #[arg(long = "listen", value_name = "PORT=HOST:PORT", value_parser = parse_rule)]
        listen: Vec<ForwardRule>,
    },
    /// Revoke a node: its certificate, its tunnel (closed at once) and its
    /// name (reconnects and re-enrollment are refused).
    Revoke {
        /// The node's name.
        name: String,
        /// Recorded in the audit log and shown in the node's status.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `meshgate edge token`.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a node and its one-time enrollment token (printed once).
    Create {
        /// Namespace of the node's identity.
        #[arg(long)]
        namespace: String,
        /// The node's name (its service account): the node becomes
        /// spiffe://TD/ns/NAMESPACE/sa/NAME.
        #[arg(long)]
        name: String,
        /// How long the token stays valid (1s ..= 7d; default 24h).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<core::time::Duration>,
        /// `LOCAL_PORT=HOST:PORT` forwarding rule (repeatable).
        #[arg(long = "listen", value_name = "PORT=HOST:PORT", value_parser = parse_rule)]
        listen: Vec<ForwardRule>,
    },
}

/// Parses `8080=details.bookinfo.svc.cluster.local:9080`.
fn parse_rule(s: &str) -> Result<ForwardRule, String> {
    let bad = || format!("expected LOCAL_PORT=HOST:PORT, got {s:?}");
    let (local, target) = s.split_once('=').ok_or_else(bad)?;
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let listen_port: u16 = local.trim().parse().map_err(|_| bad())?;
    let port: u16 = port.trim().parse().map_err(|_| bad())?;
    Ok(ForwardRule {
        listen_port,
        host: host.trim().to_owned(),
        port,
    })
}

fn connect(args: &AdminArgs) -> anyhow::Result<AdminClient> {
    let token = resolve_token(args.token.clone(), &args.data_dir)?;
    Ok(AdminClient::new(&args.admin, Some(token))?)
}

fn json(v: &impl serde::Serialize) -> anyhow::Result<Bytes> {
    Ok(Bytes::from(serde_json::to_vec(v)?))
}

/// Runs `meshgate edge ...`.
pub(crate) async fn run(args: EdgeArgs) -> anyhow::Result<()> {
    let client = connect(&args.admin)?;
    match args.command {
        EdgeCommand::Token(TokenCommand::Create {
            namespace,
            name,
            ttl,
            listen,
        }) => {
            let req = CreateRequest {
                namespace,
                name,
                ttl_seconds: ttl.map(|d| d.as_secs()),
                listeners: (!listen.is_empty()).then_some(listen),
            };
            let resp: CreateResponse<serde_json::Value> = client
                .call_json(
                    Method::POST,
                    "/api/v1/edge/nodes",
                    "application/json",
                    json(&req)?,
                )
                .await?;
            let node: NodeSummary = serde_json::from_value(resp.node)?;
            println!("edge node {} ({})", node.name, node.spiffe_id);
            println!("tunnel:  {}", resp.tunnel_address);
            if let Some(exp) = &node.token_expires_at {
                println!("expires: {exp}");
            }
            println!("one-time enrollment token (shown only now):");
            println!("  {}", resp.token);
        }
        EdgeCommand::List => {
            let list: NodeList<NodeSummary> = client.get_json("/api/v1/edge/nodes").await?;
            println!(
                "{:<20} {:<16} {:<9} {:<10} {:<22} IDENTITY",
                "NAME", "NAMESPACE", "STATE", "TUNNEL", "CERT EXPIRES"
            );
            for n in &list.nodes {
                println!(
                    "{:<20} {:<16} {:<9} {:<10} {:<22} {}",
                    n.name,
                    n.namespace,
                    n.state,
                    if n.connected { "connected" } else { "-" },
                    n.cert_not_after.as_deref().unwrap_or("-"),
                    n.spiffe_id
                );
            }
            println!("(tunnel listener {})", list.tunnel_address);
        }
        EdgeCommand::Status { name } => {
            let v: serde_json::Value = client
                .get_json(&format!("/api/v1/edge/nodes/{}", path_segment(&name)?))
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        EdgeCommand::Listeners { name, listen } => {
            let v: serde_json::Value = client
                .call_json(
                    Method::PUT,
                    &format!("/api/v1/edge/nodes/{}/listeners", path_segment(&name)?),
                    "application/json",
                    json(&ListenersRequest { listeners: listen })?,
                )
                .await?;
            let n: NodeSummary = serde_json::from_value(v)?;
            println!("edge node {}: {} listener(s)", n.name, n.listeners.len());
        }
        EdgeCommand::Revoke { name, reason } => {
            let v: serde_json::Value = client
                .call_json(
                    Method::POST,
                    &format!("/api/v1/edge/nodes/{}/revoke", path_segment(&name)?),
                    "application/json",
                    json(&RevokeRequest { reason })?,
                )
                .await?;
            let n: NodeSummary = serde_json::from_value(v)?;
            println!("edge node {} revoked ({})", n.name, n.spiffe_id);
        }
    }
    Ok(())
}

/// Node names are DNS labels; refuse anything else before it reaches a URL.
fn path_segment(name: &str) -> anyhow::Result<&str> {
    if super::registry::is_label(name) {
        Ok(name)
    } else {
        anyhow::bail!("{name:?} is not a valid node name")
    }
}

/// The fields of a node (`super::NodeView`) the CLI prints.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeSummary {
    name: String,
    namespace: String,
    spiffe_id: String,
    state: String,
    token_expires_at: Option<String>,
    cert_not_after: Option<String>,
    connected: bool,
    #[serde(default)]
    listeners: Vec<ForwardRule>,
}
