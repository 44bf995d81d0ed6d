//! Typed, schema-checked access to a [`yaml::Node`] tree.
//!
//! A [`Reader`] walks one document, records every problem with its line and
//! field path instead of stopping, and remembers where each field path it
//! visited starts, so that errors found later (core validation, duplicate
//! detection) can be pointed at a line too.

use std::collections::HashMap;

use crate::error::{ErrorKind, Location};
use crate::yaml::{Node, Scalar, ScalarType, Value};

/// A problem inside one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Issue {
    pub(crate) at: Location,
    pub(crate) field: String,
    pub(crate) kind: ErrorKind,
}

/// Collects issues and the position of each visited field path.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    pub(crate) issues: Vec<Issue>,
    positions: HashMap<String, Location>,
}

/// `parent.child`, or `child` at the top.
pub(crate) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

/// `parent[i]`.
pub(crate) fn index(parent: &str, i: impl core::fmt::Display) -> String {
    format!("{parent}[{i}]")
}

/// `parent[key]` for free-form map keys such as labels (the form
/// meshgate-core's validation uses too).
pub(crate) fn key(parent: &str, k: &str) -> String {
    format!("{parent}[{k}]")
}

/// The checked entries of one mapping.
pub(crate) struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    /// The value of `name`, treating an explicit `null` as absent (as
    /// Kubernetes does).
    pub(crate) fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, v)| *k == name && !v.is_null())
            .map(|(_, v)| *v)
    }
}

impl Reader {
    pub(crate) fn issue(&mut self, at: Location, field: &str, kind: ErrorKind) {
        self.issues.push(Issue {
            at,
            field: field.to_owned(),
            kind,
        });
    }

    /// Records where `path` starts (first visit wins).
    pub(crate) fn mark(&mut self, path: &str, at: Location) {
        self.positions.entry(path.to_owned()).or_insert(at);
    }

    /// The best-known position for a field path: the path itself, else its
    /// nearest recorded ancestor (`a.b[2].c` → `a.b[2]` → `a.b` → `a`).
    pub(crate) fn position_of(&self, path: &str) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(at) = self.positions.get(p) {
                return Some(*at);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    fn wrong_type(&mut self, node: &Node, path: &str, expected: &'static str) {
        let found = node.type_name();
        self.issue(node.at, path, ErrorKind::WrongType { expected, found });
    }

    /// Checks that `node` is a mapping whose keys are strings, unique and
    /// all in `allowed`. Unknown or duplicate keys are reported and skipped.
    pub(crate) fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        allowed: &'static [&'static str],
    ) -> Option<Fields<'n>> {
        let entries = self.mapping_entries(node, path)?;
        let mut out = Fields {
            entries: Vec::new(),
        };
        for (k, kn, v) in entries {
            let field = join(path, k);
            if !allowed.contains(&k) {
                self.issue(
                    kn.at,
                    &field,
                    ErrorKind::UnknownField {
                        field: k.to_owned(),
                        expected: allowed,
                    },
                );
                continue;
            }
            self.mark(&field, v.at);
            out.entries.push((k, v));
        }
        Some(out)
    }

    /// A mapping with arbitrary string keys: (key, key node, value), in
    /// order, duplicates reported and dropped.
    pub(crate) fn mapping_entries<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
    ) -> Option<Vec<(&'n str, &'n Node, &'n Node)>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, path, "a mapping");
            return None;
        };
        self.mark(path, node.at);
        let mut out: Vec<(&'n str, &'n Node, &'n Node)> = Vec::with_capacity(entries.len());
        for (kn, v) in entries {
            let k = match &kn.value {
                Value::Scalar(s) => s.text.as_str(),
                _ => {
                    self.issue(kn.at, path, ErrorKind::KeyNotString);
                    continue;
                }
            };
            if out.iter().any(|(seen, _, _)| *seen == k) {
                self.issue(kn.at, &join(path, k), ErrorKind::DuplicateKey(k.to_owned()));
                continue;
            }
            out.push((k, kn, v));
        }
        Some(out)
    }

    /// Items of a list (null is the empty list).
    pub(crate) fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        if node.is_null() {
            return Some(&[]);
        }
        match &node.value {
            Value::Seq(items) => {
                self.mark(path, node.at);
                for (i, item) in items.iter().enumerate() {
                    self.mark(&index(path, i), item.at);
                }
                Some(items)
            }
            _ => {
                self.wrong_type(node, path, "a list");
                None
            }
        }
    }

    fn scalar<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        expected: &'static str,
    ) -> Option<&'n Scalar> {
        match &node.value {
            Value::Scalar(s) => Some(s),
            _ => {
                self.wrong_type(node, path, expected);
                None
            }
        }
    }

    /// A string value. Plain scalars that YAML reads as numbers or booleans
    /// are refused, as Kubernetes does for string fields.
    pub(crate) fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.scalar(node, path, "a string")?;
        if s.resolve() == ScalarType::Str {
            Some(s.text.clone())
        } else {
            self.wrong_type(node, path, "a string");
            None
        }
    }

    /// A list of strings (null is the empty list).
    pub(crate) fn strings(&mut self, node: &Node, path: &str) -> Vec<String> {
        let Some(items) = self.list(node, path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.string(item, &index(path, i)))
            .collect()
    }

    /// A list whose items may be strings or integers (Istio's `ports`
    /// fields are strings, but `ports: [8080]` is a common way to write
    /// them); integers are kept in their written form.
    pub(crate) fn strings_or_ints(&mut self, node: &Node, path: &str) -> Vec<String> {
        let Some(items) = self.list(node, path) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            let Some(s) = self.scalar(item, &p, "a string") else {
                continue;
            };
            match s.resolve() {
                ScalarType::Str => out.push(s.text.clone()),
                ScalarType::Int => match s.as_int() {
                    Some(n) => out.push(n.to_string()),
                    None => self.issue(
                        item.at,
                        &p,
                        ErrorKind::Invalid("integer out of range".into()),
                    ),
                },
                _ => self.wrong_type(item, &p, "a string"),
            }
        }
        out
    }

    /// A `map[string]string` such as labels or annotations, in file order.
    pub(crate) fn string_map(&mut self, node: &Node, path: &str) -> Vec<(String, String)> {
        let Some(entries) = self.mapping_entries(node, path) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(entries.len());
        for (k, _, v) in entries {
            let p = key(path, k);
            self.mark(&p, v.at);
            if let Some(val) = self.string(v, &p) {
                out.push((k.to_owned(), val));
            }
        }
        out
    }

    /// An integer in `lo..=hi`.
    pub(crate) fn int_in(&mut self, node: &Node, path: &str, lo: i64, hi: i64) -> Option<i64> {
        let s = self.scalar(node, path, "an integer")?;
        if s.resolve() != ScalarType::Int {
            self.wrong_type(node, path, "an integer");
            return None;
        }
        match s.as_int() {
            Some(n) if (lo..=hi).contains(&n) => Some(n),
            _ => {
                self.issue(
                    node.at,
                    path,
                    ErrorKind::Invalid(format!("{} is out of range {lo}..={hi}", s.text)),
                );
                None
            }
        }
    }

    /// A port number 1..=65535.
    pub(crate) fn port(&mut self, node: &Node, path: &str) -> Option<u16> {
        self.int_in(node, path, 1, 65535)
            .and_then(|n| u16::try_from(n).ok())
    }

    /// A required field: reports [`ErrorKind::Missing`] at the parent.
    pub(crate) fn required<'n>(
        &mut self,
        fields: &Fields<'n>,
        name: &str,
        parent: &Node,
        parent_path: &str,
    ) -> Option<&'n Node> {
        let v = fields.get(name);
        if v.is_none() {
            self.issue(parent.at, &join(parent_path, name), ErrorKind::Missing);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_stream;

    fn root(src: &str) -> Node {
        let mut s = parse_stream(src);
        assert!(s.error.is_none(), "{:?}", s.error);
        s.documents.remove(0).root
    }

    #[test]
    fn unknown_and_duplicate_keys_are_reported_with_lines() {
        let n = root("a: 1\nb: 2\na: 3\n");
        let mut r = Reader::default();
        let f = r.fields(&n, "spec", &["a"]).expect("mapping");
        assert!(f.get("a").is_some());
        assert_eq!(r.issues.len(), 2);
        assert_eq!(r.issues[0].kind, ErrorKind::DuplicateKey("a".into()));
        assert_eq!(r.issues[0].at.line, 3);
        assert_eq!(r.issues[1].field, "spec.b");
        assert_eq!(r.issues[1].at.line, 2);
    }

    #[test]
    fn positions_fall_back_to_ancestors() {
        let n = root("spec:\n  rules:\n  - from: []\n");
        let mut r = Reader::default();
        let spec = r
            .fields(&n, "", &["spec"])
            .and_then(|f| f.get("spec"))
            .expect("spec");
        let rules = r
            .fields(spec, "spec", &["rules"])
            .and_then(|f| f.get("rules"))
            .expect("rules");
        r.list(rules, "spec.rules");
        assert_eq!(
            r.position_of("spec.rules[0].from[3].source")
                .map(|l| l.line),
            Some(3)
        );
        assert_eq!(r.position_of("spec.rules").map(|l| l.line), Some(3));
        assert_eq!(r.position_of("spec").map(|l| l.line), Some(2));
        assert_eq!(r.position_of("nothing"), None);
    }

    #[test]
    fn strings_refuse_numbers_and_bools() {
        let n = root("[8080, \"8080\", true, x]");
        let mut r = Reader::default();
        assert_eq!(r.strings(&n, "p"), vec!["8080".to_owned(), "x".to_owned()]);
        assert_eq!(r.issues.len(), 2);
        let mut r = Reader::default();
        assert_eq!(r.strings_or_ints(&n, "p"), vec!["8080", "8080", "x"]);
        assert_eq!(r.issues.len(), 1);
    }
}
