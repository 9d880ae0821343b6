//! What instances reach: other Services by name through the router (at zero too, tags
//! included), outside names through the daemon's resolver and egress under the revision's
//! `skiff.dev/egress` policy, and never the daemon's API unless the host is named. The
//! "outside" here is the host's loopback: a DNS server (`dns_upstream`) that knows
//! `api.example.test` as 127.0.0.1, and an HTTP server there.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};

use crate::serving::{get, host, metrics_text, service, wait_instances, wait_service_ready};
use crate::{apply, registry_with_info_image, skip_without_runc};

/// What `/fetch?url=…` of the test server inside `svc` reported: the status it got (or
/// 0) and the body, or the error.
async fn fetch_from(d: &TestDaemon, svc: &str, url: &str) -> (u64, String) {
    let http = crate::http();
    let path = format!("/fetch?url={}", url.replace(':', "%3A").replace('/', "%2F"));
    let a = get(&http, d, &host(svc), &path).await;
    let v: Value = serde_json::from_str(&a.body)
        .unwrap_or_else(|_| panic!("{svc} {url}: not JSON: {} {}", a.status, a.body));
    match v["error"].as_str() {
        Some(e) => (0, e.to_owned()),
        None => (
            v["status"].as_u64().unwrap_or(0),
            v["body"].as_str().unwrap_or_default().to_owned(),
        ),
    }
}

/// A DNS server on the host's loopback: `api.example.test` is 127.0.0.1, nothing else exists.
async fn dns_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use simple_dns::rdata::{A, RData};
    use simple_dns::{CLASS, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("dns bind");
    let addr = sock.local_addr().expect("dns addr");
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Packet::parse(&buf[..n]) else {
                continue;
            };
            let mut r = Packet::new_reply(q.id());
            r.set_flags(PacketFlag::RECURSION_AVAILABLE);
            let Some(question) = q.questions.first().cloned() else {
                continue;
            };
            let name = question.qname.to_string();
            if name.trim_end_matches('.') == "api.example.test" {
                if question.qtype == QTYPE::TYPE(TYPE::A) {
                    r.answers.push(ResourceRecord::new(
                        question.qname.clone(),
                        CLASS::IN,
                        5,
                        RData::A(A {
                            address: u32::from(Ipv4Addr::LOCALHOST),
                        }),
                    ));
                }
            } else {
                *r.rcode_mut() = RCODE::NameError;
            }
            r.questions.push(question);
            if let Ok(bytes) = r.build_bytes_vec() {
                let _ = sock.send_to(&bytes, from).await;
            }
        }
    });
    (addr, task)
}

/// An HTTP server on the host's loopback answering every request with `body`.
async fn http_server(body: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("http bind");
    let addr = l.local_addr().expect("http addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

/// From inside `frontend`, each of the four names of `backend` answers with backend's
/// page, also when backend is at zero; a tag's name reaches its revision.
#[tokio::test]
async fn services_reach_each_other_by_name() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) =
        registry_with_info_image(&["--scale-to-zero-grace-period-seconds", "1"]).await;
    let window = "autoscaling.knative.dev/window: \"6s\"";
    apply(
        &d,
        &service("backend", &image, window, "", "backend-one", ""),
    );
    apply(&d, &service("frontend", &image, "", "", "frontend", ""));
    wait_service_ready(&d, "backend").await;
    wait_service_ready(&d, "frontend").await;
    let names = [
        "backend",
        "backend.default",
        "backend.default.svc",
        "backend.default.svc.cluster.local",
    ];
    for name in names {
        let (status, body) = fetch_from(&d, "frontend", &format!("http://{name}/")).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.contains("hello backend-one"), "{name}: {body}");
    }
    // At zero: the request from inside waits in the activator like one from outside.
    wait_instances(&d, "backend", "backend at zero", |l| l.is_empty()).await;
    for name in names {
        let (status, body) = fetch_from(&d, "frontend", &format!("http://{name}/")).await;
        assert_eq!(status, 200, "{name} (from zero): {body}");
        assert!(body.contains("hello backend-one"), "{name}: {body}");
    }
    // Tags: `new` names the latest revision, which takes no traffic by percent.
    let traffic = "- revisionName: backend-00001\n  percent: 100\n  tag: old\n- latestRevision: true\n  percent: 0\n  tag: new\n";
    apply(
        &d,
        &service("backend", &image, window, "", "backend-two", traffic),
    );
    let client = d.client();
    wait_for(
        "both tags routed",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let s = client.get_service("default", "backend").await.ok()?;
                (s.status.traffic.len() == 2
                    && s.status
                        .traffic
                        .iter()
                        .any(|t| t.revision_name == "backend-00002"))
                .then_some(())
            }
        },
    )
    .await
    .expect("traffic");
    for (name, want) in [
        ("new-backend", "hello backend-two"),
        ("old-backend.default", "hello backend-one"),
        ("backend", "hello backend-one"),
    ] {
        let (status, body) = fetch_from(&d, "frontend", &format!("http://{name}/")).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.contains(want), "{name}: {body}");
    }
    // A name that is no Service does not resolve.
    let (status, err) = fetch_from(&d, "frontend", "http://nosuchservice/").await;
    assert_eq!(status, 0, "{err}");
    assert!(err.starts_with("resolve"), "{err}");
    d.cleanup().await.expect("cleanup");
}

/// `skiff.dev/egress` decides what an instance reaches outside: a named host is reached
/// whatever it resolves to (here the host's loopback), `none` and the default (`public`)
/// do not resolve it, and the daemon's API is out of reach unless the host is named.
#[tokio::test]
async fn egress_follows_the_policy() {
    if skip_without_runc() {
        return;
    }
    let (dns, dns_task) = dns_server().await;
    let (web, web_task) = http_server("external-ok").await;
    let dns_arg = dns.to_string();
    let (_reg, d, image) = registry_with_info_image(&["--dns-upstream", &dns_arg]).await;
    let api_port = d.api().rsplit(':').next().unwrap_or_default().to_owned();
    let cases = [
        ("eg-named", "skiff.dev/egress: api.example.test"),
        ("eg-none", "skiff.dev/egress: none"),
        ("eg-default", ""),
        (
            "eg-other",
            "skiff.dev/egress: \"other.example.test, 10.0.0.0/8\"",
        ),
        ("eg-host", "skiff.dev/egress: host.skiff.internal"),
    ];
    for (name, annotation) in cases {
        apply(&d, &service(name, &image, annotation, "", name, ""));
    }
    for (name, _) in cases {
        wait_service_ready(&d, name).await;
    }
    let url = format!("http://api.example.test:{}/", web.port());
    let (status, body) = fetch_from(&d, "eg-named", &url).await;
    assert_eq!(status, 200, "named: {body}");
    assert_eq!(body, "external-ok");
    for name in ["eg-none", "eg-default", "eg-other"] {
        let (status, err) = fetch_from(&d, name, &url).await;
        assert_eq!(status, 0, "{name} reached it: {err}");
        assert!(err.starts_with("resolve"), "{name}: {err}");
    }
    // The daemon's API: not by the host's name unless named, never by loopback (that is
    // the instance's own), never by the test server's name for the host.
    let healthz = |h: &str| format!("http://{h}:{api_port}/healthz");
    for name in ["eg-named", "eg-none", "eg-default"] {
        let (status, err) = fetch_from(&d, name, &healthz("host.skiff.internal")).await;
        assert_eq!(status, 0, "{name} reached the API: {err}");
        assert!(err.starts_with("resolve"), "{name}: {err}");
        let (status, err) = fetch_from(&d, name, &healthz("127.0.0.1")).await;
        assert_eq!(status, 0, "{name} reached the API on loopback: {err}");
        assert!(err.starts_with("connect"), "{name}: {err}");
    }
    // An address the policy refuses is reset at once: 10.255.255.1 is private.
    let (status, err) = fetch_from(&d, "eg-default", "http://10.255.255.1:9/").await;
    assert_eq!(status, 0, "{err}");
    assert!(err.contains("reset") || err.contains("refused"), "{err}");
    // Naming the host reaches it.
    let (status, body) = fetch_from(&d, "eg-host", &healthz("host.skiff.internal")).await;
    assert_eq!(status, 200, "host named: {body}");
    // Refusals are counted.
    let text = metrics_text(&d).await.unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.starts_with("skiff_egress_refused_total") && l.contains("kind=\"dns\"")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("skiff_egress_refused_total") && l.contains("kind=\"connect\"")),
        "{text}"
    );
    d.cleanup().await.expect("cleanup");
    dns_task.abort();
    web_task.abort();
}
