//! A small positioned YAML tree built from saphyr-parser events.
//!
//! We build our own tree instead of using a DOM loader because we need
//! three things a loader hides: the line/column of every key and value,
//! duplicate keys (a loader keeps the last one silently), and aliases (we
//! refuse them: Istio resources do not need them and they allow
//! exponential "billion laughs" expansion). Construction is iterative and
//! the depth is bounded, so hostile input cannot overflow the stack either
//! while building or while dropping the tree.

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use crate::error::{ErrorKind, Location};

/// Deepest nesting accepted. Istio resources need about 8 levels.
pub(crate) const MAX_DEPTH: usize = 64;

/// A scalar as written, resolved lazily with the YAML 1.2 core schema.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Scalar {
    pub(crate) text: String,
    /// Quoted, block (`|`, `>`) or tagged `!!str`: always a string.
    pub(crate) forced_string: bool,
}

/// The YAML 1.2 core-schema type of a scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScalarType {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

impl Scalar {
    pub(crate) fn resolve(&self) -> ScalarType {
        if self.forced_string {
            return ScalarType::Str;
        }
        resolve_plain(&self.text)
    }

    /// The integer value of an integer scalar (None if not an integer or
    /// out of i64 range).
    pub(crate) fn as_int(&self) -> Option<i64> {
        if self.resolve() != ScalarType::Int {
            return None;
        }
        let t = self.text.as_str();
        let (neg, digits) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
            i64::from_str_radix(hex, 16).ok()?
        } else if let Some(oct) = digits.strip_prefix("0o") {
            i64::from_str_radix(oct, 8).ok()?
        } else {
            digits.parse::<i64>().ok()?
        };
        Some(if neg { -magnitude } else { magnitude })
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
pub(crate) fn resolve_plain(t: &str) -> ScalarType {
    match t {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarType::Null,
        "true" | "True" | "TRUE" | "false" | "False" | "FALSE" => return ScalarType::Bool,
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => return ScalarType::Float,
        _ => {}
    }
    let unsigned = t.strip_prefix(['-', '+']).unwrap_or(t);
    let all = |s: &str, f: fn(&u8) -> bool| !s.is_empty() && s.bytes().all(|b| f(&b));
    if all(unsigned, u8::is_ascii_digit) {
        return ScalarType::Int;
    }
    // Hex and octal have no sign in the core schema.
    if let Some(h) = t.strip_prefix("0x")
        && all(h, u8::is_ascii_hexdigit)
    {
        return ScalarType::Int;
    }
    if let Some(o) = t.strip_prefix("0o")
        && all(o, |b| (b'0'..=b'7').contains(b))
    {
        return ScalarType::Int;
    }
    if is_core_float(unsigned) {
        return ScalarType::Float;
    }
    ScalarType::Str
}

/// `( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_core_float(t: &str) -> bool {
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
                && !(int.is_empty() && frac.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|b| b.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A YAML node and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) at: Location,
}

impl Node {
    /// A short name of the node's type for "expected X, found Y" messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Scalar(s) => match s.resolve() {
                ScalarType::Null => "null",
                ScalarType::Bool => "a boolean",
                ScalarType::Int => "an integer",
                ScalarType::Float => "a number",
                ScalarType::Str => "a string",
            },
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s) if s.resolve() == ScalarType::Null)
    }
}

/// One document of a stream. `index` is 1-based and counts every document.
#[derive(Debug)]
pub(crate) struct Document {
    pub(crate) index: usize,
    pub(crate) root: Node,
}

/// A problem that stopped the YAML parse.
#[derive(Debug)]
pub(crate) struct StreamError {
    /// The document being parsed (1-based), if any had started.
    pub(crate) document: Option<usize>,
    pub(crate) at: Location,
    pub(crate) kind: ErrorKind,
}

/// Every complete document before a fatal problem, and the problem.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) documents: Vec<Document>,
    pub(crate) error: Option<StreamError>,
}

fn location(span: &Span) -> Location {
    Location {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

const CORE_HANDLE: &str = "tag:yaml.org,2002:";

/// Checks a tag: core-schema tags are accepted (and `!!str` forces a
/// string); anything else is refused because we would not know its meaning.
fn check_tag(tag: Option<&Tag>) -> Result<bool, ErrorKind> {
    match tag {
        None => Ok(false),
        Some(t) if t.handle == CORE_HANDLE => Ok(t.suffix == "str"),
        Some(t) => Err(ErrorKind::Tag(t.to_string())),
    }
}

enum Frame {
    Seq(Location, Vec<Node>),
    Map(Location, Vec<(Node, Node)>, Option<Node>),
}

/// Parses a whole YAML stream (all `---` documents).
pub(crate) fn parse_stream(src: &str) -> Stream {
    let mut parser = Parser::new_from_str(src);
    let mut documents = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut doc_index = 0usize;
    let mut current: Option<Node> = None;

    let fail = |documents, doc_index, at, kind| Stream {
        documents,
        error: Some(StreamError {
            document: (doc_index > 0).then_some(doc_index),
            at,
            kind,
        }),
    };

    loop {
        let (event, span) = match parser.next_event() {
            None => break,
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                let at = Location {
                    line: e.marker().line(),
                    column: e.marker().col() + 1,
                };
                return fail(
                    documents,
                    doc_index,
                    at,
                    ErrorKind::Syntax(e.info().to_owned()),
                );
            }
        };
        let at = location(&span);
        let complete: Node = match event {
            Event::StreamStart | Event::Nothing => continue,
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                doc_index += 1;
                current = None;
                continue;
            }
            Event::DocumentEnd => {
                if let Some(root) = current.take() {
                    documents.push(Document {
                        index: doc_index,
                        root,
                    });
                }
                continue;
            }
            Event::Alias(_) => {
                // The parser only gives the anchor id; the source text at the
                // span holds the name.
                let name = alias_name(src, &span);
                return fail(documents, doc_index, at, ErrorKind::Alias(name));
            }
            Event::Scalar(text, style, _anchor, tag) => {
                let forced = match check_tag(tag.as_deref()) {
                    Ok(f) => f,
                    Err(kind) => return fail(documents, doc_index, at, kind),
                };
                Node {
                    value: Value::Scalar(Scalar {
                        text: text.into_owned(),
                        forced_string: forced || style != ScalarStyle::Plain,
                    }),
                    at,
                }
            }
            Event::SequenceStart(_, ref tag) | Event::MappingStart(_, ref tag) => {
                if let Err(kind) = check_tag(tag.as_deref()) {
                    return fail(documents, doc_index, at, kind);
                }
                if stack.len() >= MAX_DEPTH {
                    return fail(documents, doc_index, at, ErrorKind::TooDeep(MAX_DEPTH));
                }
                if matches!(event, Event::SequenceStart(..)) {
                    stack.push(Frame::Seq(at, Vec::new()));
                } else {
                    stack.push(Frame::Map(at, Vec::new(), None));
                }
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(start, items)) => Node {
                    value: Value::Seq(items),
                    at: start,
                },
                Some(Frame::Map(start, entries, _)) => Node {
                    value: Value::Map(entries),
                    at: start,
                },
                // The parser guarantees balanced events; treat a violation as
                // a syntax error rather than trusting it.
                None => {
                    return fail(
                        documents,
                        doc_index,
                        at,
                        ErrorKind::Syntax("unbalanced collection end".to_owned()),
                    );
                }
            },
        };
        match stack.last_mut() {
            None => current = Some(complete),
            Some(Frame::Seq(_, items)) => items.push(complete),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => *pending = Some(complete),
                Some(key) => entries.push((key, complete)),
            },
        }
    }
    Stream {
        documents,
        error: None,
    }
}

fn alias_name(src: &str, span: &Span) -> String {
    let start = span.start.index();
    let end = span.end.index().max(start);
    // Marker indices count characters, not bytes.
    let text: String = src
        .chars()
        .skip(start)
        .take((end - start).min(64))
        .collect();
    text.trim_start_matches('*').trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: &str) -> ScalarType {
        resolve_plain(t)
    }

    #[test]
    fn core_schema_resolution() {
        assert_eq!(scalar(""), ScalarType::Null);
        assert_eq!(scalar("~"), ScalarType::Null);
        assert_eq!(scalar("true"), ScalarType::Bool);
        assert_eq!(scalar("8080"), ScalarType::Int);
        assert_eq!(scalar("-3"), ScalarType::Int);
        assert_eq!(scalar("0x1F"), ScalarType::Int);
        assert_eq!(scalar("0o17"), ScalarType::Int);
        assert_eq!(scalar("1.5"), ScalarType::Float);
        assert_eq!(scalar("1e3"), ScalarType::Float);
        assert_eq!(scalar(".5"), ScalarType::Float);
        assert_eq!(scalar(".nan"), ScalarType::Float);
        assert_eq!(scalar("."), ScalarType::Str);
        assert_eq!(scalar("1.2.3.4"), ScalarType::Str);
        assert_eq!(scalar("STRICT"), ScalarType::Str);
        assert_eq!(scalar("yes"), ScalarType::Str);
        assert_eq!(scalar("0x"), ScalarType::Str);
        assert_eq!(scalar("e5"), ScalarType::Str);
    }

    #[test]
    fn int_values() {
        let s = |t: &str| Scalar {
            text: t.to_owned(),
            forced_string: false,
        };
        assert_eq!(s("8080").as_int(), Some(8080));
        assert_eq!(s("-7").as_int(), Some(-7));
        assert_eq!(s("0x10").as_int(), Some(16));
        assert_eq!(s("99999999999999999999").as_int(), None);
        assert_eq!(s("abc").as_int(), None);
    }

    #[test]
    fn documents_are_counted_including_empty_ones() {
        let s = parse_stream("---\n# nothing\n---\na: 1\n---\n---\nb: [x]\n");
        assert!(s.error.is_none());
        let idx: Vec<usize> = s
            .documents
            .iter()
            .filter(|d| !d.root.is_null())
            .map(|d| d.index)
            .collect();
        assert_eq!(idx, vec![2, 4]);
        assert_eq!(s.documents[1].root.at.line, 4);
    }

    #[test]
    fn quoted_scalars_are_strings() {
        let s = parse_stream("a: \"8080\"\nb: 8080\nc: !!str 8080\n");
        let Value::Map(entries) = &s.documents[0].root.value else {
            panic!("not a map");
        };
        let types: Vec<&str> = entries.iter().map(|(_, v)| v.type_name()).collect();
        assert_eq!(types, vec!["a string", "an integer", "a string"]);
    }

    #[test]
    fn aliases_tags_depth_and_syntax_are_errors() {
        let alias = parse_stream("a: &x [1]\nb: *x\n");
        let e = alias.error.expect("alias must fail");
        assert_eq!(e.kind, ErrorKind::Alias("x".to_owned()));
        assert_eq!((e.at.line, e.document), (2, Some(1)));

        let tag = parse_stream("a: !custom 1\n").error.expect("tag must fail");
        assert!(matches!(tag.kind, ErrorKind::Tag(_)));

        // Block nesting, which the scanner itself does not limit.
        let deep: String = (0..100)
            .map(|i| format!("{}- \n", "  ".repeat(i)))
            .collect();
        let e = parse_stream(&deep).error.expect("depth must fail");
        assert_eq!(e.kind, ErrorKind::TooDeep(MAX_DEPTH));

        let e = parse_stream("a: 1\n---\nb: [1\n")
            .error
            .expect("syntax must fail");
        assert!(matches!(e.kind, ErrorKind::Syntax(_)));
        assert_eq!(e.document, Some(2));
    }
}
