use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    map
}

fn binary_headers(extra: &[(&str, &str)]) -> HeaderMap {
    let mut all = vec![
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-specversion", "1.0"),
        ("ce-type", "t"),
    ];
    all.extend_from_slice(extra);
    headers(&all)
}

fn structured() -> HeaderMap {
    headers(&[("content-type", STRUCTURED_CONTENT_TYPE)])
}

fn batch() -> HeaderMap {
    headers(&[("content-type", BATCH_CONTENT_TYPE)])
}

fn one(headers: &HeaderMap, body: &[u8]) -> CloudEvent {
    let mut events = parse_request(headers, body).expect("parses");
    assert_eq!(events.len(), 1);
    events.remove(0)
}

fn error(headers: &HeaderMap, body: &[u8]) -> String {
    parse_request(headers, body)
        .expect_err("refused")
        .to_string()
}

// ---- binary mode ----

#[test]
fn binary_mode_reads_headers_content_type_and_body() {
    let h = binary_headers(&[
        ("content-type", "application/json"),
        ("ce-subject", "sub"),
        ("ce-time", "2024-05-01T12:00:00Z"),
        ("ce-dataschema", "https://example.com/schema"),
        ("ce-traceparent", "00-abc-def-01"),
        ("ce-myext", "v"),
        ("x-other", "ignored"),
    ]);
    let e = one(&h, br#"{"a":1}"#);
    assert_eq!(e.id, "1");
    assert_eq!(e.source, "/s");
    assert_eq!(e.specversion, "1.0");
    assert_eq!(e.type_, "t");
    assert_eq!(e.subject.as_deref(), Some("sub"));
    assert_eq!(e.time.as_deref(), Some("2024-05-01T12:00:00Z"));
    assert_eq!(e.dataschema.as_deref(), Some("https://example.com/schema"));
    assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(e.extensions.len(), 2);
    assert_eq!(e.extensions["traceparent"], "00-abc-def-01");
    assert_eq!(e.extensions["myext"], "v");
    assert_eq!(e.data.as_deref(), Some(&br#"{"a":1}"#[..]));
    assert_eq!(mode(&h), Ok(Mode::Binary));
}

#[test]
fn binary_mode_without_body_or_content_type_has_no_data() {
    let e = one(&binary_headers(&[]), b"");
    assert_eq!(e.data, None);
    assert_eq!(e.datacontenttype, None);
}

#[test]
fn binary_mode_percent_decodes_header_values() {
    let h = binary_headers(&[
        ("ce-subject", "Euro%20%E2%82%AC%20%22quoted%22%20100%25"),
        ("ce-myext", "%c3%a9t%C3%A9"),
    ]);
    let e = one(&h, b"");
    assert_eq!(e.subject.as_deref(), Some("Euro € \"quoted\" 100%"));
    assert_eq!(e.extensions["myext"], "été");
}

#[test]
fn binary_mode_refuses_bad_percent_encoding() {
    let msg = error(&binary_headers(&[("ce-subject", "100%")]), b"");
    assert_eq!(
        msg,
        "attribute `subject`: header `ce-subject` has a `%` at byte 4 that does not start a percent-encoded byte (`%` and two hex digits)"
    );
    let msg = error(&binary_headers(&[("ce-subject", "%zz")]), b"");
    assert!(msg.contains("byte 1"), "{msg}");
    let msg = error(&binary_headers(&[("ce-subject", "%FF%FE")]), b"");
    assert_eq!(
        msg,
        "attribute `subject`: header `ce-subject` is not UTF-8 once percent-decoded"
    );
    let msg = error(&binary_headers(&[("ce-subject", "a%0Ab")]), b"");
    assert!(msg.contains("control character U+000A"), "{msg}");
}

#[test]
fn binary_mode_names_missing_attributes() {
    let h = headers(&[
        ("ce-source", "/s"),
        ("ce-specversion", "1.0"),
        ("ce-type", "t"),
    ]);
    assert_eq!(error(&h, b""), "missing required attribute `id`");
    let h = headers(&[("ce-id", "1")]);
    assert_eq!(
        error(&h, b""),
        "missing required attributes `source`, `specversion` and `type`"
    );
}

#[test]
fn binary_mode_refuses_bad_names_versions_and_duplicates() {
    assert_eq!(
        error(&binary_headers(&[("ce-my-ext", "v")]), b""),
        "invalid attribute name `my-ext`: CloudEvents attribute names are lower-case letters a-z and digits 0-9 only"
    );
    let h = headers(&[
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-specversion", "0.3"),
        ("ce-type", "t"),
    ]);
    assert_eq!(
        error(&h, b""),
        "unsupported specversion `0.3`: only `1.0` is supported"
    );
    assert_eq!(
        error(&binary_headers(&[("ce-id", "2")]), b""),
        "attribute `id` is given more than once"
    );
}

#[test]
fn binary_content_type_wins_over_ce_datacontenttype() {
    let h = binary_headers(&[
        ("ce-datacontenttype", "text/plain"),
        ("content-type", "application/xml"),
    ]);
    assert_eq!(
        one(&h, b"<a/>").datacontenttype.as_deref(),
        Some("application/xml")
    );
    let h = binary_headers(&[("ce-datacontenttype", "text/plain")]);
    assert_eq!(
        one(&h, b"hi").datacontenttype.as_deref(),
        Some("text/plain")
    );
}

#[test]
fn not_a_cloud_event_lists_the_three_modes() {
    let msg = error(&headers(&[("content-type", "text/plain")]), b"hello");
    assert!(
        msg.starts_with(
            "not a CloudEvent: no `ce-` headers and Content-Type `text/plain` is not a CloudEvents format; send it in one of the three CloudEvents HTTP modes: binary"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("structured (`Content-Type: application/cloudevents+json`"),
        "{msg}"
    );
    assert!(
        msg.contains("batched (`Content-Type: application/cloudevents-batch+json`"),
        "{msg}"
    );
    let msg = error(&HeaderMap::new(), b"");
    assert!(
        msg.starts_with("not a CloudEvent: no `ce-` headers and no Content-Type;"),
        "{msg}"
    );
}

#[test]
fn other_cloudevents_formats_are_refused_by_name() {
    let h = headers(&[("content-type", "application/cloudevents+xml")]);
    assert_eq!(
        error(&h, b"<e/>"),
        "unsupported CloudEvents format `application/cloudevents+xml`: only JSON is accepted (`application/cloudevents+json`, `application/cloudevents-batch+json`)"
    );
}

// ---- structured mode ----

#[test]
fn structured_mode_keeps_json_data_as_json() {
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/json","data": {"a": [1, 2]} }"#;
    let e = one(&structured(), body);
    assert_eq!(e.data.as_deref(), Some(&br#"{"a": [1, 2]}"#[..]));
    // No datacontenttype: JSON by default.
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"hi"}"#;
    assert_eq!(
        one(&structured(), body).data.as_deref(),
        Some(&br#""hi""#[..])
    );
    // A +json suffix is JSON too.
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/vnd.x+json; charset=utf-8","data":"hi"}"#;
    assert_eq!(
        one(&structured(), body).data.as_deref(),
        Some(&br#""hi""#[..])
    );
}

#[test]
fn structured_mode_text_data_and_data_base64() {
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"caf\u00e9"}"#;
    assert_eq!(
        one(&structured(), body).data.as_deref(),
        Some("café".as_bytes())
    );
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AP+A"}"#;
    assert_eq!(
        one(&structured(), body).data.as_deref(),
        Some(&[0u8, 255, 128][..])
    );
    // Unpadded base64 is accepted.
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"aGk"}"#;
    assert_eq!(one(&structured(), body).data.as_deref(), Some(&b"hi"[..]));
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"***"}"#;
    assert!(
        error(&structured(), body).starts_with("`data_base64` is not valid base64: "),
        "{}",
        error(&structured(), body)
    );
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":42}"#;
    assert_eq!(
        error(&structured(), body),
        "`data_base64` is not valid base64: it is a number, not a string"
    );
}

#[test]
fn structured_mode_refuses_data_and_data_base64_together() {
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{},"data_base64":"aGk="}"#;
    assert_eq!(
        error(&structured(), body),
        "both `data` and `data_base64` are set; an event carries at most one of them"
    );
    // A null member is absent.
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":null,"data_base64":"aGk=","subject":null}"#;
    let e = one(&structured(), body);
    assert_eq!(e.data.as_deref(), Some(&b"hi"[..]));
    assert_eq!(e.subject, None);
}

#[test]
fn structured_mode_extensions_may_be_integers_or_booleans() {
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","count":42,"flag":true,"neg":-1,"name":"x"}"#;
    let e = one(&structured(), body);
    assert_eq!(e.extensions["count"], "42");
    assert_eq!(e.extensions["flag"], "true");
    assert_eq!(e.extensions["neg"], "-1");
    assert_eq!(e.extensions["name"], "x");
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ratio":0.5}"#;
    assert_eq!(
        error(&structured(), body),
        "attribute `ratio`: is a fractional number; extension attributes are strings, integers or booleans"
    );
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","obj":{"a":1}}"#;
    assert!(error(&structured(), body).contains("is an object"));
    let body = br#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#;
    assert_eq!(
        error(&structured(), body),
        "attribute `id`: must be a JSON string, not a number"
    );
    let body = br#"{"specversion":1.0,"id":"1","source":"/s","type":"t"}"#;
    assert_eq!(
        error(&structured(), body),
        "attribute `specversion`: must be a JSON string, not a number"
    );
}

#[test]
fn structured_mode_names_what_is_missing_or_wrong() {
    let body = br#"{"specversion":"1.0","source":"/s","type":"t"}"#;
    assert_eq!(
        error(&structured(), body),
        "missing required attribute `id`"
    );
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad_Name":"x"}"#;
    assert!(error(&structured(), body).starts_with("invalid attribute name `Bad_Name`"));
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"noon"}"#;
    assert!(error(&structured(), body).starts_with("attribute `time`: `noon` is not an RFC 3339"));
}

#[test]
fn structured_mode_reports_json_line_and_column() {
    let body = b"{\n  \"id\": \"1\",\n  oops\n}";
    match parse_request(&structured(), body) {
        Err(ParseError::Json {
            line,
            column,
            reason,
        }) => {
            assert_eq!((line, column), (3, 3));
            assert_eq!(reason, "key must be a string");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        error(&structured(), b"{\"id\": \"1\",\n  oops\n}"),
        "malformed JSON at line 2, column 3: key must be a string"
    );
    assert_eq!(
        error(&structured(), b"{} {}"),
        "malformed JSON at line 1, column 4: trailing characters"
    );
}

#[test]
fn structured_mode_needs_one_object() {
    assert_eq!(
        error(&structured(), b"  \n"),
        "the body is empty: a structured CloudEvent is one JSON object"
    );
    assert_eq!(
        error(&structured(), b"[]"),
        "a structured CloudEvent must be a JSON object, not an array (send an array of events as `Content-Type: application/cloudevents-batch+json`)"
    );
    assert_eq!(
        error(&structured(), b"\"x\""),
        "a structured CloudEvent must be a JSON object, not a string"
    );
}

#[test]
fn structured_content_type_is_matched_loosely_and_ce_headers_are_ignored() {
    let h = headers(&[
        (
            "content-type",
            "Application/CloudEvents+JSON; charset=utf-8",
        ),
        ("ce-id", "from-header"),
    ]);
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
    let e = one(&h, body);
    assert_eq!(e.id, "1");
    assert_eq!(mode(&h), Ok(Mode::Structured));
}

// ---- batched mode ----

#[test]
fn batched_mode_parses_every_element() {
    let body = br#"[
        {"specversion":"1.0","id":"1","source":"/s","type":"t"},
        {"specversion":"1.0","id":"2","source":"/s","type":"t","data_base64":"aGk="}
    ]"#;
    let events = parse_request(&batch(), body).expect("parses");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].id, "1");
    assert_eq!(events[1].data.as_deref(), Some(&b"hi"[..]));
    assert_eq!(
        parse_request(&batch(), b"[]").expect("empty batch"),
        Vec::new()
    );
    assert_eq!(
        parse_request(&batch(), b" [ ] ")
            .expect("empty batch")
            .len(),
        0
    );
}

#[test]
fn batched_mode_says_which_element_is_wrong() {
    let body = br#"[
        {"specversion":"1.0","id":"1","source":"/s","type":"t"},
        {"specversion":"1.0","id":"2","source":"/s","type":"t"},
        {"specversion":"1.0","source":"/s","type":"t"},
        {"specversion":"1.0","id":"4","source":"/s","type":"t"},
        {"specversion":"1.0","id":"5","source":"/s","type":"t"}
    ]"#;
    let err = parse_request(&batch(), body).expect_err("bad element");
    assert_eq!(
        err.to_string(),
        "event 3 of 5: missing required attribute `id`"
    );
    assert!(matches!(
        err,
        ParseError::InBatch {
            index: 3,
            total: 5,
            ..
        }
    ));
    assert_eq!(
        error(&batch(), br#"["x"]"#),
        "event 1 of 1: a structured CloudEvent must be a JSON object, not a string"
    );
    assert_eq!(
        error(&batch(), br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":""}]"#),
        "event 1 of 1: both `data` and `data_base64` are set; an event carries at most one of them"
    );
}

#[test]
fn batched_mode_needs_an_array() {
    assert_eq!(
        error(
            &batch(),
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#
        ),
        "a batch must be a JSON array of events, not an object"
    );
    assert_eq!(
        error(&batch(), b""),
        "the body is empty: a batch is a JSON array of events (`[]` for none)"
    );
    assert!(error(&batch(), b"[{]").starts_with("malformed JSON at line 1, column 3: "));
}

// ---- encoding ----

fn full_event() -> CloudEvent {
    let mut e = CloudEvent::new("id 1", "/sources/ping", "dev.knative.sources.ping")
        .with_data("application/json", &br#"{"msg":"hi"}"#[..]);
    e.subject = Some("Euro € \"q\" 100%\ttab".into());
    e.time = Some("2024-05-01T12:00:00.5+02:00".into());
    e.dataschema = Some("https://example.com/s.json".into());
    e.extensions
        .insert("traceparent".into(), "00-1-2-01".into());
    e.extensions.insert("empty".into(), String::new());
    e
}

#[test]
fn to_binary_percent_encodes_and_round_trips() {
    let e = full_event();
    let (h, body) = to_binary(&e);
    assert_eq!(h["ce-id"], "id%201");
    assert_eq!(h["ce-specversion"], "1.0");
    assert_eq!(h["ce-subject"], "Euro%20%E2%82%AC%20%22q%22%20100%25%09tab");
    assert_eq!(h["ce-time"], "2024-05-01T12:00:00.5+02:00");
    assert_eq!(h["content-type"], "application/json");
    assert!(h.get("ce-datacontenttype").is_none());
    assert_eq!(h["ce-empty"], "");
    assert_eq!(&body[..], br#"{"msg":"hi"}"#);
    // The subject's tab is a control character, so the event is invalid; without it, it
    // round-trips.
    let mut e = e;
    e.subject = Some("Euro € \"q\" 100%".into());
    let (h, body) = to_binary(&e);
    assert_eq!(parse_binary(&h, &body), Ok(e.clone()));
    assert_eq!(parse_request(&h, &body), Ok(vec![e]));
}

#[test]
fn percent_encoding_round_trips() {
    for s in [
        "",
        "plain",
        "a b",
        "100%",
        "\"",
        "é€😀",
        "%41",
        "~!*'()",
        "\u{7f}",
    ] {
        let encoded = percent_encode(s);
        assert!(
            encoded.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "{encoded}"
        );
        assert_eq!(percent_decode(encoded.as_bytes()).as_deref(), Ok(s), "{s}");
    }
    assert_eq!(percent_encode("a b%\"é"), "a%20b%25%22%C3%A9");
    // Unencoded UTF-8 from a lax sender is accepted.
    assert_eq!(percent_decode("café".as_bytes()).as_deref(), Ok("café"));
}

#[test]
fn to_structured_json_round_trips_every_kind_of_data() {
    let cases = [
        CloudEvent::new("1", "/s", "t"),
        CloudEvent::new("2", "/s", "t").with_data("application/json", &br#"{"a": [1, 2]}"#[..]),
        CloudEvent::new("3", "/s", "t").with_data("text/plain", "line 1\nline \"2\" é"),
        CloudEvent::new("4", "/s", "t").with_data("application/octet-stream", vec![0u8, 159, 255]),
        // JSON content type whose bytes are not JSON: base64.
        CloudEvent::new("5", "/s", "t").with_data("application/json", &b"not json"[..]),
        // No content type (JSON by default) and text bytes: base64.
        CloudEvent {
            data: Some(Bytes::from_static(b"plain text")),
            ..CloudEvent::new("6", "/s", "t")
        },
        // No content type and JSON bytes: JSON.
        CloudEvent {
            data: Some(Bytes::from_static(b"[1,2]")),
            ..CloudEvent::new("7", "/s", "t")
        },
        {
            let mut e = full_event();
            e.subject = Some("Euro € \"q\" 100%".into());
            e
        },
    ];
    for e in cases {
        let json = to_structured_json(&e);
        assert_eq!(parse_structured(json.as_bytes()), Ok(e.clone()), "{json}");
        let _: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    }
    let json = to_structured_json(&CloudEvent::new("3", "/s", "t").with_data("text/plain", "hi"));
    assert_eq!(
        json,
        r#"{"id":"3","source":"/s","specversion":"1.0","type":"t","datacontenttype":"text/plain","data":"hi"}"#
    );
    let json =
        to_structured_json(&CloudEvent::new("4", "/s", "t").with_data("image/png", vec![0u8, 1]));
    assert!(json.ends_with(r#""data_base64":"AAE="}"#), "{json}");
    let json = to_structured_json(
        &CloudEvent::new("5", "/s", "t").with_data("application/json", &b" {\"a\":1} "[..]),
    );
    assert!(json.ends_with(r#""data":{"a":1}}"#), "{json}");
}

#[test]
fn to_batch_json_round_trips() {
    let events = vec![
        CloudEvent::new("1", "/s", "t"),
        CloudEvent::new("2", "/s", "t").with_data("text/plain", "x"),
    ];
    let json = to_batch_json(&events);
    assert_eq!(parse_request(&batch(), json.as_bytes()), Ok(events));
    assert_eq!(to_batch_json(&[]), "[]");
}

// ---- replies ----

#[test]
fn replies_are_events_in_a_200_response() {
    let (h, body) =
        to_binary(&CloudEvent::new("r1", "/sink", "reply").with_data("text/plain", "ok"));
    let reply = reply_from_response(&h, &body)
        .expect("parses")
        .expect("a reply");
    assert_eq!(reply.id, "r1");
    let body = br#"{"specversion":"1.0","id":"r2","source":"/sink","type":"reply"}"#;
    assert_eq!(
        reply_from_response(&structured(), body)
            .expect("parses")
            .map(|e| e.id),
        Some("r2".to_owned())
    );
    // No event: no reply, whatever the body.
    assert_eq!(reply_from_response(&HeaderMap::new(), b""), Ok(None));
    assert_eq!(
        reply_from_response(&headers(&[("content-type", "text/plain")]), b"thanks"),
        Ok(None)
    );
    // A malformed reply is an error (a failed delivery).
    assert_eq!(
        reply_from_response(&headers(&[("ce-id", "1")]), b"")
            .expect_err("malformed")
            .to_string(),
        "missing required attributes `source`, `specversion` and `type`"
    );
    assert_eq!(
        reply_from_response(&batch(), b"[]"),
        Err(ParseError::ReplyIsBatch)
    );
    assert!(reply_from_response(&structured(), b"{").is_err());
}

#[test]
fn is_json_content_type_follows_the_json_format() {
    assert!(is_json_content_type(None));
    assert!(is_json_content_type(Some("application/json")));
    assert!(is_json_content_type(Some(
        "Application/JSON; charset=utf-8"
    )));
    assert!(is_json_content_type(Some("text/json")));
    assert!(is_json_content_type(Some("application/cloudevents+json")));
    assert!(!is_json_content_type(Some("text/plain")));
    assert!(!is_json_content_type(Some("application/jsonx")));
}

// ---- interoperability with the Rust SDK (cloudevents-sdk 0.9, dev-dependency) ----

mod interop {
    use super::*;
    use cloudevents::{AttributesReader, Data, EventBuilder, EventBuilderV10};

    fn sdk_event() -> cloudevents::Event {
        EventBuilderV10::new()
            .id("sdk-1")
            .source("https://example.com/source")
            .ty("com.example.thing")
            .subject("thing-42")
            .time("2024-05-01T12:00:00Z")
            .extension("traceparent", "00-abc-01")
            .extension("count", 42i64)
            .extension("flag", true)
            .data("application/json", serde_json::json!({"hello": "world"}))
            .build()
            .expect("sdk builds")
    }

    fn same_instant(a: &str, b: &str) -> bool {
        a.parse::<jiff::Timestamp>().ok() == b.parse::<jiff::Timestamp>().ok()
    }

    #[test]
    fn sdk_binary_request_parses_here() {
        let request: ::http::Request<Option<Vec<u8>>> =
            ::http::Request::try_from(sdk_event()).expect("sdk encodes");
        let body = request.body().clone().unwrap_or_default();
        let e = one(request.headers(), &body);
        assert_eq!(e.id, "sdk-1");
        assert_eq!(e.source, "https://example.com/source");
        assert_eq!(e.type_, "com.example.thing");
        assert_eq!(e.subject.as_deref(), Some("thing-42"));
        assert!(same_instant(
            e.time.as_deref().unwrap_or_default(),
            "2024-05-01T12:00:00Z"
        ));
        assert_eq!(e.extensions["traceparent"], "00-abc-01");
        assert_eq!(e.extensions["count"], "42");
        assert_eq!(e.extensions["flag"], "true");
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        let data: serde_json::Value =
            serde_json::from_slice(e.data.as_deref().unwrap_or_default()).expect("JSON data");
        assert_eq!(data, serde_json::json!({"hello": "world"}));
    }

    #[test]
    fn sdk_structured_json_parses_here() {
        let json = serde_json::to_vec(&sdk_event()).expect("sdk serializes");
        let e = one(&structured(), &json);
        assert_eq!(e.id, "sdk-1");
        assert_eq!(e.extensions["count"], "42");
        assert_eq!(e.extensions["flag"], "true");
        let data: serde_json::Value =
            serde_json::from_slice(e.data.as_deref().unwrap_or_default()).expect("JSON data");
        assert_eq!(data, serde_json::json!({"hello": "world"}));

        let binary = EventBuilderV10::new()
            .id("sdk-2")
            .source("/s")
            .ty("t")
            .data("application/octet-stream", vec![0u8, 255, 7])
            .build()
            .expect("sdk builds");
        let json = serde_json::to_vec(&binary).expect("sdk serializes");
        assert_eq!(
            one(&structured(), &json).data.as_deref(),
            Some(&[0u8, 255, 7][..])
        );

        let text = EventBuilderV10::new()
            .id("sdk-3")
            .source("/s")
            .ty("t")
            .data("text/plain", "plain words".to_owned())
            .build()
            .expect("sdk builds");
        let json = serde_json::to_vec(&text).expect("sdk serializes");
        assert_eq!(
            one(&structured(), &json).data.as_deref(),
            Some(&b"plain words"[..])
        );
    }

    fn ours() -> CloudEvent {
        let mut e = CloudEvent::new("ours-1", "/sources/ping", "dev.knative.sources.ping")
            .with_data("application/json", &br#"{"n":1}"#[..]);
        e.subject = Some("s".into());
        e.time = Some("2024-05-01T12:00:00Z".into());
        e.extensions.insert("knativearrivaltime".into(), "x".into());
        e
    }

    fn check_sdk_copy(sdk: &cloudevents::Event) {
        assert_eq!(sdk.id(), "ours-1");
        assert_eq!(sdk.source().to_string(), "/sources/ping");
        assert_eq!(sdk.ty(), "dev.knative.sources.ping");
        assert_eq!(sdk.subject(), Some("s"));
        assert_eq!(sdk.datacontenttype(), Some("application/json"));
        let time = sdk.time().map(|t| t.to_rfc3339()).unwrap_or_default();
        assert!(same_instant(&time, "2024-05-01T12:00:00Z"), "{time}");
        assert_eq!(
            sdk.extension("knativearrivaltime").map(ToString::to_string),
            Some("x".to_owned())
        );
        let data = match sdk.data() {
            Some(Data::Json(v)) => v.clone(),
            Some(Data::Binary(b)) => serde_json::from_slice(b).expect("JSON"),
            Some(Data::String(s)) => serde_json::from_str(s).expect("JSON"),
            None => panic!("no data"),
        };
        assert_eq!(data, serde_json::json!({"n": 1}));
    }

    #[test]
    fn our_binary_encoding_parses_in_the_sdk() {
        let (h, body) = to_binary(&ours());
        let sdk = cloudevents::binding::http::to_event(&h, body.to_vec()).expect("sdk decodes");
        check_sdk_copy(&sdk);
    }

    #[test]
    fn our_structured_json_parses_in_the_sdk() {
        let json = to_structured_json(&ours());
        let sdk: cloudevents::Event = serde_json::from_str(&json).expect("sdk decodes");
        check_sdk_copy(&sdk);
        let binary = CloudEvent::new("b", "/s", "t")
            .with_data("application/octet-stream", vec![1u8, 2, 255]);
        let sdk: cloudevents::Event =
            serde_json::from_str(&to_structured_json(&binary)).expect("sdk decodes");
        assert_eq!(sdk.data(), Some(&Data::Binary(vec![1, 2, 255])));
    }

    #[test]
    fn round_trip_through_the_sdk_and_back() {
        // ours -> structured -> SDK -> structured -> ours
        let e = ours();
        let sdk: cloudevents::Event =
            serde_json::from_str(&to_structured_json(&e)).expect("sdk decodes");
        let back = one(
            &structured(),
            &serde_json::to_vec(&sdk).expect("sdk encodes"),
        );
        assert_eq!(back.id, e.id);
        assert_eq!(back.extensions, e.extensions);
        assert_eq!(back.subject, e.subject);
        let data: serde_json::Value =
            serde_json::from_slice(back.data.as_deref().unwrap_or_default()).expect("JSON");
        assert_eq!(data, serde_json::json!({"n": 1}));
        // ours -> binary -> SDK -> binary -> ours
        let (h, body) = to_binary(&e);
        let sdk = cloudevents::binding::http::to_event(&h, body.to_vec()).expect("sdk decodes");
        let request: ::http::Request<Option<Vec<u8>>> =
            ::http::Request::try_from(sdk).expect("sdk encodes");
        let back = one(
            request.headers(),
            &request.body().clone().unwrap_or_default(),
        );
        assert_eq!(back.extensions, e.extensions);
        assert_eq!(back.data, e.data);
    }
}
