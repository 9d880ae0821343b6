//! A JSON value and its compact serializer, written by hand so that the server depends on
//! nothing but std and libc.
//!
//! Objects keep their insertion order. Strings are escaped as RFC 8259 requires: `"`, `\`
//! and every control character; everything else is written as UTF-8.

use std::fmt::{self, Write};

/// A JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An unsigned integer (pids, ids and byte counts).
    UInt(u64),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object, in insertion order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// A string, or `null` when `None`.
    pub fn opt_str(s: Option<impl Into<String>>) -> Json {
        s.map_or(Json::Null, |s| Json::Str(s.into()))
    }

    /// An object from `(key, value)` pairs.
    pub fn obj<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Obj(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// An array of strings.
    pub fn strs<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Json {
        Json::Arr(items.into_iter().map(Json::str).collect())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::UInt(n) => write!(f, "{n}"),
            Json::Str(s) => write_string(f, s),
            Json::Arr(items) => {
                f.write_char('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_char(']')
            }
            Json::Obj(pairs) => {
                f.write_char('{')?;
                for (i, (key, value)) in pairs.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write_string(f, key)?;
                    write!(f, ":{value}")?;
                }
                f.write_char('}')
            }
        }
    }
}

/// Writes `s` as a quoted, escaped JSON string.
fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\u{08}' => f.write_str("\\b")?,
            '\u{0c}' => f.write_str("\\f")?,
            c if u32::from(c) < 0x20 || c == '\u{7f}' => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every character JSON forbids raw in a string is escaped, and the rest is kept as is.
    #[test]
    fn strings_are_escaped() {
        let s = Json::str("a\"b\\c\nd\re\tf\u{1}g\u{7f}h\u{8}\u{c}é☃");
        assert_eq!(s.to_string(), r#""a\"b\\c\nd\re\tf\u0001g\u007fh\b\fé☃""#);
    }

    // Nested values serialize compactly, objects in insertion order, keys escaped too.
    #[test]
    fn nested_values_serialize_in_order() {
        let v = Json::obj([
            ("z", Json::UInt(1)),
            (
                "a\"",
                Json::Arr(vec![Json::Null, Json::Bool(true), Json::UInt(7)]),
            ),
            ("o", Json::obj::<&str>([])),
            ("s", Json::opt_str(None::<String>)),
        ]);
        assert_eq!(
            v.to_string(),
            r#"{"z":1,"a\"":[null,true,7],"o":{},"s":null}"#
        );
    }
}
