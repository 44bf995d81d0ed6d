//! Canonical Istio YAML for core policy types.
//!
//! The admin API shows policies as YAML and persists policies applied
//! through it, so the output must parse back to exactly the same value
//! (including `metadata.creationTimestamp`, which decides conflicts). The
//! form is what `kubectl get -o yaml` would print for the spec: block
//! style, `security.istio.io/v1`, empty parts omitted, and strings quoted
//! whenever a YAML 1.1 or 1.2 reader could take them for anything else.

use core::fmt::Write as _;

use meshgate_core::mtls::MtlsMode;
use meshgate_core::policy::{
    AuthorizationPolicy, ObjectMeta, Operation, PeerAuthentication, Rule, Selector, Source,
};
use meshgate_core::time::UnixTime;

use crate::policy::Policy;
use crate::resource::{DRY_RUN_ANNOTATION, action_name, mode_name};
use crate::yaml::{ScalarType, resolve_plain};

/// The YAML document for one policy (no leading `---`).
pub fn to_yaml(policy: &Policy) -> String {
    match policy {
        Policy::PeerAuthentication(p) => peer_authentication_to_yaml(p),
        Policy::AuthorizationPolicy(a) => authorization_policy_to_yaml(a),
    }
}

/// A multi-document stream, documents separated by `---`.
pub fn policies_to_yaml<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> String {
    let mut out = String::new();
    for (i, p) in policies.into_iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&to_yaml(p));
    }
    out
}

/// Canonical YAML for a PeerAuthentication.
pub fn peer_authentication_to_yaml(p: &PeerAuthentication) -> String {
    let mut w = Writer::default();
    w.header("PeerAuthentication", &p.meta, false);
    let empty = p.selector.is_none() && p.mode == MtlsMode::Unset && p.port_level_mtls.is_empty();
    if empty {
        w.line(0, "spec: {}");
        return w.out;
    }
    w.line(0, "spec:");
    w.selector(1, p.selector.as_ref());
    // A missing mtls block is UNSET, so UNSET is written by omission.
    if p.mode != MtlsMode::Unset {
        w.line(1, "mtls:");
        w.line(2, &format!("mode: {}", mode_name(p.mode)));
    }
    if !p.port_level_mtls.is_empty() {
        w.line(1, "portLevelMtls:");
        for (port, mode) in &p.port_level_mtls {
            w.line(2, &format!("{port}:"));
            w.line(3, &format!("mode: {}", mode_name(*mode)));
        }
    }
    w.out
}

/// Canonical YAML for an AuthorizationPolicy.
pub fn authorization_policy_to_yaml(a: &AuthorizationPolicy) -> String {
    let mut w = Writer::default();
    w.header("AuthorizationPolicy", &a.meta, a.dry_run);
    w.line(0, "spec:");
    w.selector(1, a.selector.as_ref());
    w.line(1, &format!("action: {}", action_name(a.action)));
    if let Some(name) = &a.provider {
        w.line(1, "provider:");
        w.line(2, &format!("name: {}", quote(name)));
    }
    if !a.rules.is_empty() {
        w.line(1, "rules:");
        for rule in &a.rules {
            w.rule(rule);
        }
    }
    w.out
}

#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn line(&mut self, indent: usize, text: &str) {
        for _ in 0..indent {
            self.out.push_str("  ");
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn header(&mut self, kind: &str, meta: &ObjectMeta, dry_run: bool) {
        self.line(0, "apiVersion: security.istio.io/v1");
        self.line(0, &format!("kind: {kind}"));
        self.line(0, "metadata:");
        self.line(1, &format!("name: {}", quote(&meta.name)));
        self.line(1, &format!("namespace: {}", quote(&meta.namespace)));
        self.line(
            1,
            &format!(
                "creationTimestamp: {}",
                quote(&format_timestamp(meta.creation))
            ),
        );
        if dry_run {
            self.line(1, "annotations:");
            self.line(2, &format!("{DRY_RUN_ANNOTATION}: \"true\""));
        }
    }

    fn selector(&mut self, indent: usize, selector: Option<&Selector>) {
        let Some(s) = selector else { return };
        if s.match_labels.is_empty() {
            self.line(indent, "selector: {}");
            return;
        }
        self.line(indent, "selector:");
        self.line(indent + 1, "matchLabels:");
        for (k, v) in &s.match_labels {
            let key = quote(k);
            if key.len() > MAX_IMPLICIT_KEY {
                // Too long for an implicit key: the explicit form.
                self.line(indent + 2, &format!("? {key}"));
                self.line(indent + 2, &format!(": {}", quote(v)));
            } else {
                self.line(indent + 2, &format!("{key}: {}", quote(v)));
            }
        }
    }

    /// A list field under a mapping at `indent`; nothing when empty.
    fn list(&mut self, indent: usize, name: &str, items: &[String]) {
        if items.is_empty() {
            return;
        }
        self.line(indent, &format!("{name}:"));
        for item in items {
            self.line(indent, &format!("- {}", quote(item)));
        }
    }

    fn rule(&mut self, rule: &Rule) {
        if rule.from.is_empty() && rule.to.is_empty() && rule.when.is_empty() {
            self.line(1, "- {}");
            return;
        }
        // The first key of a list item shares the `- ` line; later keys are
        // indented to line up with it.
        let mut first = true;
        let mut key = |w: &mut Writer, text: &str| {
            if first {
                w.line(1, &format!("- {text}"));
                first = false;
            } else {
                w.line(2, text);
            }
        };
        if !rule.from.is_empty() {
            key(self, "from:");
            for s in &rule.from {
                self.source(s);
            }
        }
        if !rule.to.is_empty() {
            key(self, "to:");
            for o in &rule.to {
                self.operation(o);
            }
        }
        if !rule.when.is_empty() {
            key(self, "when:");
            for c in &rule.when {
                self.line(2, &format!("- key: {}", quote(&c.key)));
                self.list(3, "values", &c.values);
                self.list(3, "notValues", &c.not_values);
            }
        }
    }

    fn source(&mut self, s: &Source) {
        let fields: [(&str, &[String]); 6] = [
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
            ("ipBlocks", &s.ip_blocks),
            ("notIpBlocks", &s.not_ip_blocks),
        ];
        self.entry("source", &fields);
    }

    fn operation(&mut self, o: &Operation) {
        let fields: [(&str, &[String]); 8] = [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("ports", &o.ports),
            ("notPorts", &o.not_ports),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ];
        self.entry("operation", &fields);
    }

    /// `- source: {...}` / `- operation: {...}` under a rule's from/to.
    fn entry(&mut self, name: &str, fields: &[(&str, &[String])]) {
        if fields.iter().all(|(_, v)| v.is_empty()) {
            self.line(2, &format!("- {name}: {{}}"));
            return;
        }
        self.line(2, &format!("- {name}:"));
        for (field, values) in fields {
            self.list(4, field, values);
        }
    }
}

/// RFC 3339 in UTC, with milliseconds only when they are not zero. Times
/// past the year 9999 (which RFC 3339 cannot write) are clamped to its
/// last millisecond.
pub(crate) fn format_timestamp(t: UnixTime) -> String {
    const MAX_MS: u64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = t.as_millis().min(MAX_MS);
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|dt| {
            dt.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        // Unreachable for clamped input; the epoch keeps this total.
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// YAML 1.2 limits an implicit (`key: value`) key to 1024 characters;
/// a longer key (a label key of control characters, quoted with escapes,
/// from the fuzzer) needs the explicit `? key` form to read back.
const MAX_IMPLICIT_KEY: usize = 1024;

/// The scalar as YAML: plain when unambiguous, else double-quoted.
pub(crate) fn quote(s: &str) -> String {
    if is_plain_safe(s) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if is_printable(c) => out.push(c),
            c => {
                let n = u32::from(c);
                // `write!` to a String cannot fail.
                let _ = if n <= 0xFF {
                    write!(out, "\\x{n:02X}")
                } else if n <= 0xFFFF {
                    write!(out, "\\u{n:04X}")
                } else {
                    write!(out, "\\U{n:08X}")
                };
            }
        }
    }
    out.push('"');
    out
}

/// YAML's printable set minus the characters readers treat as line breaks
/// or BOM, which must be escaped inside quotes.
fn is_printable(c: char) -> bool {
    matches!(u32::from(c),
        0x20..=0x7E | 0xA0..=0x2027 | 0x202A..=0xD7FF | 0xE000..=0xFEFE | 0xFF00..=0xFFFD | 0x10000..)
}

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // Anything starting with a digit or sign might be a YAML 1.1 number,
    // time or sexagesimal value somewhere; quote it.
    if !first.is_ascii_alphabetic() && first != '/' {
        return false;
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
    {
        return false;
    }
    // YAML 1.1 booleans and nulls, which kubectl's reader still honours.
    const YAML11: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    if YAML11.iter().any(|w| s.eq_ignore_ascii_case(w)) {
        return false;
    }
    resolve_plain(s) == ScalarType::Str
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("STRICT"), "STRICT");
        assert_eq!(quote("cluster.local/ns/a/sa/b"), "cluster.local/ns/a/sa/b");
        assert_eq!(quote("8080"), "\"8080\"");
        assert_eq!(quote("*"), "\"*\"");
        assert_eq!(quote("*.example.com"), "\"*.example.com\"");
        assert_eq!(quote("yes"), "\"yes\"");
        assert_eq!(quote("Null"), "\"Null\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(
            quote("q\"\\\n\u{7}\u{2028}"),
            "\"q\\\"\\\\\\n\\x07\\u2028\""
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp(UnixTime::EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_timestamp(UnixTime::from_millis(1_700_000_000_123)),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_timestamp(UnixTime::from_millis(u64::MAX)),
            "9999-12-31T23:59:59.999Z"
        );
    }
}

#[cfg(test)]
mod roundtrip;
