//! End-to-end tests: the real `skiff server` on free loopback ports with a temporary data
//! directory, driven through the real CLI (and, where the CLI cannot express a case, raw HTTP).

mod cli;
mod crash;
mod daemon;
mod dashboard;
mod eventing;
mod examples;
mod hardening;
mod images;
mod jobs;
mod lifecycle;
mod network;
mod observability;
mod parking;
mod requests;
mod rollout;
mod runtime;
mod secrets;
mod serving;

/// The skiff binary under test.
pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// A minimal valid Service whose container sets `TARGET`. Its image is never pulled
/// (`imagePullPolicy: Never`, and it is not present), so these tests touch no registry: the
/// revision ends `Ready=False` with `ImagePullFailed`, which they do not depend on.
pub fn service_yaml(name: &str, target: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n      - image: skiff.local/absent:v1\n        imagePullPolicy: Never\n        env:\n        - name: TARGET\n          value: \"{target}\"\n"
    )
}

/// Standard output of a CLI run as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error of a CLI run as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a CLI run's exit code, showing its output when it differs.
#[track_caller]
pub fn assert_code(o: &std::process::Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code\n--- stdout\n{}\n--- stderr\n{}",
        stdout(o),
        stderr(o)
    );
}

/// A plain HTTP client for requests the CLI cannot make (no token, the ingress).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Whether a test that runs containers must be skipped here (no registry tools or no
/// runc); says why when it must.
pub fn skip_without_runc() -> bool {
    if let Some(why) = skiff_test_utils::registry::skip_reason() {
        eprintln!("skipped: {why}");
        return true;
    }
    if std::process::Command::new("runc")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: runc is not installed");
        return true;
    }
    false
}

/// A registry holding the workspace's runtime-info test server image as `skiff/info:v1`,
/// a daemon started with `daemon_args`, and the image's reference in that registry.
pub async fn registry_with_info_image(
    daemon_args: &[&str],
) -> (
    skiff_test_utils::registry::Registry,
    skiff_test_utils::TestDaemon,
    String,
) {
    let image = skiff_test_utils::images::runtime_info_image().expect("runtime-info image");
    registry_with_image(&image, "skiff/info:v1", daemon_args).await
}

/// A registry holding `image` as `repo_tag` (OCI format), a daemon started with
/// `daemon_args`, and the image's reference in that registry.
pub async fn registry_with_image(
    image: &skiff_test_utils::oci::ImageBuilder,
    repo_tag: &str,
    daemon_args: &[&str],
) -> (
    skiff_test_utils::registry::Registry,
    skiff_test_utils::TestDaemon,
    String,
) {
    use skiff_test_utils::registry::{PushFormat, Registry};
    let reg = Registry::start().await.expect("registry");
    let dir = tempfile::tempdir().expect("layout");
    image.write_oci_layout(dir.path(), "v1").expect("layout");
    reg.push_oci_layout(dir.path(), "v1", repo_tag, PushFormat::Oci, false)
        .await
        .expect("push");
    let d = skiff_test_utils::TestDaemon::start_with(SKIFF, daemon_args)
        .await
        .expect("daemon");
    let image = format!("{}/{repo_tag}", reg.addr());
    (reg, d, image)
}

/// Applies a manifest through the CLI and asserts it succeeded.
#[track_caller]
pub fn apply(d: &skiff_test_utils::TestDaemon, yaml: &str) {
    let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(yaml));
    assert_code(&o, 0);
}

/// `t`'s lines, each indented by `n` spaces (to place YAML fragments in a manifest).
pub fn indent(t: &str, n: usize) -> String {
    t.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(n)))
        .collect()
}
