//! The client commands: `apply`, `delete`, `get`, `check`, `cert issue`,
//! `cert revoke`, `ca show`, `ca rotate-root`. Each one is a call to a running gateway's

use std::io::{Read as _, Write as _};
use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;
use http::Method;

use crate::admin::types::{
    CaView, ChangeKind, ChangeResult, IssueRequest, IssueResponse, PolicyList, RotateRootRequest,
    ServiceList, ServiceView,
};
use crate::cli::{
    AdminArgs, CaCommand, CertCommand, CertIssueArgs, CheckArgs, Command, GetArgs, GetKind,
    OutputFormat, ValidateArgs,
};
use crate::client::{AdminClient, resolve_token};

/// Runs a client command (anything but `serve`).
pub(crate) async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(_) => anyhow::bail!("`serve` is not a client command"),
        Command::Demo(_) => anyhow::bail!("`demo` is not a client command"),
        Command::Edge(a) => crate::edge::cli::run(a).await,
        Command::Apply(a) => apply(&a.admin, &a.file, false).await,
        Command::Delete(a) => apply(&a.admin, &a.file, true).await,
        Command::Get(a) => get(a).await,
        Command::Validate(a) => validate(&a),
        Command::Check(a) => check(a).await,
        Command::Cert(CertCommand::Issue(a)) => cert_issue(a).await,
        Command::Cert(CertCommand::Revoke(a)) => {
            cert_revoke(
                &a.admin,
                a.spiffe_id.as_deref(),
                a.serial.as_deref(),
                &a.reason,
            )
            .await
        }
        Command::Ca(CaCommand::Show(a)) => {
            let view: CaView = connect(&a.admin)?.get_json("/api/v1/ca").await?;
            print_ca(&view, a.json)
        }
        Command::Ca(CaCommand::RotateRoot(a)) => {
            let body = serde_json::to_vec(&RotateRootRequest {
                force: a.force,
                propagation_secs: a.propagation.map(|d| d.as_secs()),
            })?;
            let view: CaView = connect(&a.admin)?
                .call_json(
                    Method::POST,
                    "/api/v1/ca/rotate-root",
                    "application/json",
                    Bytes::from(body),
                )
                .await?;
            println!(
                "{}",
                match (&view.rollover, a.force) {
                    (_, true) => "root roll-over finished (forced):",
                    (Some(_), false) => "root roll-over started:",
                    (None, false) => "root roll-over finished:",
                }
            );
            print_ca(&view, false)
        }
    }
}

fn connect(args: &AdminArgs) -> anyhow::Result<AdminClient> {
    let token = resolve_token(args.token.clone(), &args.data_dir)?;
    Ok(AdminClient::new(&args.admin, Some(token))?)
}

/// Reads FILE or standard input (`-`).
fn read_input(file: &Path) -> anyhow::Result<(String, String)> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        Ok(("-".to_owned(), text))
    } else {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        Ok((file.display().to_string(), text))
    }
}

async fn apply(args: &AdminArgs, file: &Path, delete: bool) -> anyhow::Result<()> {
    let (origin, text) = read_input(file)?;
    let client = connect(args)?;
    let path = if delete {
        "/api/v1/policies/delete"
    } else {
        "/api/v1/policies"
    };
    let path = format!("{path}?source={}", encode_query(&origin));
    let result: ChangeResult = client
        .call_json(Method::POST, &path, "application/yaml", Bytes::from(text))
        .await?;
    for c in &result.changes {
        let what = match c.change {
            ChangeKind::Created => "created",
            ChangeKind::Configured => "configured",
            ChangeKind::Unchanged => "unchanged",
            ChangeKind::Deleted => "deleted",
        };
        println!(
            "{}/{} {what} (namespace {})",
            c.resource.kind.to_ascii_lowercase(),
            c.resource.name,
            c.resource.namespace
        );
    }
    Ok(())
}

async fn get(a: GetArgs) -> anyhow::Result<()> {
    let client = connect(&a.admin)?;
    let ns_query = a
        .namespace
        .as_deref()
        .map(|ns| format!("namespace={}", encode_query(ns)));
    let mut out = std::io::stdout().lock();
    match a.kind {
        GetKind::Services => {
            let mut path = "/api/v1/services".to_owned();
            if let Some(q) = &ns_query {
                path = format!("{path}?{q}");
            }
            let list: ServiceList = client.get_json(&path).await?;
            match a.output {
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?,
                OutputFormat::Yaml => {
                    anyhow::bail!("services are listed as a table or JSON (-o json)")
                }
                OutputFormat::Table => {
                    writeln!(
                        out,
                        "{:<48} {:<16} {:<8} {:<10}",
                        "SERVICE", "NAMESPACE", "PORT", "MODE"
                    )?;
                    for s in &list.items {
                        for p in &s.ports {
                            writeln!(
                                out,
                                "{:<48} {:<16} {:<8} {:<10}",
                                s.host,
                                s.namespace,
                                format!("{}/{}", p.port, p.protocol),
                                p.mode
                            )?;
                        }
                    }
                }
            }
        }
        GetKind::Peerauthentication | GetKind::Authorizationpolicy => {
            let kind = if a.kind == GetKind::Peerauthentication {
                "PeerAuthentication"
            } else {
                "AuthorizationPolicy"
            };
            let mut path = format!("/api/v1/policies?kind={kind}");
            if let Some(q) = &ns_query {
                path = format!("{path}&{q}");
            }
            let list: PolicyList = client.get_json(&path).await?;
            match a.output {
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?,
                OutputFormat::Yaml => {
                    for (i, p) in list.items.iter().enumerate() {
                        if i > 0 {
                            writeln!(out, "---")?;
                        }
                        write!(out, "{}", p.yaml)?;
                    }
                }
                OutputFormat::Table => {
                    writeln!(
                        out,
                        "{:<16} {:<28} {:<28} {:<26} ORIGIN",
                        "NAMESPACE", "NAME", "SUMMARY", "CREATED"
                    )?;
                    for p in &list.items {
                        writeln!(
                            out,
                            "{:<16} {:<28} {:<28} {:<26} {}",
                            p.resource.namespace, p.resource.name, p.summary, p.created, p.origin
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn check(a: CheckArgs) -> anyhow::Result<()> {
    let client = connect(&a.admin)?;
    let mut path = format!("/api/v1/services/{}", encode_path(&a.service));
    if let Some(port) = a.port {
        path = format!("{path}?port={port}");
    }
    let view: ServiceView = client.get_json(&path).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    print!("{}", describe(&view));
    Ok(())
}

/// `meshgate validate`: the same parsers and validation `serve` uses.
fn validate(a: &ValidateArgs) -> anyhow::Result<()> {
    if a.config.is_none() && a.files.is_empty() {
        anyhow::bail!("nothing to validate: give --config FILE and/or -f POLICY.yaml");
    }
    let now = crate::state::now_secs();
    let report =
        |what: String, result: Result<usize, meshgate_config::error::ConfigErrors>| match result {
            Ok(n) => {
                println!("{what}: ok ({n} resource(s))");
                0
            }
            Err(e) => {
                eprintln!("{e}");
                e.len()
            }
        };
    let mut problems = 0usize;
    if let Some(path) = &a.config {
        let result = meshgate_config::settings::Settings::load(path).and_then(|s| {
            let policies = meshgate_config::policy::load_policies(&s.policy_paths, now)?;
            Ok(s.services.len()
                + policies.peer_authentications.len()
                + policies.authorization_policies.len())
        });
        problems += report(path.display().to_string(), result);
    }
    for f in &a.files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f) {
            Ok(text) => {
                let result =
                    meshgate_config::policy::parse_policies(&name, &text, now).map(|p| p.len());
                problems += report(name, result);
            }
            Err(e) => {
                problems += 1;
                eprintln!("{name}: {e}");
            }
        }
    }
    if problems > 0 {
        anyhow::bail!("{problems} problem(s) found");
    }
    Ok(())
}

/// `istioctl x describe`-style text for one service.
pub(crate) fn describe(view: &ServiceView) -> String {
    use core::fmt::Write as _;
    let mut s = String::new();
    let labels = view
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let _ = writeln!(s, "Service:   {}", view.host);
    let _ = writeln!(s, "Namespace: {}", view.namespace);
    let _ = writeln!(
        s,
        "Workload:  {}",
        if labels.is_empty() { "-" } else { &labels }
    );
    if let Some(sa) = &view.service_account {
        let _ = writeln!(s, "Service account: {sa}");
    }
    for p in &view.ports {
        let name = p
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "\nPort {}/{}{name} -> workload port {}: effective mTLS mode {}",
            p.port, p.protocol, p.target_port, p.mode
        );
        if p.deciding.is_empty() {
            let _ = writeln!(
                s,
                "  no PeerAuthentication applies: the default is PERMISSIVE"
            );
        }
        for d in &p.deciding {
            let _ = writeln!(
                s,
                "  {:<10} {}/{} {}",
                d.scope, d.resource.namespace, d.resource.name, d.mode
            );
        }
    }
    if view.authorization.is_empty() {
        let _ = writeln!(
            s,
            "\nAuthorizationPolicies: none (all authenticated requests allowed)"
        );
    } else {
        let _ = writeln!(s, "\nAuthorizationPolicies:");
        for r in &view.authorization {
            let _ = writeln!(s, "  {}/{}", r.namespace, r.name);
        }
    }
    s
}

async fn cert_issue(a: CertIssueArgs) -> anyhow::Result<()> {
    // The key is made here, on the host that will use it, and never sent
    // anywhere: the gateway only sees the CSR.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating a P-256 key")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .context("building the certificate request")?;
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(a.spiffe_id.clone())
            .with_context(|| format!("{:?} is not a valid URI", a.spiffe_id))?,
    )];
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .context("signing the certificate request")?;

    let req = IssueRequest {
        spiffe_id: a.spiffe_id.clone(),
        csr_pem,
        ttl_secs: a.ttl.as_secs(),
    };
    let issued: IssueResponse = connect(&a.admin)?
        .call_json(
            Method::POST,
            "/api/v1/certificates",
            "application/json",
            Bytes::from(serde_json::to_vec(&req)?),
        )
        .await?;

    crate::fsutil::ensure_private_dir(&a.out)
        .with_context(|| format!("creating {}", a.out.display()))?;
    let write = |name: &str, data: &str, mode: u32| {
        let p = a.out.join(name);
        crate::fsutil::write_atomic(&p, data.as_bytes(), mode)
            .with_context(|| format!("writing {}", p.display()))
    };
    write("key.pem", &key.serialize_pem(), 0o600)?;
    write("cert.pem", &issued.cert_pem, 0o644)?;
    write("chain.pem", &issued.chain_pem, 0o644)?;
    write("ca.pem", &issued.roots_pem, 0o644)?;
    println!(
        "issued {} (serial {}, expires {})",
        a.spiffe_id, issued.serial, issued.not_after
    );
    println!(
        "wrote {}/{{key.pem,cert.pem,chain.pem,ca.pem}}",
        a.out.display()
    );
    println!(
        "use: curl --cert {0}/chain.pem --key {0}/key.pem --cacert {0}/ca.pem https://...",
        a.out.display()
    );
    Ok(())
}

/// `meshgate cert revoke (--spiffe-id ID | --serial HEX) [--reason TEXT]`:
/// revokes in the gateway's CA; the gateway refuses new handshakes with the
/// certificate(s) at once and closes their open connections.
pub(crate) async fn cert_revoke(
    admin: &AdminArgs,
    spiffe_id: Option<&str>,
    serial: Option<&str>,
    reason: &str,
) -> anyhow::Result<()> {
    use crate::admin::revoke_api::{RevokeRequest, RevokeResponse};
    if spiffe_id.is_some() == serial.is_some() {
        anyhow::bail!("give exactly one of --spiffe-id and --serial");
    }
    let req = RevokeRequest {
        spiffe_id: spiffe_id.map(str::to_owned),
        serial: serial.map(str::to_owned),
        reason: reason.to_owned(),
    };
    let resp: RevokeResponse = connect(admin)?
        .call_json(
            Method::POST,
            "/api/v1/revocations",
            "application/json",
            Bytes::from(serde_json::to_vec(&req)?),
        )
        .await?;
    let r = &resp.revocation;
    println!(
        "revoked {} {} (kept until {}); {} open connection(s) closed",
        r.kind.replace('_', " "),
        r.target,
        r.keep_until,
        resp.closed_connections
    );
    Ok(())
}

fn print_ca(view: &CaView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
        return Ok(());
    }
    println!("trust domain:  {}", view.trust_domain);
    println!(
        "signing root:  {} (signing chain valid until {})",
        view.signing_root, view.signing_not_after
    );
    for r in &view.roots {
        println!(
            "\nroot {}{}",
            r.id,
            if r.signing { " (signing)" } else { "" }
        );
        println!("  subject:     {}", r.subject);
        println!("  sha256:      {}", r.fingerprint_sha256);
        println!("  valid:       {} .. {}", r.not_before, r.not_after);
        println!("  origin:      {}", r.origin);
        println!(
            "  issued:      {} ({} still valid)",
            r.issued_count, r.valid_leaves
        );
        println!("  drop status: {}", r.drop_status);
    }
    println!("\nactive revocations: {}", view.active_revocations);
    match &view.rollover {
        Some(r) => println!("root roll-over: {}", r.description),
        None => println!("root roll-over: none in progress"),
    }
    Ok(())
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved).
fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes one path segment.
fn encode_path(s: &str) -> String {
    encode_query(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::types::{DecidingPolicy, PortView, ResourceRef};

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_query("mtls.yaml"), "mtls.yaml");
    }

    #[test]
    fn describe_names_the_deciding_policies() {
        let view = ServiceView {
            host: "details.bookinfo.svc.cluster.local".into(),
            namespace: "bookinfo".into(),
            labels: vec![("app".into(), "details".into())],
            service_account: Some("bookinfo-details".into()),
            ports: vec![PortView {
                port: 9080,
                name: Some("http".into()),
                protocol: "http".into(),
                target_port: 9080,
                mode: "STRICT".into(),
                deciding: vec![DecidingPolicy {
                    resource: ResourceRef {
                        kind: "PeerAuthentication".into(),
                        namespace: "bookinfo".into(),
                        name: "default".into(),
                    },
                    scope: "namespace".into(),
                    mode: "STRICT".into(),
                }],
            }],
            authorization: vec![],
        };
        let text = describe(&view);
        assert!(text.contains("effective mTLS mode STRICT"), "{text}");
        assert!(
            text.contains("namespace  bookinfo/default STRICT"),
            "{text}"
        );
        assert!(text.contains("app=details"), "{text}");
    }
}
