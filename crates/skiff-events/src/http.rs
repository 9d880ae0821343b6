//! The CloudEvents HTTP protocol binding 1.0.2, both ways, written by hand.
//!
//! # Receiving
//! [`parse_request`] turns a request's headers and body into events, in whichever of the three
//! modes the sender chose:
//! - **binary**: one event; every `ce-<name>` header is an attribute (its value
//!   percent-decoded, then UTF-8), `Content-Type` is `datacontenttype` (it wins over a stray
//!   `ce-datacontenttype`), the body is the data (none when empty);
//! - **structured** (`Content-Type: application/cloudevents+json`): one event as a JSON object,
//!   its data in `data` or `data_base64`;
//! - **batched** (`Content-Type: application/cloudevents-batch+json`): a JSON array of such
//!   objects; `[]` is zero events.
//!
//! The Content-Type decides first, so a structured request's stray `ce-` headers are ignored;
//! with neither a CloudEvents Content-Type nor a `ce-` header, the request is not a CloudEvent
//! and [`ParseError::NotACloudEvent`] says how to send one. Each error names what is wrong:
//! which required attributes are missing (and in a batch, which element), a bad spec version
//! or attribute name, both `data` and `data_base64`, malformed JSON with serde's line and
//! column.
//!
//! In structured mode, `data` is kept as the JSON text it was (whitespace around it trimmed)
//! when `datacontenttype` is JSON (`application/json`, `text/json`, `*/*+json`) or absent;
//! with any other content type a JSON string is the data's text, anything else its JSON text.
//! A JSON `null` attribute or data is absent. Context attributes must be JSON strings;
//! extensions may also be integers or booleans, kept as their JSON text (`42`, `true`).
//!
//! The body size is the caller's to enforce, before reading it all: [`MAX_EVENT_BYTES`].
//!
//! # Sending
//! [`to_binary`] gives the headers and body to deliver an event in binary mode, header values
//! percent-encoded as the binding requires (space, `"`, `%`, and everything outside printable
//! ASCII, as UTF-8 bytes). [`to_structured_json`] gives the structured form, for display or
//! for senders that want it: JSON data as JSON, text (UTF-8 without control characters other
//! than tab and line breaks) of a non-JSON content type as a string, everything else (binary,
//! or JSON content types whose bytes are not JSON) as `data_base64`; parsing it gives back the
//! same event, byte for byte.
//!
//! # Replies
//! [`reply_from_response`] reads a sink's 200 response: an event in binary or structured mode
//! is a reply; a response without one is no reply; a malformed one is an error (Knative counts
//! it as a failed delivery).
//!
//! # Why not `cloudevents-sdk`
//! The Rust SDK 0.9 (self-described WIP) does not percent-decode or percent-encode header
//! values, has no batched mode in its `http` binding, reports errors without saying which
//! batch element or JSON line, and always depends on chrono, url and snafu. The binding is
//! small enough to own; the SDK is a dev-dependency that checks interoperability both ways.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::value::RawValue;

use base64::Engine as _;

use crate::event::{BASE64, CloudEvent, EventError};

/// The largest request body an event endpoint should read (1 MiB, as OpenFaaS and Knative's
/// brokers use); enforcing it is the caller's job.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The media type of a structured-mode event in JSON.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The media type of a batch of events in JSON.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

const HEADER_PREFIX: &str = "ce-";

/// How a request carries its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Attributes in `ce-` headers, the body is the data.
    Binary,
    /// One event as a JSON object (`application/cloudevents+json`).
    Structured,
    /// A JSON array of events (`application/cloudevents-batch+json`).
    Batched,
}

/// Why a request or response does not carry valid CloudEvents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Neither a CloudEvents Content-Type nor a `ce-` header.
    #[error(
        "not a CloudEvent: {}; send it in one of the three CloudEvents HTTP modes: binary (headers `ce-id`, `ce-source`, `ce-specversion: 1.0` and `ce-type`, the body is the data), structured (`Content-Type: application/cloudevents+json`, the whole event as one JSON object) or batched (`Content-Type: application/cloudevents-batch+json`, a JSON array of events)",
        not_an_event_because(.content_type.as_deref())
    )]
    NotACloudEvent {
        /// The request's Content-Type, if it had one.
        content_type: Option<String>,
    },
    /// A CloudEvents Content-Type in a format other than JSON.
    #[error(
        "unsupported CloudEvents format `{content_type}`: only JSON is accepted (`application/cloudevents+json`, `application/cloudevents-batch+json`)"
    )]
    UnsupportedFormat {
        /// The media type given.
        content_type: String,
    },
    /// A structured or batched request without a body.
    #[error("the body is empty: {}", empty_body_hint(*.mode))]
    EmptyBody {
        /// The mode the Content-Type announced.
        mode: Mode,
    },
    /// The body is not JSON.
    #[error("malformed JSON at line {line}, column {column}: {reason}")]
    Json {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's complaint.
        reason: String,
    },
    /// A structured event that is valid JSON but not an object.
    #[error("a structured CloudEvent must be a JSON object, not {found}{}", if *.found == "an array" { " (send an array of events as `Content-Type: application/cloudevents-batch+json`)" } else { "" })]
    NotAnObject {
        /// What it is instead, e.g. `an array`.
        found: &'static str,
    },
    /// A batch that is valid JSON but not an array.
    #[error("a batch must be a JSON array of events, not {found}")]
    NotAnArray {
        /// What it is instead, e.g. `an object`.
        found: &'static str,
    },
    /// Both `data` and `data_base64`.
    #[error("both `data` and `data_base64` are set; an event carries at most one of them")]
    BothData,
    /// One element of a batch is wrong.
    #[error("event {index} of {total}: {source}")]
    InBatch {
        /// 1-based position of the element.
        index: usize,
        /// How many elements the batch has.
        total: usize,
        /// What is wrong with it.
        source: Box<ParseError>,
    },
    /// A reply carrying a batch.
    #[error("a reply must be a single event, not a batch (`application/cloudevents-batch+json`)")]
    ReplyIsBatch,
    /// The attributes do not make a valid event.
    #[error(transparent)]
    Event(#[from] EventError),
}

fn not_an_event_because(content_type: Option<&str>) -> String {
    match content_type {
        None => "no `ce-` headers and no Content-Type".to_owned(),
        Some(ct) => {
            format!("no `ce-` headers and Content-Type `{ct}` is not a CloudEvents format")
        }
    }
}

fn empty_body_hint(mode: Mode) -> &'static str {
    match mode {
        Mode::Batched => "a batch is a JSON array of events (`[]` for none)",
        Mode::Structured | Mode::Binary => "a structured CloudEvent is one JSON object",
    }
}

/// The mode a request's headers announce (see the module docs for the order of the checks).
pub fn mode(headers: &HeaderMap) -> Result<Mode, ParseError> {
    let content_type = headers.get(CONTENT_TYPE);
    let media = content_type.and_then(|v| v.to_str().ok()).map(media_type);
    match media.as_deref() {
        Some(STRUCTURED_CONTENT_TYPE) => Ok(Mode::Structured),
        Some(BATCH_CONTENT_TYPE) => Ok(Mode::Batched),
        Some(other) if other.starts_with("application/cloudevents") => {
            Err(ParseError::UnsupportedFormat {
                content_type: other.to_owned(),
            })
        }
        _ if headers
            .keys()
            .any(|k| k.as_str().starts_with(HEADER_PREFIX)) =>
        {
            Ok(Mode::Binary)
        }
        _ => Err(ParseError::NotACloudEvent {
            content_type: content_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        }),
    }
}

/// The events of an incoming request, in any of the three modes.
pub fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<Vec<CloudEvent>, ParseError> {
    match mode(headers)? {
        Mode::Binary => Ok(vec![parse_binary(headers, body)?]),
        Mode::Structured => Ok(vec![parse_structured(body)?]),
        Mode::Batched => parse_batch(body),
    }
}

/// The event of a sink's 200 response, `None` when the response carries none. Call it only
/// for a 200: a 202 never carries a reply.
pub fn reply_from_response(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<CloudEvent>, ParseError> {
    match mode(headers) {
        Err(ParseError::NotACloudEvent { .. }) => Ok(None),
        Err(e) => Err(e),
        Ok(Mode::Binary) => parse_binary(headers, body).map(Some),
        Ok(Mode::Structured) => parse_structured(body).map(Some),
        Ok(Mode::Batched) => Err(ParseError::ReplyIsBatch),
    }
}

/// A binary-mode event from its headers and body.
pub fn parse_binary(headers: &HeaderMap, body: &[u8]) -> Result<CloudEvent, ParseError> {
    let content_type = match headers.get(CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| EventError::InvalidValue {
                    name: "datacontenttype".to_owned(),
                    reason: "the Content-Type header is not printable ASCII".to_owned(),
                })?
                .to_owned(),
        ),
    };
    let mut attributes = Vec::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if attribute == "datacontenttype" && content_type.is_some() {
            continue;
        }
        let value =
            percent_decode(value.as_bytes()).map_err(|reason| EventError::InvalidValue {
                name: attribute.to_owned(),
                reason: format!("header `{name}` {reason}"),
            })?;
        attributes.push((attribute.to_owned(), value));
    }
    if let Some(content_type) = content_type {
        attributes.push(("datacontenttype".to_owned(), content_type));
    }
    let data = (!body.is_empty()).then(|| Bytes::copy_from_slice(body));
    Ok(CloudEvent::from_attributes(attributes, data)?)
}

/// A structured-mode event from its JSON body.
pub fn parse_structured(body: &[u8]) -> Result<CloudEvent, ParseError> {
    let document = json_document(body, Mode::Structured)?;
    structured_event(document)
}

/// The events of a batched-mode JSON body.
pub fn parse_batch(body: &[u8]) -> Result<Vec<CloudEvent>, ParseError> {
    let document = json_document(body, Mode::Batched)?;
    let found = json_kind(document);
    if found != "an array" {
        return Err(ParseError::NotAnArray { found });
    }
    let elements: Vec<&RawValue> = serde_json::from_str(document.get()).map_err(json_error)?;
    let total = elements.len();
    elements
        .into_iter()
        .enumerate()
        .map(|(i, element)| {
            structured_event(element).map_err(|e| ParseError::InBatch {
                index: i + 1,
                total,
                source: Box::new(e),
            })
        })
        .collect()
}

fn json_document(body: &[u8], mode: Mode) -> Result<&RawValue, ParseError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::EmptyBody { mode });
    }
    serde_json::from_slice(body).map_err(json_error)
}

fn json_error(e: serde_json::Error) -> ParseError {
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let suffix = format!(" at line {line} column {column}");
    let reason = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    ParseError::Json {
        line,
        column,
        reason,
    }
}

fn json_kind(value: &RawValue) -> &'static str {
    match value.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn is_null(value: &RawValue) -> bool {
    value.get() == "null"
}

fn structured_event(document: &RawValue) -> Result<CloudEvent, ParseError> {
    let found = json_kind(document);
    if found != "an object" {
        return Err(ParseError::NotAnObject { found });
    }
    let members: BTreeMap<String, &RawValue> =
        serde_json::from_str(document.get()).map_err(json_error)?;
    let mut attributes = Vec::new();
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in members {
        if is_null(value) {
            continue;
        }
        match name.as_str() {
            "data" => data = Some(value),
            "data_base64" => data_base64 = Some(value),
            _ => {
                let text = attribute_text(&name, value)?;
                attributes.push((name, text));
            }
        }
    }
    let content_type = attributes
        .iter()
        .find(|(name, _)| name == "datacontenttype")
        .map(|(_, value)| value.as_str());
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => return Err(ParseError::BothData),
        (None, None) => None,
        (Some(data), None) => Some(structured_data(content_type, data)?),
        (None, Some(encoded)) => {
            let Ok(encoded) = serde_json::from_str::<String>(encoded.get()) else {
                return Err(EventError::InvalidBase64 {
                    reason: format!("it is {}, not a string", json_kind(encoded)),
                }
                .into());
            };
            Some(Bytes::from(BASE64.decode(encoded).map_err(|e| {
                EventError::InvalidBase64 {
                    reason: e.to_string(),
                }
            })?))
        }
    };
    Ok(CloudEvent::from_attributes(attributes, data)?)
}

/// An attribute's value as text: context attributes must be JSON strings; extensions may also
/// be integers or booleans.
fn attribute_text(name: &str, value: &RawValue) -> Result<String, ParseError> {
    let invalid = |reason: String| {
        ParseError::from(EventError::InvalidValue {
            name: name.to_owned(),
            reason,
        })
    };
    let parsed: serde_json::Value = serde_json::from_str(value.get()).map_err(json_error)?;
    let context = crate::event::CONTEXT_ATTRIBUTES.contains(&name);
    match parsed {
        serde_json::Value::String(s) => Ok(s),
        _ if context => Err(invalid(format!(
            "must be a JSON string, not {}",
            json_kind(value)
        ))),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        _ => Err(invalid(format!(
            "is {}; extension attributes are strings, integers or booleans",
            if json_kind(value) == "a number" {
                "a fractional number"
            } else {
                json_kind(value)
            }
        ))),
    }
}

fn structured_data(content_type: Option<&str>, data: &RawValue) -> Result<Bytes, ParseError> {
    if !is_json_content_type(content_type)
        && let Ok(text) = serde_json::from_str::<String>(data.get())
    {
        return Ok(Bytes::from(text));
    }
    Ok(Bytes::copy_from_slice(data.get().as_bytes()))
}

/// Whether data of this content type is JSON: `application/json`, `text/json`, any `+json`
/// suffix, or no content type at all (the JSON event format's default).
pub fn is_json_content_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let media = media_type(content_type);
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// The media type of a Content-Type value: before any `;`, trimmed, lower-case.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The headers and body that deliver `event` in binary mode.
///
/// Attribute values are percent-encoded; `datacontenttype` becomes `Content-Type`. Extension
/// names that are not valid attribute names (only possible for an event built field by field;
/// [`CloudEvent::validate`] refuses them) are left out, as is a `datacontenttype` that is not
/// a valid header value.
pub fn to_binary(event: &CloudEvent) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    for (name, value) in event.attributes() {
        if name == "datacontenttype" {
            continue;
        }
        let Ok(header) = HeaderName::from_bytes(format!("{HEADER_PREFIX}{name}").as_bytes()) else {
            continue;
        };
        if let Ok(value) = HeaderValue::from_str(&percent_encode(value)) {
            headers.insert(header, value);
        }
    }
    if let Some(content_type) = &event.datacontenttype
        && let Ok(value) = HeaderValue::from_str(content_type)
    {
        headers.insert(CONTENT_TYPE, value);
    }
    (headers, event.data.clone().unwrap_or_default())
}

/// The event in structured mode (`application/cloudevents+json`); see the module docs for how
/// data is written.
pub fn to_structured_json(event: &CloudEvent) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in event.attributes().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, name);
        out.push(':');
        push_json_string(&mut out, value);
    }
    if let Some(data) = &event.data {
        out.push(',');
        let content_type = event.datacontenttype.as_deref();
        let text = std::str::from_utf8(data).ok();
        let json = text
            .filter(|_| is_json_content_type(content_type))
            .and_then(|t| serde_json::from_str::<&RawValue>(t).ok());
        match (json, text) {
            (Some(json), _) => {
                out.push_str("\"data\":");
                out.push_str(json.get());
            }
            (None, Some(text)) if !is_json_content_type(content_type) && looks_like_text(text) => {
                out.push_str("\"data\":");
                push_json_string(&mut out, text);
            }
            _ => {
                out.push_str("\"data_base64\":");
                push_json_string(&mut out, &BASE64.encode(data));
            }
        }
    }
    out.push('}');
    out
}

/// UTF-8 without control characters other than tab, line feed and carriage return.
fn looks_like_text(text: &str) -> bool {
    !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// Events as a batch (`application/cloudevents-batch+json`).
pub fn to_batch_json(events: &[CloudEvent]) -> String {
    let parts: Vec<String> = events.iter().map(to_structured_json).collect();
    format!("[{}]", parts.join(","))
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Percent-encodes a header value as the HTTP binding requires: space, `"`, `%` and every byte
/// outside printable ASCII (U+0021–U+007E) of the value's UTF-8.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded header value to UTF-8 text. Bytes that are not `%XX` pass
/// through, so unencoded UTF-8 from lax senders is accepted too.
fn percent_decode(raw: &[u8]) -> Result<String, String> {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'%' {
            let decoded = match (raw.get(i + 1), raw.get(i + 2)) {
                (Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h * 16 + l),
                _ => None,
            };
            let Some(decoded) = decoded else {
                return Err(format!(
                    "has a `%` at byte {} that does not start a percent-encoded byte (`%` and two hex digits)",
                    i + 1
                ));
            };
            out.push(decoded);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once percent-decoded".to_owned())
}

#[cfg(test)]
mod tests;
