//! Reading files and directories, and turning per-document issues into
//! file-level diagnostics. Shared by the policy loader and the settings
//! loader so both report errors the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use meshgate_core::time::UnixTime;

use crate::error::{ConfigErrors, Diagnostic, ErrorKind, Location};
use crate::read::{Issue, Reader};
use crate::resource::{Accept, Resource, decode_document};
use crate::yaml::parse_stream;

/// A decoded resource and where it came from.
#[derive(Clone, Debug)]
pub(crate) struct Located {
    pub(crate) resource: Resource,
    pub(crate) file: String,
    pub(crate) document: usize,
    pub(crate) at: Location,
}

impl Located {
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}: document {}, line {}",
            self.file, self.document, self.at.line
        )
    }
}

pub(crate) fn diagnostic(file: &str, document: Option<usize>, issue: Issue) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        document,
        location: Some(issue.at),
        field: issue.field,
        kind: issue.kind,
    }
}

/// A checker run on every decoded resource after schema decoding, returning
/// (field path relative to the resource, message) pairs.
pub(crate) type Check<'c> = &'c dyn Fn(&Resource) -> Vec<(String, ErrorKind)>;

/// Decodes every document of one YAML stream. Problems go to `errors`; the
/// resources returned are only meaningful when no problem was recorded.
pub(crate) fn decode_source(
    src: &str,
    file: &str,
    accept: Accept,
    default_creation: UnixTime,
    check: Check<'_>,
    errors: &mut ConfigErrors,
) -> Vec<Located> {
    let stream = parse_stream(src);
    let mut out = Vec::new();
    for doc in &stream.documents {
        if doc.root.is_null() {
            continue;
        }
        let mut r = Reader::default();
        for d in decode_document(&mut r, &doc.root, accept, default_creation) {
            for (path, kind) in check(&d.resource) {
                let field = crate::read::join(&d.prefix, &path);
                // Point at the field when we saw it, else at its nearest
                // ancestor, else at the resource.
                let at = r.position_of(&field).unwrap_or(d.at);
                r.issue(at, &field, kind);
            }
            out.push(Located {
                resource: d.resource,
                file: file.to_owned(),
                document: doc.index,
                at: d.at,
            });
        }
        // Report in file order, whatever order the checks ran in.
        r.issues.sort_by_key(|i| i.at);
        for issue in r.issues.drain(..) {
            errors.push(diagnostic(file, Some(doc.index), issue));
        }
    }
    if let Some(e) = stream.error {
        errors.push(diagnostic(
            file,
            e.document,
            Issue {
                at: e.at,
                field: String::new(),
                kind: e.kind,
            },
        ));
    }
    out
}

/// Reports every (kind, namespace, name) defined more than once.
pub(crate) fn check_duplicates(items: &[Located], errors: &mut ConfigErrors) {
    let mut seen: HashMap<(&'static str, &str, &str), &Located> = HashMap::new();
    for item in items {
        let (kind, ns, name) = match &item.resource {
            Resource::Peer(p) => ("PeerAuthentication", &p.meta.namespace, &p.meta.name),
            Resource::Authz(a) => ("AuthorizationPolicy", &a.meta.namespace, &a.meta.name),
            Resource::ServiceEntry(s) => ("ServiceEntry", &s.namespace, &s.name),
            Resource::WorkloadEntry(w) => match (&w.namespace, &w.name) {
                (Some(ns), Some(name)) => ("WorkloadEntry", ns, name),
                _ => continue,
            },
        };
        if let Some(first) = seen.get(&(kind, ns.as_str(), name.as_str())) {
            errors.push(Diagnostic {
                file: item.file.clone(),
                document: Some(item.document),
                location: Some(item.at),
                field: "metadata.name".to_owned(),
                kind: ErrorKind::DuplicateResource {
                    kind,
                    namespace: ns.clone(),
                    name: name.clone(),
                    first: first.describe(),
                },
            });
        } else {
            seen.insert((kind, ns, name), item);
        }
    }
}

/// Reads a whole file, refusing files over [`crate::MAX_FILE_BYTES`].
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    let file = path.display().to_string();
    let fail = |kind| {
        ConfigErrors::from(Diagnostic {
            file: file.clone(),
            document: None,
            location: None,
            field: String::new(),
            kind,
        })
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(ErrorKind::Io(e.to_string())))?;
    if meta.len() > crate::MAX_FILE_BYTES {
        return Err(fail(ErrorKind::TooLarge {
            limit: crate::MAX_FILE_BYTES,
        }));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(ErrorKind::Io(e.to_string())))?;
    String::from_utf8(bytes).map_err(|e| fail(ErrorKind::Io(format!("not UTF-8: {e}"))))
}

fn is_config_file(name: &str) -> bool {
    // Dot-files are skipped: a Kubernetes ConfigMap volume holds `..data`
    // and `..2024_…` entries next to the real files, which would otherwise
    // be read twice.
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.len() > ext.len() && name.ends_with(ext))
}

/// Expands directories (non-recursively, YAML/JSON files only, sorted by
/// name) and keeps plain files as they are.
pub(crate) fn expand(paths: &[PathBuf], errors: &mut ConfigErrors) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        let io = |e: std::io::Error| Diagnostic {
            file: p.display().to_string(),
            document: None,
            location: None,
            field: String::new(),
            kind: ErrorKind::Io(e.to_string()),
        };
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => {
                errors.push(io(e));
                continue;
            }
        };
        if !meta.is_dir() {
            out.push(p.clone());
            continue;
        }
        let entries = match std::fs::read_dir(p) {
            Ok(rd) => rd,
            Err(e) => {
                errors.push(io(e));
                continue;
            }
        };
        let mut files = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => {
                    let name = e.file_name();
                    let path = e.path();
                    if name.to_str().is_some_and(is_config_file) && path.is_file() {
                        files.push(path);
                    }
                }
                Err(e) => errors.push(io(e)),
            }
        }
        files.sort();
        out.extend(files);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_names() {
        assert!(is_config_file("a.yaml"));
        assert!(is_config_file("b.yml"));
        assert!(is_config_file("c.json"));
        assert!(!is_config_file(".yaml"));
        assert!(!is_config_file("..data"));
        assert!(!is_config_file(".hidden.yaml"));
        assert!(!is_config_file("README.md"));
    }
}
