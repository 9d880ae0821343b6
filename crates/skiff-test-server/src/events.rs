//! The CloudEvents sink: `POST /` takes events delivered in binary mode (the `ce-*`
//! attributes as headers, the body as the data), logs each delivery and answers as the
//! environment says; `GET /events` reports what was received.
//!
//! # Log line
//!
//! Every delivery with a `ce-id` prints one line to stdout, flushed:
//!
//! ```text
//! event id=<ce-id> type=<ce-type> source=<ce-source> attempt=<n>
//! ```
//!
//! with the header values as received (empty when absent) and `n` the number of deliveries
//! of that id this process has seen, from 1.
//!
//! # Environment
//!
//! Read once at startup ([`Behaviour::from_lookup`]); an empty value is the same as unset,
//! and an invalid one stops the server with exit code 2.
//!
//! - `EVENT_FAIL_FIRST=N`: the first `N` deliveries of each event id answer `503` with the
//!   body `failing attempt n`; later ones succeed. Default 0.
//! - `EVENT_STATUS=CODE` (200 to 599): every delivery is answered `CODE`, with the body
//!   `event status CODE` (none for 204 and 304), whatever the other variables say.
//! - `EVENT_RETRY_AFTER=S` (seconds): failing answers (the `503`s of `EVENT_FAIL_FIRST`, and
//!   `EVENT_STATUS` when it is not 2xx) carry `Retry-After: S`.
//! - `EVENT_DELAY_MS=MS` (at most one hour): every delivery is held this long before it is
//!   answered (after it is logged and counted), to build a backlog.
//! - `EVENT_REPLY_TYPE=T`: a successful delivery is answered `200` with a reply event in
//!   binary mode: `ce-specversion: 1.0`, `ce-id: reply-<ce-id>`,
//!   `ce-source: /skiff-test-server`, `ce-type: T`, `content-type: application/json` and
//!   the body `{"replyTo":"<ce-id>"}` (no trailing newline). The reply is sent whether or
//!   not the request has `prefer: reply`.
//! - Otherwise a successful delivery is answered `202` with an empty body.
//!
//! A request without a (non-empty) `ce-id` is answered `400` `missing ce-id` at once: it is
//! not logged, counted or delayed.
//!
//! # Report
//!
//! `GET /events` answers `{"received": N, "ids": [...], "attempts": {"<id>": n, ...}}`:
//! the number of deliveries with a `ce-id`, the distinct ids in order of first arrival, and
//! the deliveries of each. Memory is bounded: at most [`MAX_IDS`] ids (and [`MAX_ID_BYTES`]
//! bytes of them) are remembered; beyond that the oldest is forgotten, so the report then
//! lists the most recent ids, and a forgotten id that comes back counts from 1 again.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::http::{Body, Request, Response};
use crate::json::Json;

/// Most distinct event ids remembered.
pub const MAX_IDS: usize = 100_000;
/// Most bytes of event ids remembered (an id may be as long as a header line).
pub const MAX_ID_BYTES: usize = 32 << 20;
/// Longest `EVENT_DELAY_MS` (one hour, as for `/delay`).
const MAX_DELAY_MS: u64 = 3_600_000;
/// The `ce-source` of reply events.
const REPLY_SOURCE: &str = "/skiff-test-server";

/// How the sink answers, from the `EVENT_*` environment variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// `EVENT_FAIL_FIRST`: deliveries of each id answered 503 before the first success.
    pub fail_first: u64,
    /// `EVENT_STATUS`: the status of every answer, overriding the rest.
    pub status: Option<u16>,
    /// `EVENT_RETRY_AFTER`: the `Retry-After` seconds of failing answers.
    pub retry_after: Option<u64>,
    /// `EVENT_DELAY_MS`: how long each delivery is held.
    pub delay: Duration,
    /// `EVENT_REPLY_TYPE`: the `ce-type` of reply events; no reply when `None`.
    pub reply_type: Option<String>,
}

impl Behaviour {
    /// Reads the `EVENT_*` variables through `lookup` (the environment in `main`, a map in
    /// tests). `Err` names the variable and what is wrong with its value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Behaviour, String> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let number = |name: &str, min: u64, max: u64| -> Result<Option<u64>, String> {
            get(name)
                .map(|v| match v.parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(n),
                    _ => Err(format!(
                        "{name} must be an integer from {min} to {max}, not `{v}`"
                    )),
                })
                .transpose()
        };
        let status = number("EVENT_STATUS", 200, 599)?
            .map(|n| u16::try_from(n).map_err(|e| e.to_string()))
            .transpose()?;
        let reply_type = get("EVENT_REPLY_TYPE");
        if let Some(t) = &reply_type
            && !t.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "EVENT_REPLY_TYPE must be printable ASCII without spaces, not `{t}`"
            ));
        }
        Ok(Behaviour {
            fail_first: number("EVENT_FAIL_FIRST", 0, u64::MAX)?.unwrap_or(0),
            status,
            retry_after: number("EVENT_RETRY_AFTER", 0, u64::from(u32::MAX))?,
            delay: Duration::from_millis(number("EVENT_DELAY_MS", 0, MAX_DELAY_MS)?.unwrap_or(0)),
            reply_type,
        })
    }
}

/// What has been received, bounded.
#[derive(Debug, Default)]
struct Tally {
    /// Deliveries with a `ce-id`, all of them.
    received: u64,
    /// Remembered ids in order of first arrival.
    order: VecDeque<Arc<str>>,
    /// Deliveries of each remembered id.
    attempts: HashMap<Arc<str>, u64>,
    /// Bytes of the remembered ids.
    bytes: usize,
}

impl Tally {
    /// Counts a delivery of `id`; returns its attempt number. Forgets the oldest ids when
    /// remembering a new one would pass `max_ids` or `max_bytes`.
    fn record(&mut self, id: &str, max_ids: usize, max_bytes: usize) -> u64 {
        self.received += 1;
        if let Some(n) = self.attempts.get_mut(id) {
            *n += 1;
            return *n;
        }
        while !self.order.is_empty()
            && (self.order.len() >= max_ids || self.bytes + id.len() > max_bytes)
        {
            if let Some(old) = self.order.pop_front() {
                self.bytes -= old.len();
                self.attempts.remove(&old);
            }
        }
        let id: Arc<str> = Arc::from(id);
        self.bytes += id.len();
        self.order.push_back(Arc::clone(&id));
        self.attempts.insert(id, 1);
        1
    }
}

/// The sink: its behaviour and what it has received.
#[derive(Debug)]
pub struct Sink {
    /// How to answer.
    behaviour: Behaviour,
    /// What was received.
    tally: Mutex<Tally>,
    /// [`MAX_IDS`], smaller in tests.
    max_ids: usize,
    /// [`MAX_ID_BYTES`], smaller in tests.
    max_bytes: usize,
}

impl Sink {
    /// A sink that has received nothing yet.
    pub fn new(behaviour: Behaviour) -> Sink {
        Sink::bounded(behaviour, MAX_IDS, MAX_ID_BYTES)
    }

    /// A sink remembering at most `max_ids` ids and `max_bytes` bytes of them.
    fn bounded(behaviour: Behaviour, max_ids: usize, max_bytes: usize) -> Sink {
        Sink {
            behaviour,
            tally: Mutex::new(Tally::default()),
            max_ids: max_ids.max(1),
            max_bytes,
        }
    }

    /// Answers one delivery (`POST /`), writing its log line to `log` (stdout in the
    /// server); holds it for `EVENT_DELAY_MS` first.
    pub fn receive(&self, req: &Request, log: &mut dyn Write) -> Response {
        let Some(id) = req.header("ce-id").filter(|id| !id.is_empty()) else {
            return Response::text(400, "missing ce-id\n");
        };
        let attempt = {
            let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
            let attempt = tally.record(&id, self.max_ids, self.max_bytes);
            // Under the lock, so that the lines of one id come out in attempt order.
            let _ = writeln!(
                log,
                "event id={id} type={} source={} attempt={attempt}",
                req.header("ce-type").unwrap_or_default(),
                req.header("ce-source").unwrap_or_default(),
            );
            let _ = log.flush();
            attempt
        };
        if !self.behaviour.delay.is_zero() {
            crate::routes::pause(self.behaviour.delay);
        }
        self.answer(&id, attempt)
    }

    /// The answer to delivery `attempt` of `id`.
    fn answer(&self, id: &str, attempt: u64) -> Response {
        let b = &self.behaviour;
        let mut resp = if let Some(status) = b.status {
            if matches!(status, 204 | 304) {
                Response::text(status, "")
            } else {
                Response::text(status, format!("event status {status}\n"))
            }
        } else if attempt <= b.fail_first {
            Response::text(503, format!("failing attempt {attempt}\n"))
        } else if let Some(reply_type) = &b.reply_type {
            let body = Json::obj([("replyTo", Json::str(id))]).to_string();
            Response {
                content_type: "application/json",
                headers: vec![
                    ("ce-specversion", "1.0".to_owned()),
                    ("ce-id", format!("reply-{id}")),
                    ("ce-source", REPLY_SOURCE.to_owned()),
                    ("ce-type", reply_type.clone()),
                ],
                body: Body::Full(body.into_bytes()),
                ..Response::text(200, "")
            }
        } else {
            Response::text(202, "")
        };
        if let Some(secs) = b.retry_after
            && !(200..300).contains(&resp.status)
        {
            resp.headers.push(("retry-after", secs.to_string()));
        }
        resp
    }

    /// The report of `GET /events`.
    pub fn report(&self) -> Json {
        let tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        let ids = tally.order.iter().map(|id| Json::str(&**id)).collect();
        let attempts = tally
            .order
            .iter()
            .map(|id| (id.to_string(), Json::UInt(tally.attempts[id])))
            .collect();
        Json::obj([
            ("received", Json::UInt(tally.received)),
            ("ids", Json::Arr(ids)),
            ("attempts", Json::Obj(attempts)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::http::Version;

    /// The behaviour for these variables.
    fn behaviour(vars: &[(&str, &str)]) -> Result<Behaviour, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Behaviour::from_lookup(|name| map.get(name).cloned())
    }

    /// A sink with these variables.
    fn sink(vars: &[(&str, &str)]) -> Sink {
        Sink::new(behaviour(vars).expect("valid variables"))
    }

    /// `POST /` with these headers and body.
    fn delivery(headers: &[(&str, &str)], body: &str) -> Request {
        Request {
            method: "POST".to_owned(),
            target: "/".to_owned(),
            path: "/".to_owned(),
            query: String::new(),
            version: Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// A binary-mode event with id `id`.
    fn event(id: &str) -> Request {
        delivery(
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", id),
                ("ce-source", "/src"),
                ("ce-type", "dev.skiff.test"),
                ("content-type", "application/json"),
            ],
            r#"{"n":1}"#,
        )
    }

    /// Delivers `req`: the response and the log line.
    fn deliver(sink: &Sink, req: &Request) -> (Response, String) {
        let mut log = Vec::new();
        let resp = sink.receive(req, &mut log);
        (resp, String::from_utf8(log).expect("utf-8 log"))
    }

    fn body(resp: &Response) -> &str {
        match &resp.body {
            Body::Full(b) => std::str::from_utf8(b).expect("utf-8 body"),
            Body::Stream(_) => panic!("a stream"),
        }
    }

    fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
        resp.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    // Unset and empty variables give the defaults; each variable parses into its field.
    #[test]
    fn behaviour_parses_the_variables() {
        assert_eq!(behaviour(&[]), Ok(Behaviour::default()));
        assert_eq!(
            behaviour(&[("EVENT_STATUS", ""), ("EVENT_REPLY_TYPE", "")]),
            Ok(Behaviour::default())
        );
        assert_eq!(
            behaviour(&[
                ("EVENT_FAIL_FIRST", "2"),
                ("EVENT_STATUS", "500"),
                ("EVENT_RETRY_AFTER", "3"),
                ("EVENT_DELAY_MS", "250"),
                ("EVENT_REPLY_TYPE", "dev.skiff.reply"),
                ("PORT", "9000"),
            ]),
            Ok(Behaviour {
                fail_first: 2,
                status: Some(500),
                retry_after: Some(3),
                delay: Duration::from_millis(250),
                reply_type: Some("dev.skiff.reply".to_owned()),
            })
        );
    }

    // Bad values are errors naming the variable.
    #[test]
    fn behaviour_rejects_bad_values() {
        for (name, value) in [
            ("EVENT_FAIL_FIRST", "-1"),
            ("EVENT_FAIL_FIRST", "two"),
            ("EVENT_STATUS", "99"),
            ("EVENT_STATUS", "600"),
            ("EVENT_STATUS", "5xx"),
            ("EVENT_RETRY_AFTER", "soon"),
            ("EVENT_DELAY_MS", "3600001"),
            ("EVENT_REPLY_TYPE", "a b"),
            ("EVENT_REPLY_TYPE", "a\r\nx: y"),
        ] {
            let err = behaviour(&[(name, value)]).expect_err(value);
            assert!(err.starts_with(name), "{err}");
        }
    }

    // By default each delivery is 202 with no body, logged with its attempt per id.
    #[test]
    fn default_answer_is_202_and_the_line_counts_attempts() {
        let sink = sink(&[]);
        let (resp, line) = deliver(&sink, &event("a"));
        assert_eq!((resp.status, body(&resp)), (202, ""));
        assert!(resp.headers.is_empty());
        assert_eq!(
            line,
            "event id=a type=dev.skiff.test source=/src attempt=1\n"
        );
        let (_, line) = deliver(&sink, &event("b"));
        assert!(line.ends_with("id=b type=dev.skiff.test source=/src attempt=1\n"));
        let (_, line) = deliver(&sink, &event("a"));
        assert!(line.ends_with("attempt=2\n"), "{line}");
        // Absent attributes print empty.
        let (_, line) = deliver(&sink, &delivery(&[("ce-id", "c")], ""));
        assert_eq!(line, "event id=c type= source= attempt=1\n");
    }

    // Without a ce-id: 400, and nothing is logged or counted.
    #[test]
    fn missing_id_is_a_400() {
        let sink = sink(&[("EVENT_DELAY_MS", "1000")]);
        for req in [
            delivery(&[("ce-type", "t")], "x"),
            delivery(&[("ce-id", "")], ""),
        ] {
            let start = Instant::now();
            let (resp, line) = deliver(&sink, &req);
            assert_eq!((resp.status, body(&resp)), (400, "missing ce-id\n"));
            assert_eq!(line, "");
            assert!(start.elapsed() < Duration::from_millis(1000));
        }
        assert_eq!(
            sink.report().to_string(),
            r#"{"received":0,"ids":[],"attempts":{}}"#
        );
    }

    // The first N deliveries of each id fail with 503 (and Retry-After), then they succeed.
    #[test]
    fn fail_first_counts_per_id() {
        let sink = sink(&[("EVENT_FAIL_FIRST", "2"), ("EVENT_RETRY_AFTER", "7")]);
        for n in 1..=2 {
            let (resp, _) = deliver(&sink, &event("a"));
            assert_eq!(resp.status, 503);
            assert_eq!(body(&resp), format!("failing attempt {n}\n"));
            assert_eq!(header(&resp, "retry-after"), Some("7"));
        }
        let (resp, _) = deliver(&sink, &event("b"));
        assert_eq!(
            (resp.status, body(&resp)),
            (503, "failing attempt 1\n"),
            "another id starts over"
        );
        let (resp, _) = deliver(&sink, &event("a"));
        assert_eq!((resp.status, header(&resp, "retry-after")), (202, None));
    }

    // EVENT_STATUS wins over failing first and replies; Retry-After only when it fails.
    #[test]
    fn status_overrides_the_rest() {
        let sink = sink(&[
            ("EVENT_STATUS", "500"),
            ("EVENT_FAIL_FIRST", "1"),
            ("EVENT_REPLY_TYPE", "r"),
            ("EVENT_RETRY_AFTER", "0"),
        ]);
        for _ in 0..3 {
            let (resp, _) = deliver(&sink, &event("a"));
            assert_eq!((resp.status, body(&resp)), (500, "event status 500\n"));
            assert_eq!(header(&resp, "retry-after"), Some("0"));
            assert_eq!(header(&resp, "ce-type"), None);
        }
        let sink = self::sink(&[("EVENT_STATUS", "200"), ("EVENT_RETRY_AFTER", "1")]);
        let (resp, _) = deliver(&sink, &event("a"));
        assert_eq!((resp.status, header(&resp, "retry-after")), (200, None));
        let sink = self::sink(&[("EVENT_STATUS", "204")]);
        let (resp, _) = deliver(&sink, &event("a"));
        assert_eq!((resp.status, body(&resp)), (204, ""));
    }

    // With a reply type, success is a 200 carrying a binary-mode reply event.
    #[test]
    fn reply_is_a_binary_event() {
        let sink = sink(&[
            ("EVENT_REPLY_TYPE", "dev.skiff.reply"),
            ("EVENT_FAIL_FIRST", "1"),
        ]);
        let (resp, _) = deliver(&sink, &event("e\"1"));
        assert_eq!(resp.status, 503);
        let (resp, _) = deliver(&sink, &event("e\"1"));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.content_type, "application/json");
        assert_eq!(
            resp.headers,
            vec![
                ("ce-specversion", "1.0".to_owned()),
                ("ce-id", "reply-e\"1".to_owned()),
                ("ce-source", "/skiff-test-server".to_owned()),
                ("ce-type", "dev.skiff.reply".to_owned()),
            ]
        );
        assert_eq!(body(&resp), r#"{"replyTo":"e\"1"}"#);
    }

    // EVENT_DELAY_MS holds each delivery, after it was logged.
    #[test]
    fn delay_holds_the_answer() {
        let sink = sink(&[("EVENT_DELAY_MS", "30")]);
        let start = Instant::now();
        let (resp, line) = deliver(&sink, &event("a"));
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(resp.status, 202);
        assert!(line.ends_with("attempt=1\n"));
    }

    // The report lists ids in first-arrival order with their attempts, and the total.
    #[test]
    fn report_lists_ids_in_arrival_order() {
        let sink = sink(&[]);
        for id in ["b", "a", "b", "c", "b"] {
            deliver(&sink, &event(id));
        }
        assert_eq!(
            sink.report().to_string(),
            r#"{"received":5,"ids":["b","a","c"],"attempts":{"b":3,"a":1,"c":1}}"#
        );
    }

    // Past the bounds the oldest ids are forgotten; the total still counts everything.
    #[test]
    fn memory_is_bounded() {
        let sink = Sink::bounded(Behaviour::default(), 3, 1 << 20);
        for id in ["a", "b", "c", "a", "d", "e"] {
            deliver(&sink, &event(id));
        }
        assert_eq!(
            sink.report().to_string(),
            r#"{"received":6,"ids":["c","d","e"],"attempts":{"c":1,"d":1,"e":1}}"#
        );
        let (_, line) = deliver(&sink, &event("a"));
        assert!(line.ends_with("attempt=1\n"), "a forgotten id starts over");

        let sink = Sink::bounded(Behaviour::default(), 100, 6);
        for id in ["aa", "bb", "cc", "dddd"] {
            deliver(&sink, &event(id));
        }
        assert_eq!(
            sink.report().to_string(),
            r#"{"received":4,"ids":["cc","dddd"],"attempts":{"cc":1,"dddd":1}}"#
        );
        assert_eq!(Sink::new(Behaviour::default()).max_ids, MAX_IDS);
    }
}
