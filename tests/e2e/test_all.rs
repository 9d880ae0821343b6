//! End-to-end tests: the real `skiff server` on free loopback ports with a temporary data
//! directory, driven through the real CLI (and, where the CLI cannot express a case, raw HTTP).

mod cli;
mod crash;
mod daemon;
mod images;
mod runtime;
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
