//! The CLI against a real daemon: apply, update, get, describe, delete, dry-run, validate.

use skiff_test_utils::TestDaemon;

use crate::{SKIFF, assert_code, service_yaml, stderr, stdout};

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write manifest");
    p.to_string_lossy().into_owned()
}

/// The whole lifecycle through the CLI: create (revision 1), update (revision 2),
/// metadata-only update (no revision), repeat (unchanged), get in every format, describe,
/// dry-run, delete.
#[tokio::test]
async fn lifecycle_through_the_cli() {
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = write(dir.path(), "v1.yaml", &service_yaml("hello", "v1"));
    let o = d.cli(&["apply", "-f", &v1]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "service/hello created (revision hello-00001)\n");

    let o = d.cli(&["apply", "-f", &v1]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "service/hello unchanged\n");

    let v2 = write(dir.path(), "v2.yaml", &service_yaml("hello", "v2"));
    let o = d.cli(&["apply", "-f", &v2, "--dry-run"]);
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        "service/hello configured (revision hello-00002) (dry run)\n"
    );
    let o = d.cli(&["get", "revisions", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "dry run stored nothing"
    );

    let o = d.cli(&["apply", "-f", &v2]);
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        "service/hello configured (revision hello-00002)\n"
    );

    let labelled = service_yaml("hello", "v2").replace(
        "  name: hello\n",
        "  name: hello\n  labels:\n    team: web\n",
    );
    let v2l = write(dir.path(), "v2l.yaml", &labelled);
    let o = d.cli(&["apply", "-f", &v2l]);
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        "service/hello configured\n",
        "metadata-only: no new revision"
    );

    let o = d.cli(&["get", "services"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    let mut lines = out.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with("NAME") && header.contains("URL") && header.contains("READY"),
        "{out}"
    );
    let row = lines.next().expect("row");
    assert!(row.starts_with("hello "), "{out}");
    assert!(
        row.contains(&format!(
            "http://hello.default.localhost:{}",
            d.ingress().rsplit(':').next().expect("port")
        )),
        "{out}"
    );
    assert!(
        row.contains("hello-00002") && (row.contains("Unknown") || row.contains("False")),
        "{out}"
    );

    let o = d.cli(&["get", "revisions"]);
    let out = stdout(&o);
    assert!(
        out.contains("hello-00001") && out.contains("hello-00002"),
        "{out}"
    );

    let o = d.cli(&["get", "ksvc", "hello", "-o", "yaml"]);
    assert_code(&o, 0);
    let yaml = stdout(&o);
    assert!(
        yaml.contains("apiVersion: serving.knative.dev/v1") && yaml.contains("team: web"),
        "{yaml}"
    );
    assert!(
        yaml.contains("latestCreatedRevisionName: hello-00002"),
        "{yaml}"
    );

    let o = d.cli(&["get", "svc", "hello", "-o", "json"]);
    let svc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(svc["metadata"]["generation"], 2);
    assert_eq!(svc["status"]["observedGeneration"], 2);
    let ready = svc["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready");
    assert_ne!(
        ready["status"], "True",
        "no revision can run in this release"
    );

    let o = d.cli(&["describe", "service", "hello"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    for want in [
        "Name:",
        "hello",
        "URL:",
        "Revisions:",
        "hello-00001",
        "hello-00002",
        "Traffic:",
        "Conditions:",
        "ConfigurationsReady",
        "RoutesReady",
        "team=web",
    ] {
        assert!(out.contains(want), "describe lacks {want:?}:\n{out}");
    }

    let o = d.cli(&["delete", "service", "hello", "--dry-run"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("(dry run)"));
    let o = d.cli(&["delete", "service", "hello"]);
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        "service/hello deleted (with revisions hello-00001, hello-00002)\n"
    );
    let o = d.cli(&["get", "service", "hello"]);
    assert_code(&o, 4);
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    let o = d.cli(&["get", "revisions", "-A"]);
    assert_code(&o, 0);
    assert!(stderr(&o).contains("no revisions found"));
    d.cleanup().await.expect("cleanup");
}

/// A stale resourceVersion (from `get -o yaml`) is refused with 409 and exit code 5; the
/// round trip `get -o yaml | apply -f -` itself works.
#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    crate::apply(&d, &service_yaml("hello", "v1"));
    // Status updates bump the resourceVersion too (as in Kubernetes): let the revision settle
    // (its image is absent, so it fails at once) before taking the snapshot.
    let client = d.client();
    skiff_test_utils::wait_for(
        "the revision to fail its pull",
        std::time::Duration::from_millis(20),
        skiff_test_utils::MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let s = client.get_service("default", "hello").await.ok()?;
                s.condition("Ready")
                    .is_some_and(|c| c.status == skiff_api::object::ConditionStatus::False)
                    .then_some(())
            }
        },
    )
    .await
    .expect("settled");
    let snapshot = stdout(&d.cli(&["get", "svc", "hello", "-o", "yaml"]));
    assert!(snapshot.contains("resourceVersion"), "{snapshot}");
    let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(&snapshot));
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "service/hello unchanged\n");
    let edited = snapshot.replace("value: v1", "value: v2");
    crate::apply(&d, &edited);
    let again = snapshot.replace("value: v1", "value: v3");
    let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(&again));
    assert_code(&o, 5);
    assert!(
        stderr(&o).contains("changed since resourceVersion"),
        "{}",
        stderr(&o)
    );
    let now = stdout(&d.cli(&["get", "svc", "hello", "-o", "json"]));
    assert!(
        now.contains("\"v2\""),
        "the conflicting write changed nothing: {now}"
    );
    d.cleanup().await.expect("cleanup");
}

/// Without the token the API answers 401: the CLI from elsewhere, and raw HTTP.
#[tokio::test]
async fn token_is_required() {
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    let o = d.cli_remote(&["get", "services"]);
    assert_code(&o, 6);
    assert!(
        stderr(&o).contains("Authorization: Bearer"),
        "{}",
        stderr(&o)
    );
    let o = d.cli_remote(&["get", "services", "--token", "wrong-token-0000000000"]);
    assert_code(&o, 6);
    let o = d.cli_remote(&["get", "services", "--token", d.token()]);
    assert_code(&o, 0);
    let http = crate::http();
    let r = http
        .get(format!("{}/api/v1/services", d.api()))
        .send()
        .await
        .expect("http");
    assert_eq!(r.status().as_u16(), 401);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["code"], "Unauthorized");
    assert!(body["requestId"].as_str().is_some_and(|s| !s.is_empty()));
    let r = http
        .get(format!("{}/healthz", d.api()))
        .send()
        .await
        .expect("http");
    assert_eq!(r.status().as_u16(), 200);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.data_dir().join("token"))
            .expect("token")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    d.cleanup().await.expect("cleanup");
}

/// Invalid manifests: nothing of the input is applied, every problem is printed with its
/// file, path and line, exit code 3; `validate` agrees offline.
#[tokio::test]
async fn invalid_manifests_are_refused_whole() {
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = service_yaml("two", "x").replace(
        "        env:\n",
        "        ports:\n        - name: http\n        env:\n",
    );
    let multi = write(
        dir.path(),
        "multi.yaml",
        &format!("{}---\n{bad}", service_yaml("one", "x")),
    );
    let o = d.cli(&["apply", "-f", &multi]);
    assert_code(&o, 3);
    let err = stderr(&o);
    assert!(err.contains("multi.yaml (document 2): spec.template.spec.containers[0].ports[0].name (line 26, column 17): must be \"http1\" or \"h2c\""), "{err}");
    assert!(err.contains("nothing applied"), "{err}");
    let o = d.cli(&["get", "services", "-o", "json"]);
    assert!(
        stdout(&o).contains("\"items\": []"),
        "nothing stored: {}",
        stdout(&o)
    );
    let o = d.cli(&["validate", "-f", &multi]);
    assert_code(&o, 3);
    let o = d.cli(&[
        "validate",
        "-f",
        &write(dir.path(), "ok.yaml", &service_yaml("ok", "x")),
    ]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("1 valid Service"));
    let o = d.cli(&["apply", "-f", &write(dir.path(), "syntax.yaml", "a: [1\n")]);
    assert_code(&o, 3);
    assert!(stderr(&o).contains("syntax.yaml: line"), "{}", stderr(&o));
    // The server refuses what depends on its state, and the CLI places it in the file.
    let pinned = format!(
        "{}  traffic:\n  - revisionName: one-00042\n    percent: 100\n",
        service_yaml("one", "x")
    );
    let o = d.cli(&["apply", "-f", &write(dir.path(), "pinned.yaml", &pinned)]);
    assert_code(&o, 3);
    assert!(stderr(&o).contains("spec.traffic[0].revisionName (line 15, column 19): service `one` has no revision `one-00042`"), "{}", stderr(&o));
    d.cleanup().await.expect("cleanup");
}

/// A setting skiff accepts but that changes nothing here is applied with a warning naming
/// it (the API's `Warning` header, printed by the CLI), and `validate` says the same offline.
#[tokio::test]
async fn settings_without_effect_are_warned() {
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = service_yaml("tbc", "x").replace(
        "  template:\n    spec:\n",
        "  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/target-burst-capacity: \"200\"\n    spec:\n",
    );
    let file = write(dir.path(), "tbc.yaml", &yaml);
    let warning = "tbc.yaml: spec.template.metadata.annotations.autoscaling.knative.dev/target-burst-capacity: has no effect: skiff's activator is always in the request path";
    let o = d.cli(&["apply", "-f", &file]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "service/tbc created (revision tbc-00001)\n");
    assert_eq!(stderr(&o).matches(warning).count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).starts_with("Warning: "), "{}", stderr(&o));
    let o = d.cli(&["validate", "-f", &file]);
    assert_code(&o, 0);
    assert!(stderr(&o).contains(warning), "{}", stderr(&o));
    // Without the setting: no warning.
    let plain = write(dir.path(), "plain.yaml", &service_yaml("plain", "x"));
    let o = d.cli(&["apply", "-f", &plain]);
    assert_code(&o, 0);
    assert!(!stderr(&o).contains("Warning"), "{}", stderr(&o));
    d.cleanup().await.expect("cleanup");
}

/// A reader that goes away (`skiff … | head -1`, `| grep -q`) ends the CLI quietly with
/// status 0, not with a panic and a backtrace: here the pipe's read end is closed before the
/// CLI writes a byte, so its first write meets EPIPE.
#[tokio::test]
async fn broken_pipe_ends_quietly() {
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    crate::apply(&d, &service_yaml("hello", "v1"));
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = write(dir.path(), "ok.yaml", &service_yaml("ok", "x"));
    for args in [
        vec!["describe", "service", "hello"],
        vec!["get", "services", "-o", "yaml"],
        vec!["validate", "-f", manifest.as_str()],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let o = std::process::Command::new(SKIFF)
            .args(&args)
            .env("SKIFF_DATA_DIR", d.data_dir())
            .stdout(writer)
            .output()
            .expect("run skiff");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
    d.cleanup().await.expect("cleanup");
}

/// Every real knative/docs sample is accepted or refused with a field path by `validate`.
#[test]
fn knative_samples_validate() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../skiff-api/tests/fixtures/knative"
    );
    for (file, code, needle) in [
        ("autoscale-go.yaml", 0, "1 valid Service"),
        ("multi-container.yaml", 0, "1 valid Service"),
        (
            "helloworld-go.yaml",
            3,
            "spec.template.spec.containers[0].image (line 11, column 16)",
        ),
        (
            "secrets-go.yaml",
            3,
            "spec.template.spec.containers[0].volumeMounts[0].readOnly (line 27, column 11): must be true",
        ),
        (
            "tag-header-based-routing.yaml",
            3,
            "(document 2): spec.template.spec.containers[0].image (line 42",
        ),
    ] {
        let o = std::process::Command::new(SKIFF)
            .args(["validate", "-f", &format!("{dir}/{file}")])
            .output()
            .expect("skiff validate");
        assert_code(&o, code);
        let text = format!("{}{}", stdout(&o), stderr(&o));
        assert!(text.contains(needle), "{file}: {text}");
    }
}
