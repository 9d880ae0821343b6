//! A CloudEvent (spec 1.0) in memory: its attributes, the rules they follow, and the JSON form
//! skiff stores it in.
//!
//! # Attributes
//! The required context attributes are `id`, `source`, `specversion` (always `1.0`) and `type`;
//! the optional ones `datacontenttype`, `dataschema`, `subject` and `time`. Every other
//! attribute is an extension, kept as a string (a JSON boolean or integer extension becomes
//! `"true"` or `"42"`). Attribute names are lower-case ASCII letters and digits only; values
//! must not contain control characters; `id`, `source`, `type` and any optional attribute that
//! is present must be non-empty; `time` must be an RFC 3339 timestamp.
//!
//! # Storage form
//! [`CloudEvent`]'s serde form is a valid `application/cloudevents+json` document whose data,
//! when there is any, is always `data_base64`:
//! ```json
//! {"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain",
//!  "myext":"v","data_base64":"aGk="}
//! ```
//! Always base64 keeps the bytes exact whatever the content type (no JSON re-encoding, no
//! guessing whether bytes are text) and the document readable by any CloudEvents tool.
//! Deserializing validates the event as parsing does.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The only CloudEvents spec version skiff accepts.
pub const SPEC_VERSION: &str = "1.0";

/// The context attributes of spec 1.0 (required ones first), in the spec's order.
pub const CONTEXT_ATTRIBUTES: [&str; 8] = [
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// Base64 as CloudEvents uses it: the standard alphabet, padded on output; padding optional
/// on input.
pub(crate) const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// One CloudEvent, spec version 1.0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "StoredEvent", try_from = "StoredEvent")]
pub struct CloudEvent {
    /// Identifies the event; with `source`, unique per distinct event (receivers dedupe on the
    /// pair).
    pub id: String,
    /// Where the event happened, a URI-reference.
    pub source: String,
    /// The spec version: always [`SPEC_VERSION`].
    pub specversion: String,
    /// The kind of event, e.g. `dev.knative.sources.ping`.
    pub type_: String,
    /// The media type of `data`, e.g. `application/json`.
    pub datacontenttype: Option<String>,
    /// A URI of the schema `data` adheres to.
    pub dataschema: Option<String>,
    /// What the event is about within `source`.
    pub subject: Option<String>,
    /// When the event happened, RFC 3339, kept as written.
    pub time: Option<String>,
    /// Extension attributes by name, values as strings.
    pub extensions: BTreeMap<String, String>,
    /// The payload, as bytes.
    pub data: Option<Bytes>,
}

/// Why attributes do not make a valid CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Required attributes are absent.
    #[error("{}", missing_message(.names))]
    Missing {
        /// The absent attributes, in the spec's order.
        names: Vec<&'static str>,
    },
    /// A spec version other than 1.0.
    #[error("unsupported specversion `{found}`: only `1.0` is supported")]
    SpecVersion {
        /// The version given.
        found: String,
    },
    /// An attribute name outside a-z0-9.
    #[error(
        "invalid attribute name `{name}`: CloudEvents attribute names are lower-case letters a-z and digits 0-9 only"
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// `data` used as an attribute name.
    #[error("`{name}` is reserved for the event's data and cannot be an attribute")]
    Reserved {
        /// The name given.
        name: String,
    },
    /// The same attribute given twice.
    #[error("attribute `{name}` is given more than once")]
    Duplicate {
        /// The attribute.
        name: String,
    },
    /// An attribute that must be non-empty is empty.
    #[error("attribute `{name}` is empty; it must be a non-empty string")]
    Empty {
        /// The attribute.
        name: String,
    },
    /// An attribute's value is not acceptable.
    #[error("attribute `{name}`: {reason}")]
    InvalidValue {
        /// The attribute.
        name: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// `data_base64` does not decode.
    #[error("`data_base64` is not valid base64: {reason}")]
    InvalidBase64 {
        /// The decoder's complaint.
        reason: String,
    },
}

fn missing_message(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [one] => format!("missing required attribute {one}"),
        [init @ .., last] => format!("missing required attributes {} and {last}", init.join(", ")),
        [] => "missing required attributes".to_owned(),
    }
}

/// Whether `name` is a valid CloudEvents attribute name: one or more of a-z and 0-9.
///
/// The spec recommends at most 20 characters; longer names are accepted.
pub fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl CloudEvent {
    /// An event with the required attributes and nothing else.
    pub fn new(id: impl Into<String>, source: impl Into<String>, type_: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            source: source.into(),
            specversion: SPEC_VERSION.to_owned(),
            type_: type_.into(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            extensions: BTreeMap::new(),
            data: None,
        }
    }

    /// The same event carrying `data` of media type `content_type`.
    pub fn with_data(mut self, content_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        self.datacontenttype = Some(content_type.into());
        self.data = Some(data.into());
        self
    }

    /// The value of a context or extension attribute, `None` when the event does not have it.
    /// This is what Trigger filters look at.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        match name {
            "id" => Some(&self.id),
            "source" => Some(&self.source),
            "specversion" => Some(&self.specversion),
            "type" => Some(&self.type_),
            "datacontenttype" => self.datacontenttype.as_deref(),
            "dataschema" => self.dataschema.as_deref(),
            "subject" => self.subject.as_deref(),
            "time" => self.time.as_deref(),
            _ => self.extensions.get(name).map(String::as_str),
        }
    }

    /// Every attribute the event has, context attributes first (in the spec's order), then
    /// extensions by name.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        CONTEXT_ATTRIBUTES
            .iter()
            .filter_map(|name| self.attribute(name).map(|value| (*name, value)))
            .chain(
                self.extensions
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            )
    }

    /// Builds and validates an event from attribute name/value pairs (context attributes and
    /// extensions alike) and its data. Used by every HTTP mode, so they agree on what is wrong.
    pub fn from_attributes<I>(attributes: I, data: Option<Bytes>) -> Result<Self, EventError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut seen = BTreeSet::new();
        let mut id = None;
        let mut source = None;
        let mut specversion = None;
        let mut type_ = None;
        let mut event = Self::new("", "", "");
        for (name, value) in attributes {
            check_name(&name)?;
            if !seen.insert(name.clone()) {
                return Err(EventError::Duplicate { name });
            }
            match name.as_str() {
                "id" => id = Some(value),
                "source" => source = Some(value),
                "specversion" => specversion = Some(value),
                "type" => type_ = Some(value),
                "datacontenttype" => event.datacontenttype = Some(value),
                "dataschema" => event.dataschema = Some(value),
                "subject" => event.subject = Some(value),
                "time" => event.time = Some(value),
                _ => {
                    event.extensions.insert(name, value);
                }
            }
        }
        if let Some(found) = &specversion
            && found != SPEC_VERSION
        {
            return Err(EventError::SpecVersion {
                found: found.clone(),
            });
        }
        let missing: Vec<&'static str> = [
            ("id", id.is_none()),
            ("source", source.is_none()),
            ("specversion", specversion.is_none()),
            ("type", type_.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        if !missing.is_empty() {
            return Err(EventError::Missing { names: missing });
        }
        event.id = id.unwrap_or_default();
        event.source = source.unwrap_or_default();
        event.type_ = type_.unwrap_or_default();
        event.data = data;
        event.validate()?;
        Ok(event)
    }

    /// Checks every rule of the module docs: spec version, names, non-empty values, no control
    /// characters, `time` in RFC 3339. Parsed and deserialized events are always valid; this is
    /// for events built field by field.
    pub fn validate(&self) -> Result<(), EventError> {
        if self.specversion != SPEC_VERSION {
            return Err(EventError::SpecVersion {
                found: self.specversion.clone(),
            });
        }
        for name in self.extensions.keys() {
            check_name(name)?;
            if CONTEXT_ATTRIBUTES.contains(&name.as_str()) {
                return Err(EventError::Duplicate { name: name.clone() });
            }
        }
        for (name, value) in self.attributes() {
            if value.is_empty() && !self.extensions.contains_key(name) {
                return Err(EventError::Empty {
                    name: name.to_owned(),
                });
            }
            if let Some(c) = value.chars().find(|c| c.is_control()) {
                return Err(EventError::InvalidValue {
                    name: name.to_owned(),
                    reason: format!(
                        "contains the control character U+{:04X}, which CloudEvents forbids",
                        u32::from(c)
                    ),
                });
            }
        }
        if let Some(time) = &self.time
            && !is_rfc3339(time)
        {
            return Err(EventError::InvalidValue {
                name: "time".to_owned(),
                reason: format!(
                    "`{time}` is not an RFC 3339 timestamp (e.g. 2024-05-01T12:00:00Z or 2024-05-01T14:00:00.5+02:00)"
                ),
            });
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), EventError> {
    if name == "data" {
        return Err(EventError::Reserved {
            name: name.to_owned(),
        });
    }
    if !is_valid_attribute_name(name) {
        return Err(EventError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, and a real instant.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let digits = |from: usize, to: usize| b[from..to].iter().all(u8::is_ascii_digit);
    let shape = digits(0, 4)
        && b[4] == b'-'
        && digits(5, 7)
        && b[7] == b'-'
        && digits(8, 10)
        && matches!(b[10], b'T' | b't')
        && digits(11, 13)
        && b[13] == b':'
        && digits(14, 16)
        && b[16] == b':'
        && digits(17, 19);
    if !shape {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    };
    offset && s.to_ascii_uppercase().parse::<jiff::Timestamp>().is_ok()
}

/// The serde form (see the module docs).
#[derive(Serialize, Deserialize)]
struct StoredEvent {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dataschema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(flatten)]
    extensions: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

impl From<CloudEvent> for StoredEvent {
    fn from(e: CloudEvent) -> Self {
        Self {
            specversion: e.specversion,
            id: e.id,
            source: e.source,
            type_: e.type_,
            datacontenttype: e.datacontenttype,
            dataschema: e.dataschema,
            subject: e.subject,
            time: e.time,
            extensions: e.extensions,
            data_base64: e.data.map(|d| BASE64.encode(d)),
        }
    }
}

impl TryFrom<StoredEvent> for CloudEvent {
    type Error = EventError;

    fn try_from(s: StoredEvent) -> Result<Self, EventError> {
        let data = s
            .data_base64
            .map(|b| {
                BASE64
                    .decode(b)
                    .map(Bytes::from)
                    .map_err(|e| EventError::InvalidBase64 {
                        reason: e.to_string(),
                    })
            })
            .transpose()?;
        let event = Self {
            id: s.id,
            source: s.source,
            specversion: s.specversion,
            type_: s.type_,
            datacontenttype: s.datacontenttype,
            dataschema: s.dataschema,
            subject: s.subject,
            time: s.time,
            extensions: s.extensions,
            data,
        };
        event.validate()?;
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn minimal() -> Vec<(String, String)> {
        attrs(&[
            ("id", "1"),
            ("source", "/s"),
            ("specversion", "1.0"),
            ("type", "t"),
        ])
    }

    #[test]
    fn attribute_reads_context_and_extensions() {
        let mut e = CloudEvent::new("1", "/s", "t");
        e.subject = Some("sub".into());
        e.extensions.insert("myext".into(), "v".into());
        assert_eq!(e.attribute("id"), Some("1"));
        assert_eq!(e.attribute("type"), Some("t"));
        assert_eq!(e.attribute("specversion"), Some("1.0"));
        assert_eq!(e.attribute("subject"), Some("sub"));
        assert_eq!(e.attribute("time"), None);
        assert_eq!(e.attribute("myext"), Some("v"));
        assert_eq!(e.attribute("other"), None);
        let all: Vec<_> = e.attributes().collect();
        assert_eq!(
            all,
            [
                ("id", "1"),
                ("source", "/s"),
                ("specversion", "1.0"),
                ("type", "t"),
                ("subject", "sub"),
                ("myext", "v")
            ]
        );
    }

    #[test]
    fn from_attributes_routes_and_validates() {
        let mut a = minimal();
        a.extend(attrs(&[
            ("time", "2024-05-01T12:00:00Z"),
            ("traceparent", "x"),
        ]));
        let e = CloudEvent::from_attributes(a, Some(Bytes::from_static(b"hi"))).expect("valid");
        assert_eq!(e.time.as_deref(), Some("2024-05-01T12:00:00Z"));
        assert_eq!(e.extensions["traceparent"], "x");
        assert_eq!(e.data.as_deref(), Some(&b"hi"[..]));
    }

    #[test]
    fn missing_attributes_are_named() {
        let e =
            CloudEvent::from_attributes(attrs(&[("source", "/s"), ("specversion", "1.0")]), None)
                .expect_err("invalid");
        assert_eq!(e.to_string(), "missing required attributes `id` and `type`");
        let e = CloudEvent::from_attributes(
            attrs(&[("source", "/s"), ("specversion", "1.0"), ("type", "t")]),
            None,
        )
        .expect_err("invalid");
        assert_eq!(e.to_string(), "missing required attribute `id`");
        let e = CloudEvent::from_attributes(Vec::new(), None).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "missing required attributes `id`, `source`, `specversion` and `type`"
        );
    }

    #[test]
    fn spec_version_must_be_1_0() {
        let mut a = attrs(&[("id", "1"), ("source", "/s"), ("type", "t")]);
        a.push(("specversion".into(), "0.3".into()));
        let e = CloudEvent::from_attributes(a, None).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "unsupported specversion `0.3`: only `1.0` is supported"
        );
        let mut e = CloudEvent::new("1", "/s", "t");
        e.specversion = "2.0".into();
        assert!(matches!(e.validate(), Err(EventError::SpecVersion { .. })));
    }

    #[test]
    fn names_must_be_lowercase_alphanumeric() {
        for bad in ["myExt", "my-ext", "my_ext", "", "ü"] {
            let mut a = minimal();
            a.push((bad.into(), "v".into()));
            let e = CloudEvent::from_attributes(a, None).expect_err(bad);
            assert_eq!(e, EventError::InvalidName { name: bad.into() }, "{bad}");
        }
        assert!(is_valid_attribute_name("a1b2"));
        assert!(is_valid_attribute_name("1abc"));
        let mut a = minimal();
        a.push(("data".into(), "v".into()));
        assert!(matches!(
            CloudEvent::from_attributes(a, None),
            Err(EventError::Reserved { .. })
        ));
        assert!(
            EventError::InvalidName {
                name: "my-ext".into()
            }
            .to_string()
            .contains("lower-case letters a-z and digits 0-9")
        );
    }

    #[test]
    fn duplicates_and_empty_values_are_refused() {
        let mut a = minimal();
        a.push(("id".into(), "2".into()));
        assert_eq!(
            CloudEvent::from_attributes(a, None),
            Err(EventError::Duplicate { name: "id".into() })
        );
        let a = attrs(&[
            ("id", ""),
            ("source", "/s"),
            ("specversion", "1.0"),
            ("type", "t"),
        ]);
        assert_eq!(
            CloudEvent::from_attributes(a, None)
                .expect_err("empty")
                .to_string(),
            "attribute `id` is empty; it must be a non-empty string"
        );
        let mut a = minimal();
        a.push(("subject".into(), String::new()));
        assert!(matches!(
            CloudEvent::from_attributes(a, None),
            Err(EventError::Empty { .. })
        ));
        // An empty extension value is allowed.
        let mut a = minimal();
        a.push(("myext".into(), String::new()));
        assert!(CloudEvent::from_attributes(a, None).is_ok());
        let mut a = minimal();
        a.push(("subject".into(), "a\nb".into()));
        assert!(
            CloudEvent::from_attributes(a, None)
                .expect_err("control")
                .to_string()
                .contains("U+000A")
        );
    }

    #[test]
    fn time_must_be_rfc3339() {
        for good in [
            "2024-05-01T12:00:00Z",
            "2024-05-01t12:00:00z",
            "2024-05-01T12:00:00.123456789+02:00",
            "1985-04-12T23:20:50.52-05:00",
        ] {
            assert!(is_rfc3339(good), "{good}");
        }
        for bad in [
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00Z",
            "2024-13-01T12:00:00Z",
            "2024-02-30T12:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00Z[UTC]",
            "yesterday",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
        let mut a = minimal();
        a.push(("time".into(), "yesterday".into()));
        let e = CloudEvent::from_attributes(a, None).expect_err("bad time");
        assert!(
            e.to_string()
                .starts_with("attribute `time`: `yesterday` is not an RFC 3339")
        );
    }

    #[test]
    fn storage_form_is_structured_json_with_base64_data() {
        let mut e = CloudEvent::new("1", "/s", "t").with_data("text/plain", &b"hi"[..]);
        e.extensions.insert("myext".into(), "v".into());
        e.time = Some("2024-05-01T12:00:00Z".into());
        let json = serde_json::to_string(&e).expect("serializes");
        assert_eq!(
            json,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","time":"2024-05-01T12:00:00Z","myext":"v","data_base64":"aGk="}"#
        );
        let back: CloudEvent = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, e);

        let binary = CloudEvent::new("2", "/s", "t")
            .with_data("application/octet-stream", vec![0u8, 255, 128]);
        let back: CloudEvent =
            serde_json::from_str(&serde_json::to_string(&binary).expect("ser")).expect("de");
        assert_eq!(back, binary);

        let no_data = CloudEvent::new("3", "/s", "t");
        let json = serde_json::to_string(&no_data).expect("ser");
        assert_eq!(
            json,
            r#"{"specversion":"1.0","id":"3","source":"/s","type":"t"}"#
        );
    }

    #[test]
    fn storage_form_is_validated_on_the_way_in() {
        let e = serde_json::from_str::<CloudEvent>(
            r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
        )
        .expect_err("old version");
        assert!(e.to_string().contains("only `1.0` is supported"), "{e}");
        let e = serde_json::from_str::<CloudEvent>(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"!!"}"#,
        )
        .expect_err("bad base64");
        assert!(
            e.to_string().contains("`data_base64` is not valid base64"),
            "{e}"
        );
        let e = serde_json::from_str::<CloudEvent>(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad":"x"}"#,
        )
        .expect_err("bad name");
        assert!(
            e.to_string().contains("invalid attribute name `Bad`"),
            "{e}"
        );
    }
}
