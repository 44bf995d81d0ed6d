//! Configuration errors: what went wrong, and exactly where.
//!
//! Every problem found in a file becomes one [`Diagnostic`] naming the file,
//! the document inside it (1-based, counting every `---` document, empty
//! ones included, so the number matches what an editor shows), the line and
//! column, and the field path (`spec.mtls.mode`). Loading never stops at the
//! first problem: a file is accepted or rejected as a unit, and the caller
//! gets every diagnostic at once in [`ConfigErrors`].

use core::fmt;

/// A position in a source file, both numbers 1-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Line, counted from 1 over the whole file (not the document).
    pub line: usize,
    /// Column in characters, counted from 1.
    pub column: usize,
}

/// What is wrong. The [`Diagnostic`] around it says where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(String),
    /// The file is larger than [`crate::MAX_FILE_BYTES`].
    #[error("file is larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The YAML itself is malformed.
    #[error("YAML syntax error: {0}")]
    Syntax(String),
    /// YAML aliases (`*name`) are refused: they are not needed for Istio
    /// resources and would allow exponential expansion.
    #[error("YAML aliases (*{0}) are not supported")]
    Alias(String),
    /// A tag other than the YAML core schema ones (`!!str`, ...).
    #[error("YAML tag {0} is not supported")]
    Tag(String),
    /// Nesting deeper than [`crate::yaml::MAX_DEPTH`] levels.
    #[error("nesting is deeper than {0} levels")]
    TooDeep(usize),
    /// A mapping key that is not a plain string (e.g. a sequence).
    #[error("mapping keys must be strings")]
    KeyNotString,
    /// The same key twice in one mapping.
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
    /// A field the schema does not have.
    #[error("unknown field {field:?} (expected one of: {})", .expected.join(", "))]
    UnknownField {
        /// The offending key.
        field: String,
        /// The fields allowed at that place.
        expected: &'static [&'static str],
    },
    /// A field the Istio API has but meshgate does not implement. Ignoring
    /// it could widen access, so the resource is rejected instead.
    #[error("field {0:?} is not supported by meshgate")]
    Unsupported(&'static str),
    /// A required field is absent.
    #[error("required field is missing")]
    Missing,
    /// A value of the wrong YAML type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the schema wants ("a string", "a mapping", ...).
        expected: &'static str,
        /// What the document has.
        found: &'static str,
    },
    /// A value outside an enumeration (mode, action, protocol, ...).
    #[error("unknown {what} {value:?} (expected {expected})")]
    UnknownValue {
        /// What the value names ("mode", "action", ...).
        what: &'static str,
        /// The value found.
        value: String,
        /// The accepted values, for the message.
        expected: &'static str,
    },
    /// A value with the right type but an invalid form.
    #[error("{0}")]
    Invalid(String),
    /// `apiVersion` names a group/version meshgate does not read.
    #[error("unsupported apiVersion {0:?} (expected {1})")]
    UnknownApiVersion(String, &'static str),
    /// `kind` is not one meshgate reads at this place.
    #[error("unsupported kind {kind:?} (expected {expected})")]
    UnknownKind {
        /// The kind found.
        kind: String,
        /// The kinds accepted here.
        expected: &'static str,
    },
    /// The same (kind, namespace, name) twice in one load.
    #[error("duplicate {kind} {namespace}/{name} (first defined at {first})")]
    DuplicateResource {
        /// Resource kind.
        kind: &'static str,
        /// `metadata.namespace`.
        namespace: String,
        /// `metadata.name`.
        name: String,
        /// Where the first definition is, already formatted.
        first: String,
    },
    /// Rejected by meshgate-core's validation (Istio's rules and wording).
    #[error("{0}")]
    Validation(meshgate_core::policy::ValidationErrorKind),
}

/// One problem, with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (or origin such as `-` for stdin) as the caller named it.
    pub file: String,
    /// 1-based document index inside the file, when the problem is inside
    /// a document.
    pub document: Option<usize>,
    /// Line and column, when known.
    pub location: Option<Location>,
    /// Field path such as `spec.portLevelMtls[8080].mode`; empty when the
    /// problem is not about one field.
    pub field: String,
    /// What is wrong.
    pub kind: ErrorKind,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        let mut sep = ": ";
        if let Some(doc) = self.document {
            write!(f, "{sep}document {doc}")?;
            sep = ", ";
        }
        if let Some(loc) = self.location {
            write!(f, "{sep}line {}, column {}", loc.line, loc.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// Every problem found while loading; never empty when returned as an
/// error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors {
    diagnostics: Vec<Diagnostic>,
}

impl ConfigErrors {
    /// The individual problems, in file order.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.diagnostics.len()
    }

    /// True when there is no problem (never the case for a returned error).
    pub fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }

    pub(crate) fn push(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    pub(crate) fn extend(&mut self, other: ConfigErrors) {
        self.diagnostics.extend(other.diagnostics);
    }

    /// `Ok(value)` when nothing was recorded, otherwise `Err(self)`.
    pub(crate) fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.diagnostics.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<Diagnostic> for ConfigErrors {
    fn from(d: Diagnostic) -> Self {
        ConfigErrors {
            diagnostics: vec![d],
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl core::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a Diagnostic;
    type IntoIter = core::slice::Iter<'a, Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.diagnostics.iter()
    }
}
