//! Offline validation of `deploy/`: the container image recipe and the
//! Kubernetes manifests that run meshgate as the ingress gateway pod.
//!
//! What is checked, without a cluster, a registry or a Docker engine:
//! - `kubectl kustomize` renders the base and every overlay;
//! - every rendered Kubernetes resource validates against the Kubernetes
//!   1.32 schemas with `kubernetes-validate --strict` (unknown fields are
//!   errors; a kind without a schema is an error too);
//! - every Istio resource — top-level, inside the policy ConfigMap, inside
//!   the settings file, or anywhere under `deploy/` — validates against
//!   Istio's CRD OpenAPI schemas kept in `tests/testdata/istio-crds/`;
//! - meshgate's own parser (meshgate-config) accepts the settings file and
//!   the policies exactly as the pod sees them: the rendered ConfigMaps are
//!   laid out like the kubelet's volumes (`..data` symlinks included) and
//!   loaded with `Settings::load` and `load_policies`; every policy file
//!   under `deploy/` parses too;
//! - the pod keeps its hardening (non-root, read-only root filesystem, no
//!   privilege escalation, all capabilities dropped, RuntimeDefault seccomp,
//!   probes on the admin port, resource limits, no API token);
//! - the Dockerfile's structure: a Rust builder and a separate runtime stage,
//!   a numeric non-root user, the documented entrypoint, no secrets copied.
//!   It is linted, not built: there is no Docker engine here.
//!
//! Each check also runs once on a deliberately broken copy and must fail
//! there, so a validator that silently accepts everything is caught.
//!
//! Prerequisites (installed by `scripts/install-deps`): `kubectl`, and the
//! Python packages `kubernetes-validate`, `jsonschema` and PyYAML. When one is
//! missing the test fails if `CI=true`, and otherwise prints a SKIP notice
//! and returns.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use meshgate_config::policy::{load_policies, parse_policies};
use meshgate_config::settings::Settings;
use meshgate_core::mtls::MtlsMode;
use meshgate_core::time::UnixTime;

/// Kubernetes version the manifests must be valid for.
const KUBERNETES_VERSION: &str = "1.32.0";

/// Kustomizations under `deploy/` that must render and validate.
const KUSTOMIZATIONS: &[&str] = &["deploy/base", "deploy/overlays/bookinfo"];

/// Python modules the validators import.
const PYTHON_MODULES: &str = "import kubernetes_validate, jsonschema, yaml";

const KUBECTL_MISSING: &str = "kubectl (1.27 or newer, with its built-in kustomize) on PATH";
const PYTHON_MISSING: &str = "python3 with the PyPI packages kubernetes-validate, jsonschema and \
     PyYAML (scripts/install-deps installs them)";

fn repo_root() -> PathBuf {
    // tests/ is one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn crd_dir() -> PathBuf {
    repo_root().join("tests/testdata/istio-crds")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// True when `ok`; otherwise fails under CI and prints a SKIP notice
/// elsewhere, returning false so the caller returns early.
fn prerequisite(ok: bool, what: &str, test: &str) -> bool {
    if ok {
        return true;
    }
    let msg = format!("{what} is missing");
    assert!(!in_ci(), "{test}: {msg}");
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of passing tests, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIP {test}: {msg} (set CI=true to make this a failure) ***\n"
    );
    false
}

fn runs(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have_kubectl() -> bool {
    runs(Command::new("kubectl").args(["version", "--client"]))
}

fn have_python_modules() -> bool {
    runs(Command::new("python3").args(["-c", PYTHON_MODULES]))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

/// `kubectl kustomize DIR`, which must succeed.
fn render(kustomization: &str) -> String {
    let out = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_root().join(kustomization)));
    assert!(
        out.status.success(),
        "kubectl kustomize {kustomization} failed:\n{}",
        text(&out)
    );
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        yaml.contains("kind: Deployment"),
        "{kustomization} rendered no Deployment:\n{yaml}"
    );
    yaml
}

/// A scratch directory for one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("meshgate-deploy-{test}-{}", std::process::id()));
        // A leftover from a killed run of the same pid is stale: start clean.
        let _ = fs::remove_dir_all(&dir);
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        Scratch(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Err(e) = fs::write(&path, contents) {
            panic!("cannot write {}: {e}", path.display());
        }
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `kubernetes-validate --strict` on a file of rendered manifests and
/// returns (passed, output). Passing means: exit 0, every document reported
/// as passed, and no "Couldn't find schema" warning (which the tool does not
/// count as a failure, but an unknown kind is not a valid manifest).
fn kubernetes_validate(file: &Path) -> (bool, String) {
    let out = run(Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
        ])
        .arg(file));
    let log = text(&out);
    let passed = log.matches(" passed for resource ").count();
    let ok = out.status.success() && !log.contains("Couldn't find schema") && passed > 0;
    (ok, log)
}

/// Runs the Istio CRD validator on files; returns (passed, output).
fn istio_validate(files: &[PathBuf]) -> (bool, String) {
    let out = run(Command::new("python3")
        .arg(crd_dir().join("validate.py"))
        .arg(crd_dir())
        .args(files));
    (out.status.success(), text(&out))
}

#[test]
fn deploy_kubernetes_resources_validate_against_1_32_schemas() {
    let test = "deploy_kubernetes_resources_validate_against_1_32_schemas";
    if !prerequisite(have_kubectl(), KUBECTL_MISSING, test)
        || !prerequisite(have_python_modules(), PYTHON_MISSING, test)
    {
        return;
    }
    let scratch = Scratch::new("k8s");
    for k in KUSTOMIZATIONS {
        let yaml = render(k);
        let file = scratch.write("rendered.yaml", &yaml);
        let (ok, log) = kubernetes_validate(&file);
        assert!(
            ok,
            "{k}: not valid for Kubernetes {KUBERNETES_VERSION}:\n{log}"
        );
        let documents = yaml.matches("\nkind: ").count() + usize::from(yaml.starts_with("kind: "));
        let passed = log.matches(" passed for resource ").count();
        assert_eq!(
            passed, documents,
            "{k}: not every document was validated:\n{log}"
        );
    }

    // The validator must reject a broken manifest: a misspelt security field
    // (strict mode) in an otherwise valid render.
    let broken = render("deploy/base").replacen(
        "allowPrivilegeEscalation: false",
        "allowPrivilegeEscalations: false",
        1,
    );
    let file = scratch.write("broken.yaml", &broken);
    let (ok, log) = kubernetes_validate(&file);
    assert!(!ok, "kubernetes-validate accepted an unknown field:\n{log}");
    assert!(log.contains("allowPrivilegeEscalations"), "{log}");
}

/// Every YAML file under `deploy/`, for Istio resources written outside a
/// kustomization's generators.
fn deploy_yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo_root().join("deploy"), &mut files);
    files.sort();
    files
}

#[test]
fn deploy_istio_resources_validate_against_istio_crd_schemas() {
    let test = "deploy_istio_resources_validate_against_istio_crd_schemas";
    if !prerequisite(have_kubectl(), KUBECTL_MISSING, test)
        || !prerequisite(have_python_modules(), PYTHON_MISSING, test)
    {
        return;
    }
    let scratch = Scratch::new("istio");
    let mut files = deploy_yaml_files();
    assert!(files.len() > 3, "found no YAML under deploy/: {files:?}");
    for (i, k) in KUSTOMIZATIONS.iter().enumerate() {
        files.push(scratch.write(&format!("rendered-{i}.yaml"), &render(k)));
    }
    let (ok, log) = istio_validate(&files);
    assert!(ok, "Istio resources in deploy/ do not validate:\n{log}");

    // The bookinfo overlay ships the seed's policies and services, rendered
    // into the ConfigMaps the pod mounts: each must be found and valid there.
    let rendered = files
        .last()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    for expected in [
        "OK PeerAuthentication bookinfo/default",
        "OK AuthorizationPolicy bookinfo/details-allow-productpage",
        "OK ServiceEntry bookinfo/details",
        "OK ServiceEntry bookinfo/productpage",
    ] {
        assert!(
            log.lines()
                .any(|l| l.starts_with(expected) && l.contains(&rendered)),
            "{expected} not validated in the rendered overlay:\n{log}"
        );
    }

    // The validator must reject what the API server would: an unknown mode
    // and a misspelt field.
    let broken =
        fs::read_to_string(repo_root().join("deploy/overlays/bookinfo/policies/mutual-tls.yaml"))
            .unwrap_or_default()
            .replacen("mode: STRICT", "mode: STRICTER", 1)
            .replacen("mtls:", "mtls:\n    modes: STRICT", 1);
    let (ok, log) = istio_validate(&[scratch.write("broken.yaml", &broken)]);
    assert!(!ok, "the Istio validator accepted a broken policy:\n{log}");
    assert!(log.contains("STRICTER") && log.contains("modes"), "{log}");
}

/// Facts about the rendered pod that must hold in every kustomization,
/// checked with PyYAML (the rendered YAML is arbitrary YAML, and this crate
/// has no YAML parser). Prints one line per violation.
const POSTURE_CHECK: &str = r#"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
bad = []
def need(cond, msg):
    if not cond: bad.append(msg)
deps = [d for d in docs if d["kind"] == "Deployment"]
need(len(deps) == 1, "exactly one Deployment")
for d in deps:
    pod = d["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True, "pod runAsNonRoot")
    need(isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, "pod numeric non-root runAsUser")
    need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccomp RuntimeDefault")
    need(pod.get("automountServiceAccountToken") is False, "no service account token in file mode")
    need(not pod.get("hostNetwork") and not pod.get("hostPID"), "no host namespaces")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        need(sc.get("readOnlyRootFilesystem") is True, c["name"] + ": readOnlyRootFilesystem")
        need(sc.get("allowPrivilegeEscalation") is False, c["name"] + ": allowPrivilegeEscalation false")
        need(sc.get("capabilities", {}).get("drop") == ["ALL"], c["name"] + ": drop ALL capabilities")
        need(not sc.get("capabilities", {}).get("add"), c["name"] + ": adds no capability")
        need(sc.get("privileged") in (None, False), c["name"] + ": not privileged")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        need(ports.get("admin") == 15000, c["name"] + ": admin port 15000")
        probes = {k: c.get(k, {}).get("httpGet", {}) for k in ("livenessProbe", "readinessProbe")}
        need(probes["livenessProbe"].get("path") == "/healthz", c["name"] + ": liveness on /healthz")
        need(probes["readinessProbe"].get("path") == "/readyz", c["name"] + ": readiness on /readyz")
        need(all(p.get("port") in ("admin", 15000) for p in probes.values()), c["name"] + ": probes on the admin port")
        res = c.get("resources", {})
        need(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory"), c["name"] + ": requests")
        need(res.get("limits", {}).get("cpu") and res.get("limits", {}).get("memory"), c["name"] + ": limits")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        need("/var/lib/meshgate" in mounts, c["name"] + ": data dir mounted")
        need(mounts.get("/etc/meshgate/meshgate.yaml", {}).get("readOnly") is True, c["name"] + ": settings read-only")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    need("emptyDir" in vols.get("data", {}), "data dir is an emptyDir")
    need(vols.get("cacerts", {}).get("secret", {}).get("optional") is True, "cacerts Secret optional")
    need(not any("hostPath" in v for v in vols.values()), "no hostPath volumes")
svcs = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Service"}
need(svcs.get("meshgate", {}).get("type") == "LoadBalancer", "data-plane Service is a LoadBalancer")
need(svcs.get("meshgate-admin", {}).get("type", "ClusterIP") == "ClusterIP", "admin Service is ClusterIP")
need(not any(p.get("port") == 15000 for p in svcs.get("meshgate", {}).get("ports", [])), "admin port not on the LoadBalancer")
need(not any(d["kind"] == "Secret" for d in docs), "no Secret (key material) in the manifests")
for d in docs:
    if d["kind"] in ("Role", "ClusterRole"):
        for r in d.get("rules", []):
            need(set(r.get("verbs", [])) <= {"get", "list", "watch"}, d["metadata"]["name"] + ": read-only verbs")
            need("*" not in r.get("resources", []) and "secrets" not in r.get("resources", []), d["metadata"]["name"] + ": no wildcard or secrets")
    need(d["kind"] not in ("ClusterRole", "ClusterRoleBinding"), "no cluster-wide RBAC in file mode")
for m in bad: print("VIOLATION", m)
"#;

fn posture_violations(file: &Path) -> Vec<String> {
    let out = run(Command::new("python3")
        .args(["-c", POSTURE_CHECK])
        .arg(file));
    assert!(
        out.status.success(),
        "posture check crashed on {}:\n{}",
        file.display(),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("VIOLATION "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn deploy_pod_keeps_its_hardening() {
    let test = "deploy_pod_keeps_its_hardening";
    if !prerequisite(have_kubectl(), KUBECTL_MISSING, test)
        || !prerequisite(have_python_modules(), PYTHON_MISSING, test)
    {
        return;
    }
    let scratch = Scratch::new("posture");
    for k in KUSTOMIZATIONS {
        let file = scratch.write("rendered.yaml", &render(k));
        let violations = posture_violations(&file);
        assert!(violations.is_empty(), "{k}: {violations:#?}");
    }
    let weakened = render("deploy/base").replacen(
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: false",
        1,
    );
    let violations = posture_violations(&scratch.write("weakened.yaml", &weakened));
    assert!(
        violations
            .iter()
            .any(|v| v.contains("readOnlyRootFilesystem")),
        "a writable root filesystem went unnoticed: {violations:?}"
    );
}

/// One Dockerfile instruction: keyword (upper case) and its arguments, with
/// line continuations joined and comment lines dropped.
fn dockerfile_instructions(src: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in src.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(' ').unwrap_or((current.as_str(), ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// Problems in a Dockerfile's structure (empty when it is acceptable).
fn dockerfile_problems(src: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let instructions = dockerfile_instructions(src);
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    if stages.len() < 2 {
        problems.push(format!(
            "multi-stage build expected, found {} FROM",
            stages.len()
        ));
    }
    let Some(&last) = stages.last() else {
        return problems;
    };
    // Build arguments declared before the first FROM parameterise the base
    // images; resolve their defaults to see which image each stage uses.
    let mut runtime_from = instructions[last].1.clone();
    for (k, a) in &instructions[..stages[0]] {
        if let (true, Some((name, value))) = (k == "ARG", a.split_once('=')) {
            runtime_from = runtime_from.replace(&format!("${{{name}}}"), value);
        }
    }
    let final_stage = &instructions[last..];
    if !instructions[..last]
        .iter()
        .any(|(k, a)| k == "RUN" && a.contains("cargo build --release --locked -p meshgate"))
    {
        problems.push("no builder RUN with `cargo build --release --locked -p meshgate`".into());
    }
    if !(runtime_from.starts_with("gcr.io/distroless/") || runtime_from.starts_with("debian:"))
        || runtime_from.contains("rust")
    {
        problems.push(format!(
            "runtime stage should be distroless or debian slim, not {runtime_from}"
        ));
    }
    // The last USER of the final stage must be numeric and not root, so
    // Kubernetes' runAsNonRoot can verify it.
    match final_stage.iter().rev().find(|(k, _)| k == "USER") {
        None => problems.push("final stage sets no USER (runs as root)".into()),
        Some((_, user)) => {
            let uid = user.split(':').next().unwrap_or_default();
            match uid.parse::<u32>() {
                Ok(0) => problems.push("final stage USER is root".into()),
                Ok(_) => {}
                Err(_) => problems.push(format!("final stage USER {user:?} is not numeric")),
            }
        }
    }
    let entrypoint = r#"["/usr/local/bin/meshgate", "serve", "--config", "/etc/meshgate/meshgate.yaml", "--data-dir", "/var/lib/meshgate"]"#;
    if !final_stage
        .iter()
        .any(|(k, a)| k == "ENTRYPOINT" && a == entrypoint)
    {
        problems.push(format!("final stage ENTRYPOINT is not {entrypoint}"));
    }
    for port in ["9080", "15000"] {
        if !final_stage
            .iter()
            .any(|(k, a)| k == "EXPOSE" && a.split_whitespace().any(|p| p == port))
        {
            problems.push(format!("port {port} not EXPOSEd"));
        }
    }
    for (k, a) in &instructions {
        let lower = a.to_ascii_lowercase();
        if k == "ADD" {
            problems.push(format!(
                "ADD {a}: use COPY (ADD fetches URLs and unpacks archives)"
            ));
        }
        if (k == "COPY" || k == "ADD")
            && ["pem", "key", "cacerts", "meshgate-data", "token", ".git"]
                .iter()
                .any(|s| lower.contains(s))
        {
            problems.push(format!("{k} {a}: copies key material or local state"));
        }
        if (k == "ENV" || k == "ARG")
            && ["secret", "token", "password", "key"]
                .iter()
                .any(|s| lower.contains(s))
        {
            problems.push(format!("{k} {a}: secrets do not belong in an image"));
        }
    }
    problems
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_copies_no_secrets() {
    // No Docker engine here: the image is not built, only its recipe checked.
    let root = repo_root();
    let dockerfile = fs::read_to_string(root.join("deploy/Dockerfile")).unwrap_or_default();
    let problems = dockerfile_problems(&dockerfile);
    assert!(problems.is_empty(), "deploy/Dockerfile: {problems:#?}");

    // The build context is the repository root; its .dockerignore must keep
    // build output and local state (admin token, CA keys) out of it.
    let ignore = fs::read_to_string(root.join(".dockerignore")).unwrap_or_default();
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        rules.first(),
        Some(&"*"),
        ".dockerignore must start by excluding everything"
    );
    for needed in ["**/target/", "**/meshgate-data/", "**/*.pem", "**/*.key"] {
        assert!(rules.contains(&needed), ".dockerignore lacks {needed}");
    }

    // The checks bite: the same Dockerfile running as root, or copying a
    // key, is refused.
    let as_root = dockerfile.replace("USER 65532:65532", "USER 0");
    assert!(
        dockerfile_problems(&as_root)
            .iter()
            .any(|p| p.contains("root"))
    );
    let named = dockerfile.replace("USER 65532:65532", "USER nonroot");
    assert!(
        dockerfile_problems(&named)
            .iter()
            .any(|p| p.contains("numeric"))
    );
    let leaks = format!("{dockerfile}\nCOPY cacerts/ca-key.pem /etc/cacerts/\n");
    assert!(
        dockerfile_problems(&leaks)
            .iter()
            .any(|p| p.contains("key material"))
    );
    let single = dockerfile
        .lines()
        .filter(|l| !l.starts_with("FROM ${RUST_IMAGE}") && !l.starts_with("FROM chef"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        dockerfile_problems(&single)
            .iter()
            .any(|p| p.contains("multi-stage"))
    );
}

/// Writes the rendered ConfigMaps the way the kubelet mounts them into the
/// pod: the settings file at ROOT/meshgate.yaml (subPath mount) and the
/// policy ConfigMap at ROOT/policies/ with the atomic-writer layout
/// (`..<timestamp>/` holds the files, `..data` points at it, each key is a
/// symlink through `..data`).
const POD_LAYOUT: &str = r#"
import os, sys, yaml
root = sys.argv[2]
os.makedirs(os.path.join(root, "policies"), exist_ok=True)
found = set()
for d in yaml.safe_load_all(open(sys.argv[1])):
    if not d or d["kind"] != "ConfigMap":
        continue
    name, data = d["metadata"]["name"], d.get("data") or {}
    if name.startswith("meshgate-settings"):
        open(os.path.join(root, "meshgate.yaml"), "w").write(data["meshgate.yaml"])
        found.add("settings")
    elif name == "meshgate-policies":
        pol = os.path.join(root, "policies")
        stamp = "..2026_01_01_00_00_00.000000000"
        os.makedirs(os.path.join(pol, stamp))
        os.symlink(stamp, os.path.join(pol, "..data"))
        for key, value in data.items():
            open(os.path.join(pol, stamp, key), "w").write(value)
            os.symlink(os.path.join("..data", key), os.path.join(pol, key))
        found.add("policies")
missing = {"settings", "policies"} - found
if missing:
    sys.exit("rendered manifests lack ConfigMaps: " + ", ".join(sorted(missing)))
"#;

#[test]
fn deploy_settings_and_policies_are_accepted_by_meshgate() {
    let test = "deploy_settings_and_policies_are_accepted_by_meshgate";
    if !prerequisite(have_kubectl(), KUBECTL_MISSING, test)
        || !prerequisite(have_python_modules(), PYTHON_MISSING, test)
    {
        return;
    }
    let scratch = Scratch::new("parser");
    for (i, k) in KUSTOMIZATIONS.iter().enumerate() {
        let rendered = scratch.write(&format!("rendered-{i}.yaml"), &render(k));
        let root = scratch.0.join(format!("pod-{i}/etc/meshgate"));
        let out = run(Command::new("python3")
            .args(["-c", POD_LAYOUT])
            .arg(&rendered)
            .arg(&root));
        assert!(out.status.success(), "{k}: {}", text(&out));

        let settings = match Settings::load(&root.join("meshgate.yaml")) {
            Ok(s) => s,
            Err(e) => panic!("{k}: meshgate rejects its settings file:\n{e}"),
        };
        // The pod's probes and Services reach these addresses from outside
        // the container: they must be on all interfaces, on the ports the
        // Deployment declares.
        assert!(
            settings.admin_address.ip().is_unspecified() && settings.admin_address.port() == 15000,
            "{k}: admin must listen on 0.0.0.0:15000 in a pod, not {}",
            settings.admin_address
        );
        assert!(
            settings
                .listeners
                .iter()
                .any(|l| l.address.ip().is_unspecified() && l.address.port() == 9080),
            "{k}: no data-plane listener on 0.0.0.0:9080: {:?}",
            settings.listeners
        );
        assert!(
            settings.policy_paths.iter().all(|p| p.starts_with(&root)),
            "{k}: policy paths outside the mounted ConfigMap: {:?}",
            settings.policy_paths
        );
        let policies = match load_policies(&settings.policy_paths, UnixTime::EPOCH) {
            Ok(p) => p,
            Err(e) => panic!("{k}: meshgate rejects its policies:\n{e}"),
        };
        let (peer, authz) = policies.into_parts();
        if k.ends_with("bookinfo") {
            // The seed's STRICT namespace policy and the productpage-only
            // rule, read through the `..data` symlinks.
            assert!(
                peer.iter().any(|p| p.meta.namespace == "bookinfo"
                    && p.meta.name == "default"
                    && p.selector.is_none()
                    && p.mode == MtlsMode::Strict),
                "{k}: no namespace-wide STRICT policy for bookinfo: {peer:?}"
            );
            assert!(
                authz.iter().any(|a| a.meta.namespace == "bookinfo"
                    && a.meta.name == "details-allow-productpage"),
                "{k}: AuthorizationPolicy missing: {authz:?}"
            );
            for host in [
                "details.bookinfo.svc.cluster.local",
                "productpage.bookinfo.svc.cluster.local",
            ] {
                assert!(
                    settings.service_for_host(host).is_some(),
                    "{k}: no service for {host}"
                );
            }
        }
    }

    // Every policy file anywhere under deploy/ parses on its own, as
    // `meshgate apply -f FILE` would read it.
    let mut parsed = 0;
    for file in deploy_yaml_files() {
        let src = fs::read_to_string(&file).unwrap_or_default();
        if !src.contains("apiVersion: security.istio.io/") {
            continue;
        }
        let origin = file.display().to_string();
        if let Err(e) = parse_policies(&origin, &src, UnixTime::EPOCH) {
            panic!("meshgate rejects {origin}:\n{e}");
        }
        parsed += 1;
    }
    assert!(
        parsed >= 2,
        "found only {parsed} policy files under deploy/"
    );

    // meshgate's parser checks what the CRD schema leaves to CEL rules:
    // portLevelMtls without a selector is refused.
    let broken = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
                  metadata:\n  name: default\n  namespace: bookinfo\n\
                  spec:\n  portLevelMtls:\n    \"9080\":\n      mode: DISABLE\n";
    assert!(
        parse_policies("broken.yaml", broken, UnixTime::EPOCH).is_err(),
        "meshgate accepted portLevelMtls without a selector"
    );
}
