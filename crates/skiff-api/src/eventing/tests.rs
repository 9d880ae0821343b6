//! PingSources, Brokers and Triggers read from text through `manifest::parse_objects`, as
//! `skiff apply` reads them: Knative's documented examples, and one case for each refusal with
//! the path (and message) of every problem.

use std::time::Duration;

use super::*;
use crate::manifest::{Object, parse_objects};
use crate::problems::{Problem, ProblemKind};

/// Reads one document and returns its object or its problems.
fn read(yaml: &str) -> Result<Object, Vec<Problem>> {
    let mut parsed = parse_objects(yaml).map_err(|p| vec![p])?;
    assert_eq!(parsed.documents.len(), 1);
    parsed.documents.remove(0).1
}

/// The problems of a document that must be refused.
#[track_caller]
fn problems(yaml: &str) -> Vec<Problem> {
    match read(yaml) {
        Ok(o) => panic!("expected problems; accepted {o:?}"),
        Err(ps) => ps,
    }
}

/// `path: message` of every problem, in file order.
#[track_caller]
fn lines(yaml: &str) -> Vec<String> {
    problems(yaml)
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect()
}

#[track_caller]
fn accepted(yaml: &str) -> Object {
    match read(yaml) {
        Ok(o) => o,
        Err(ps) => panic!(
            "expected acceptance; got:\n{}",
            ps.iter().map(|p| format!("  {p}\n")).collect::<String>()
        ),
    }
}

const PING: &str = "apiVersion: sources.knative.dev/v1
kind: PingSource
metadata:
  name: test-ping-source
spec:
  schedule: \"*/1 * * * *\"
  contentType: \"application/json\"
  data: '{\"message\": \"Hello world!\"}'
  sink:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: event-display
";

const BROKER: &str = "apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  annotations:
    eventing.knative.dev/broker.class: MTChannelBasedBroker
  name: default
  namespace: default
spec:
  delivery:
    deadLetterSink:
      ref:
        apiVersion: serving.knative.dev/v1
        kind: Service
        name: example-sink
    backoffDelay: PT0.2S
    backoffPolicy: exponential
    retry: 5
";

const TRIGGER: &str = "apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: my-service-trigger
spec:
  broker: default
  filter:
    attributes:
      type: dev.knative.foo.bar
      myextension: my-extension-value
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: my-service
";

/// A Trigger on Broker `default` sending to Service `s`, with `spec_extra` spliced into its
/// spec (indented by 2).
fn trigger_with(spec_extra: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  \
         broker: default\n  subscriber:\n    ref: {{apiVersion: serving.knative.dev/v1, kind: \
         Service, name: s}}\n{}",
        indent(spec_extra, 2)
    )
}

/// A PingSource sending to Service `s`, with `spec_extra` spliced into its spec.
fn ping_with(spec_extra: &str) -> String {
    format!(
        "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: p\nspec:\n  \
         sink:\n    ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: s}}\n{}",
        indent(spec_extra, 2)
    )
}

fn indent(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(n)))
        .collect()
}

/// Knative's PingSource example: typed schedule, data and sink; the stored spec in Knative's
/// shape with the sink's namespace filled in.
#[test]
fn ping_source_from_knative_docs() {
    let Object::PingSource(p) = accepted(PING) else {
        panic!("not a PingSource")
    };
    assert_eq!(p.meta.name, "test-ping-source");
    assert_eq!(p.meta.namespace, "default");
    assert_eq!(p.schedule, "*/1 * * * *");
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        p.data.as_deref(),
        Some(&br#"{"message": "Hello world!"}"#[..])
    );
    assert_eq!(
        p.sink,
        SinkRef {
            kind: SinkKind::Service,
            name: "event-display".into()
        }
    );
    let stored = PingSource::new(p.meta.object_meta("uid-1", "2024-01-01T00:00:00Z"), &p);
    let json = serde_json::to_value(&stored).expect("serializes");
    assert_eq!(json["apiVersion"], "sources.knative.dev/v1");
    assert_eq!(json["kind"], "PingSource");
    assert_eq!(json["metadata"]["generation"], 1);
    assert_eq!(json["spec"]["contentType"], "application/json");
    assert_eq!(json["spec"]["sink"]["ref"]["namespace"], "default");
    assert_eq!(json["status"]["conditions"], serde_json::json!([]));
    let back: PingSource = serde_json::from_value(json).expect("reads back");
    assert_eq!(back, stored);
}

/// No schedule means Knative's every minute; `dataBase64` is decoded; a Job is a sink;
/// extensions are kept.
#[test]
fn ping_source_defaults_base64_job_and_extensions() {
    let yaml = "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: nightly\n  \
                namespace: team\nspec:\n  timezone: Europe/Berlin\n  contentType: text/plain\n  \
                dataBase64: ZGF0YQ==\n  ceOverrides:\n    extensions: {team: a1}\n  sink:\n    \
                ref: {apiVersion: run.googleapis.com/v1, kind: Job, name: etl, namespace: team}\n";
    let Object::PingSource(p) = accepted(yaml) else {
        panic!("not a PingSource")
    };
    assert_eq!(p.schedule, DEFAULT_SCHEDULE);
    assert_eq!(p.spec.schedule.as_deref(), Some(DEFAULT_SCHEDULE));
    assert_eq!(p.timezone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(p.data.as_deref(), Some(&b"data"[..]));
    assert_eq!(p.sink.kind, SinkKind::Job);
    assert_eq!(p.extensions["team"], "a1");
    assert_eq!(p.meta.manifest_namespace.as_deref(), Some("team"));
}

/// Knative's Broker example (without its `config`): the class recorded and warned about,
/// the delivery typed.
#[test]
fn broker_from_knative_docs() {
    let o = accepted(BROKER);
    assert_eq!(o.name(), Some("default"));
    assert_eq!(o.manifest_namespace(), Some("default"));
    assert_eq!(
        o.warnings(),
        [
            "metadata.annotations.eventing.knative.dev/broker.class: `MTChannelBasedBroker` is \
          recorded but has no effect: skiff has one Broker implementation"
        ]
    );
    let Object::Broker(b) = o else {
        panic!("not a Broker")
    };
    assert_eq!(b.class.as_deref(), Some("MTChannelBasedBroker"));
    let d = b.delivery.clone().expect("delivery");
    assert_eq!(d.retry, Some(5));
    assert_eq!(d.backoff_policy, BackoffPolicy::Exponential);
    assert_eq!(d.backoff_delay, Some(Duration::from_millis(200)));
    assert_eq!(
        d.dead_letter.map(|s| s.to_string()).as_deref(),
        Some("Service/example-sink")
    );
    let stored = Broker::new(b.meta.object_meta("u", "t"), &b);
    let json = serde_json::to_value(&stored).expect("serializes");
    assert_eq!(json["spec"]["delivery"]["backoffDelay"], "PT0.2S");
    assert_eq!(
        json["spec"]["delivery"]["deadLetterSink"]["ref"]["namespace"],
        "default"
    );
    // A Broker may have no spec at all.
    accepted("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n");
}

/// Knative's Trigger examples: the attribute filter, and the `filters` example with `any`.
#[test]
fn trigger_from_knative_docs() {
    let Object::Trigger(t) = accepted(TRIGGER) else {
        panic!("not a Trigger")
    };
    assert_eq!(t.broker, "default");
    assert_eq!(t.attributes["type"], "dev.knative.foo.bar");
    assert_eq!(t.subscriber.name, "my-service");
    assert!(t.filters.is_empty() && t.delivery.is_none());
    let yaml = trigger_with(
        "filters:\n- any:\n  - exact:\n      type: com.github.push\n  - exact:\n      subject: \
         https://github.com/knative/eventing\n- not:\n    prefix: {source: /internal}\n\
         - all:\n  - suffix: {type: .created}\ndelivery:\n  retry: 3\n  backoffPolicy: linear\n  \
         backoffDelay: PT1S\n",
    );
    let Object::Trigger(t) = accepted(&yaml) else {
        panic!("not a Trigger")
    };
    let exact = |a: &str, v: &str| Filter::Exact {
        attribute: a.into(),
        value: v.into(),
    };
    assert_eq!(
        t.filters,
        [
            Filter::Any(vec![
                exact("type", "com.github.push"),
                exact("subject", "https://github.com/knative/eventing"),
            ]),
            Filter::Not(Box::new(Filter::Prefix {
                attribute: "source".into(),
                value: "/internal".into()
            })),
            Filter::All(vec![Filter::Suffix {
                attribute: "type".into(),
                value: ".created".into()
            }]),
        ]
    );
    let d = t.delivery.clone().expect("delivery");
    assert_eq!(
        (d.retry, d.backoff_policy),
        (Some(3), BackoffPolicy::Linear)
    );
    let stored = Trigger::new(t.meta.object_meta("u", "t"), &t);
    let json = serde_json::to_value(&stored).expect("serializes");
    assert_eq!(
        json["spec"]["filters"][0]["any"][1]["exact"]["subject"],
        "https://github.com/knative/eventing"
    );
    assert_eq!(json["spec"]["subscriber"]["ref"]["namespace"], "default");
    assert_eq!(
        serde_json::from_value::<Trigger>(json).expect("reads back"),
        stored
    );
}

/// `filter` and `filters` together: accepted as Knative does (`filters` wins), with a warning.
#[test]
fn filter_and_filters_together_warn() {
    let o = accepted(&trigger_with(
        "filter:\n  attributes: {type: a}\nfilters:\n- exact: {type: b}\n",
    ));
    assert_eq!(
        o.warnings(),
        [
            "spec.filter: ignored because spec.filters is set (Knative's rule: `filters` replaces \
          `filter`)"
        ]
    );
}

/// Unknown fields at every level, each with a "did you mean" where there is a near miss.
#[test]
fn unknown_fields_with_suggestions() {
    assert_eq!(
        lines(&ping_with("schedul: \"0 * * * *\"\n")),
        ["spec.schedul: unknown field; did you mean `schedule`?"]
    );
    assert_eq!(
        lines(&trigger_with("filters:\n- any:\n  - exatc: {type: a}\n")),
        [
            "spec.filters[0].any[0].exatc: unknown field; did you mean `exact`?",
            "spec.filters[0].any[0]: required: one of exact, prefix, suffix, all, any or not \
             (an empty expression matches every event; remove it instead)",
        ]
    );
    assert_eq!(
        lines(&trigger_with(
            "delivery:\n  retyr: 3\n  backofDelay: PT1S\n"
        )),
        [
            "spec.delivery.retyr: unknown field; did you mean `retry`?",
            "spec.delivery.backofDelay: unknown field; did you mean `backoffDelay`?",
        ]
    );
    assert_eq!(
        lines(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n  \
             lables: {a: b}\nspec:\n  delivery:\n    deadLetterSink:\n      ref: {apiVersion: \
             serving.knative.dev/v1, kind: Service, nmae: s}\n"
        ),
        [
            "metadata.lables: unknown field; did you mean `labels`?",
            // Placed at the `ref` mapping, which starts before its `nmae` key.
            "spec.delivery.deadLetterSink.ref.name: required",
            "spec.delivery.deadLetterSink.ref.nmae: unknown field; did you mean `name`?",
        ]
    );
}

/// Knative fields skiff does not support yet are refused by name; output-only ones skipped.
#[test]
fn unsupported_fields_refused_by_name() {
    let cases = [
        (
            BROKER.replace(
                "spec:\n",
                "spec:\n  config:\n    apiVersion: v1\n    kind: ConfigMap\n    name: c\n",
            ),
            "spec.config",
            "not supported by skiff yet (broker config objects)",
        ),
        (
            trigger_with("filters:\n- cesql: \"source LIKE '%commerce%'\"\n"),
            "spec.filters[0].cesql",
            "not supported by skiff yet (CESQL filters; use exact, prefix, suffix, all, any or \
             not)",
        ),
        (
            trigger_with(
                "brokerRef: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: b}\n",
            ),
            "spec.brokerRef",
            "not supported by skiff yet (`brokerRef` (a Broker in another namespace); name the \
             Broker in `spec.broker`)",
        ),
        (
            ping_with("delivery: {retry: 3}\n"),
            "spec.delivery",
            "not allowed: Knative's PingSource has no `delivery`",
        ),
        (
            ping_with("jsonData: '{}'\n"),
            "spec.jsonData",
            "not allowed: `jsonData` belongs to older PingSource versions",
        ),
        (
            trigger_with("filter:\n  exact: {type: a}\n"),
            "spec.filter.exact",
            "not allowed: `spec.filter` holds only `attributes`",
        ),
        (
            PING.replace(
                "      name: event-display\n",
                "      name: event-display\n    audience: x\n    CACerts: y\n",
            ),
            "spec.sink.audience",
            "not supported by skiff yet (OIDC audiences for a sink)",
        ),
        (
            PING.replace(
                "      kind: Service\n",
                "      kind: Service\n      group: serving.knative.dev\n",
            ),
            "spec.sink.ref.group",
            "not supported by skiff yet (`group` in a reference",
        ),
        (
            PING.replace(
                "  name: test-ping-source\n",
                "  generateName: ping-\n  name: p\n",
            ),
            "metadata.generateName",
            "not supported by skiff yet (generateName on a PingSource, Broker or Trigger; set \
             metadata.name)",
        ),
    ];
    for (yaml, path, message) in cases {
        let ps = problems(&yaml);
        assert!(
            ps.iter()
                .any(|p| p.path == path && p.message.starts_with(message)),
            "expected `{path}: {message}`; got {ps:#?}"
        );
        assert!(
            ps.iter().all(|p| p.kind != ProblemKind::UnknownField),
            "{ps:#?}"
        );
    }
    let with_status = format!("{PING}status:\n  conditions: []\n  sinkUri: http://x\n")
        .replace("metadata:\n", "metadata:\n  uid: 1234\n  generation: 3\n");
    accepted(&with_status);
}

/// Bad retry, backoffDelay and backoffPolicy, each at its path, with its line.
#[test]
fn bad_delivery_values() {
    let ps = problems(&trigger_with(
        "delivery:\n  retry: -2\n  backoffDelay: P1M\n  backoffPolicy: Exponential\n",
    ));
    let got: Vec<(&str, Option<u64>)> = ps.iter().map(|p| (p.path.as_str(), p.line)).collect();
    assert_eq!(
        got,
        [
            ("spec.delivery.retry", Some(10)),
            ("spec.delivery.backoffDelay", Some(11)),
            ("spec.delivery.backoffPolicy", Some(12)),
        ]
    );
    assert_eq!(ps[0].message, "-2 is negative; write 0 or more");
    assert!(
        ps[1].message.contains("years, months or weeks"),
        "{}",
        ps[1].message
    );
    assert_eq!(
        lines(&trigger_with("delivery:\n  retry: three\n")),
        ["spec.delivery.retry: must be a whole number (found string \"three\")"]
    );
}

/// Two keys in `exact`, an empty `all`, a bad attribute name, two expressions in one item:
/// every problem at its path inside the nested filters.
#[test]
fn filter_problems_have_nested_paths() {
    assert_eq!(
        lines(&trigger_with(
            "filters:\n- exact: {type: a}\n- any:\n  - exact: {type: a, source: b}\n  - all: []\n  \
             - not:\n      prefix: {Type: x}\n- exact: {type: a}\n  suffix: {type: b}\n- prefix: {type: \"\"}\n"
        )),
        [
            "spec.filters[1].any[0].exact: must hold exactly one `attribute: value` (has 2); \
             combine several with `all` or `any`",
            "spec.filters[1].any[1].all: must hold at least one filter expression",
            "spec.filters[1].any[2].not.prefix.Type: `Type` is not a CloudEvents attribute \
             name: lowercase letters and digits only",
            "spec.filters[2].suffix: one expression per list item, and `exact` is already set; \
             combine them with `all` or `any`",
            "spec.filters[3].prefix.type: the value must not be empty",
        ]
    );
    assert_eq!(
        lines(&trigger_with(
            "filter:\n  attributes: {Type: a, my-ext: b}\n"
        )),
        [
            "spec.filter.attributes.Type: `Type` is not a CloudEvents attribute name: lowercase \
             letters and digits only",
            "spec.filter.attributes.my-ext: `my-ext` is not a CloudEvents attribute name: \
             lowercase letters and digits only",
        ]
    );
}

/// Sinks: an unsupported kind, a `uri`, another namespace, the Trigger's own Broker.
#[test]
fn sink_problems() {
    assert_eq!(
        lines(&PING.replace(
            "      apiVersion: serving.knative.dev/v1\n      kind: Service\n",
            "      apiVersion: messaging.knative.dev/v1\n      kind: InMemoryChannel\n"
        )),
        [
            "spec.sink.ref.kind: not supported by skiff yet (sinks of kind `InMemoryChannel`; \
          supported: Service (serving.knative.dev/v1), Broker (eventing.knative.dev/v1), Job \
          (run.googleapis.com/v1))"
        ]
    );
    assert_eq!(
        lines(&ping_with("").replace(
            "    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: s}\n",
            "    uri: http://example.com/hook\n"
        )),
        [
            "spec.sink.uri: not supported by skiff yet (a `uri` sink; only ref: to a Service, \
          Broker or Job)"
        ]
    );
    assert_eq!(
        lines(&ping_with("").replace("name: s}", "name: s, namespace: other}")),
        [
            "spec.sink.ref.namespace: not supported by skiff yet (delivering to another namespace \
          (`other`; this object is in `default`))"
        ]
    );
    assert_eq!(
        lines(
            &trigger_with("")
                .replace("kind: Service, name: s}", "kind: Broker, name: default}")
                .replace(
                    "serving.knative.dev/v1, kind: Broker",
                    "eventing.knative.dev/v1, kind: Broker"
                )
        ),
        [
            "spec.subscriber.ref.name: the subscriber is the Trigger's own Broker `default`: every \
          event would come back to this Trigger"
        ]
    );
}

/// A Trigger without broker and subscriber, and a PingSource without sink or spec.
#[test]
fn missing_required_fields() {
    assert_eq!(
        lines(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  filter: {}\n"
        ),
        [
            "spec.broker: required: the name of the Broker in this namespace",
            "spec.subscriber: required: a `ref` to the Service, Broker or Job to deliver to",
        ]
    );
    assert_eq!(
        lines("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\n"),
        ["spec: required"]
    );
    assert_eq!(
        lines(
            "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata: {name: p}\nspec:\n  schedule: \"0 * * * *\"\n"
        ),
        ["spec.sink: required: a `ref` to the Service, Broker or Job to deliver to"]
    );
}

/// `data` and `dataBase64` together, bad base64, an empty schedule, a bad media type and bad
/// extension names.
#[test]
fn ping_source_value_problems() {
    assert_eq!(
        lines(&ping_with("data: hello\ndataBase64: aGVsbG8=\n")),
        ["spec.dataBase64: set either `data` or `dataBase64`, not both"]
    );
    assert_eq!(
        lines(&ping_with(
            "schedule: \"\"\ncontentType: json\ndataBase64: \"%%%\"\nceOverrides:\n  extensions: \
             {Team: a, type: b}\n"
        )),
        [
            "spec.schedule: must not be empty (leave it out for Knative's default, `* * * * *`: \
             every minute)",
            "spec.contentType: `json` is not a media type (examples: application/json, \
             text/plain; charset=utf-8)",
            "spec.dataBase64: not valid base64 (standard alphabet, with padding)",
            "spec.ceOverrides.extensions.Team: `Team` is not a CloudEvents attribute name: \
             lowercase letters and digits only",
            "spec.ceOverrides.extensions.type: `type` is a CloudEvents context attribute, which \
             the PingSource sets itself; extensions add attributes of their own",
        ]
    );
}

/// A known kind with another apiVersion names the one skiff reads; metadata rules as for
/// Services; every problem of a document at once.
#[test]
fn api_version_and_metadata() {
    assert_eq!(
        lines(&PING.replace(
            "sources.knative.dev/v1\nkind",
            "sources.knative.dev/v1beta2\nkind"
        )),
        [
            "apiVersion: `sources.knative.dev/v1beta2` is not accepted: skiff reads a PingSource \
          as `sources.knative.dev/v1`"
        ]
    );
    assert_eq!(
        lines(&TRIGGER.replace("apiVersion: eventing.knative.dev/v1\nkind", "kind")),
        ["apiVersion: required"]
    );
    assert_eq!(
        lines(
            "apiVersion: eventing.knative.dev/v1beta1\nkind: Broker\nmetadata:\n  name: My_Broker\n  \
             namespace: Team\n  labels: {\"bad key\": v}\n  annotations: {skiff.dev/x: y}\n"
        ),
        [
            "apiVersion: `eventing.knative.dev/v1beta1` is not accepted: skiff reads a Broker \
             as `eventing.knative.dev/v1`",
            "metadata.name: `My_Broker` must consist of lowercase letters, digits and '-', and \
             start and end with a letter or digit",
            "metadata.namespace: `Team` must consist of lowercase letters, digits and '-', and \
             start and end with a letter or digit",
            "metadata.labels.bad key: invalid label key: name part `bad key` must consist of \
             letters, digits, '-', '_' or '.', and start and end with a letter or digit",
            "metadata.annotations.skiff.dev/x: unknown skiff annotation (none is defined for a \
             Broker)",
        ]
    );
    assert_eq!(
        lines("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {}\n"),
        ["metadata.name: required"]
    );
}

/// Eventing documents mix with Services in one input, each read by its own kind.
#[test]
fn mixed_input() {
    let text = format!(
        "{BROKER}---\n{TRIGGER}---\n{PING}---\napiVersion: serving.knative.dev/v1\nkind: \
         Service\nmetadata: {{name: my-service}}\nspec:\n  template:\n    spec:\n      \
         containers: [{{image: nginx}}]\n"
    );
    let parsed = parse_objects(&text).expect("syntax");
    let kinds: Vec<&str> = parsed
        .documents
        .iter()
        .map(|(_, r)| r.as_ref().expect("valid").kind())
        .collect();
    assert_eq!(kinds, ["Broker", "Trigger", "PingSource", "Service"]);
}

/// The stored kinds and their spec types have OpenAPI schemas (the filter's recursion is
/// cut).
#[test]
fn schemas_exist() {
    use utoipa::PartialSchema;
    for schema in [
        PingSource::schema(),
        Broker::schema(),
        Trigger::schema(),
        SubscriptionsApiFilter::schema(),
    ] {
        let json = serde_json::to_string(&schema).expect("schema serializes");
        assert!(json.contains("properties"), "{json}");
    }
}
