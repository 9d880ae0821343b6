//! Field paths and the problems found at them.
//!
//! A [`FieldPath`] names a place in a manifest the way Knative's `apis.FieldError` does:
//! `spec.template.spec.containers[0].ports[0].name`. A [`Problem`] is one thing wrong at one
//! path, optionally with the line and column it came from; [`Problems`] collects every problem
//! of a document so a user sees them all at once.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One step in a path: a map key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path from the root of a document to one of its nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The root of a document.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Parses a dotted path such as `spec.template.spec.containers[0].image`. Keys may not
    /// contain `.` or `[` in this form; use [`FieldPath::key`] to build such paths.
    pub fn parse(dotted: &str) -> Self {
        let mut segments = Vec::new();
        for part in dotted.split('.').filter(|p| !p.is_empty()) {
            let (name, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !name.is_empty() {
                segments.push(Segment::Key(name.to_owned()));
            }
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                match stripped[..end].parse::<usize>() {
                    Ok(i) => segments.push(Segment::Index(i)),
                    Err(_) => segments.push(Segment::Key(stripped[..end].to_owned())),
                }
                rest = &stripped[end + 1..];
            }
        }
        Self(segments)
    }

    /// This path extended by a map key.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.into()));
        Self(segments)
    }

    /// This path extended by a sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        Self(segments)
    }

    /// The segments, root first.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// The path with its last segment removed (the root stays the root).
    pub fn parent(&self) -> Self {
        let mut segments = self.0.clone();
        segments.pop();
        Self(segments)
    }

    /// The last key of the path, if the path ends with a key.
    pub fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// The path with every index replaced by `[]`, used to look up rules that apply to every
    /// element of a list: `spec.template.spec.containers[].ports[]`.
    pub fn pattern(&self) -> String {
        let mut out = String::new();
        for segment in &self.0 {
            match segment {
                Segment::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Segment::Index(_) => out.push_str("[]"),
            }
        }
        out
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<Segment>> for FieldPath {
    fn from(segments: Vec<Segment>) -> Self {
        Self(segments)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        let mut first = true;
        for segment in &self.0 {
            match segment {
                Segment::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// How a problem should be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProblemKind {
    /// The document is not well-formed YAML or JSON.
    Syntax,
    /// A field no Knative or skiff type has.
    UnknownField,
    /// A field of Knative or Kubernetes that skiff does not support yet.
    NotSupported,
    /// A field Knative itself does not allow in a Service.
    NotAllowed,
    /// A required field is missing.
    Required,
    /// A field has the wrong type or an invalid value.
    Invalid,
    /// The value conflicts with stored state (a missing revision, a name already taken).
    Conflict,
}

/// One problem at one place of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// The field path, e.g. `spec.template.spec.containers[0].image`; empty for the whole
    /// document.
    pub path: String,
    /// What is wrong, written for the user.
    pub message: String,
    /// The kind of problem.
    pub kind: ProblemKind,
    /// 1-based line in the input, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// 1-based column in the input, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    /// 0-based index of the document in a multi-document input, when there are several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let position = match (self.line, self.column) {
            (Some(l), Some(c)) => format!("line {l}, column {c}"),
            (Some(l), None) => format!("line {l}"),
            _ => String::new(),
        };
        match (self.path.is_empty(), position.is_empty()) {
            (true, true) => f.write_str(&self.message),
            (true, false) => write!(f, "{position}: {}", self.message),
            (false, true) => write!(f, "{}: {}", self.path, self.message),
            (false, false) => write!(f, "{} ({position}): {}", self.path, self.message),
        }
    }
}

/// Every problem found in one document, in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    items: Vec<(FieldPath, ProblemKind, String)>,
}

impl Problems {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem.
    pub fn push(&mut self, path: &FieldPath, kind: ProblemKind, message: impl Into<String>) {
        self.items.push((path.clone(), kind, message.into()));
    }

    /// Records an invalid value.
    pub fn invalid(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.push(path, ProblemKind::Invalid, message);
    }

    /// Records a missing required field.
    pub fn required(&mut self, path: &FieldPath) {
        self.push(path, ProblemKind::Required, "required");
    }

    /// Records a field skiff does not support yet.
    pub fn not_supported(&mut self, path: &FieldPath, what: impl fmt::Display) {
        self.push(
            path,
            ProblemKind::NotSupported,
            format!("not supported by skiff yet ({what})"),
        );
    }

    /// Whether no problem was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many problems were recorded.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Appends every problem of `other`.
    pub fn extend(&mut self, other: Problems) {
        self.items.extend(other.items);
    }

    /// The recorded problems with their raw paths.
    pub fn iter(&self) -> impl Iterator<Item = (&FieldPath, ProblemKind, &str)> {
        self.items.iter().map(|(p, k, m)| (p, *k, m.as_str()))
    }

    /// Turns the problems into user-facing [`Problem`]s, placing each at a line and column
    /// through `locate` when it knows the path.
    pub fn into_problems(
        self,
        locate: impl Fn(&FieldPath, ProblemKind) -> Option<(u64, u64)>,
    ) -> Vec<Problem> {
        self.items
            .into_iter()
            .map(|(path, kind, message)| {
                let position = locate(&path, kind);
                Problem {
                    path: if path.is_root() {
                        String::new()
                    } else {
                        path.to_string()
                    },
                    message,
                    kind,
                    line: position.map(|p| p.0),
                    column: position.map(|p| p.1),
                    document: None,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths print the way Knative prints them, and parse back.
    #[test]
    fn paths_print_like_knative() {
        let p = FieldPath::root()
            .key("spec")
            .key("template")
            .key("spec")
            .key("containers")
            .index(0)
            .key("ports")
            .index(1)
            .key("name");
        assert_eq!(
            p.to_string(),
            "spec.template.spec.containers[0].ports[1].name"
        );
        assert_eq!(FieldPath::parse(&p.to_string()), p);
        assert_eq!(p.pattern(), "spec.template.spec.containers[].ports[].name");
        assert_eq!(p.last_key(), Some("name"));
    }

    /// A problem prints its path, position and message on one line.
    #[test]
    fn problem_display_has_position() {
        let mut problems = Problems::new();
        problems.invalid(&FieldPath::parse("spec.x"), "must be positive");
        let out = problems.into_problems(|_, _| Some((14, 17)));
        assert_eq!(
            out[0].to_string(),
            "spec.x (line 14, column 17): must be positive"
        );
    }
}
