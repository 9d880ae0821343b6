//! The examples a user copies work as their README says.

use std::time::Duration;

use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};

use crate::{SKIFF, assert_code, skip_without_runc, stdout};

/// `examples/app`: a Secret and a ConfigMap, `backend`, and `frontend` whose CGI page reads
/// the secret from its environment and the config from a mounted file and calls `backend`
/// by name; `skiff get secrets` shows the secret's keys, never its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_example_works() {
    if skip_without_runc() {
        return;
    }
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    let layout = d.data_dir().with_file_name("example-layout");
    skiff_test_utils::images::sample_image()
        .expect("the sample image")
        .write_oci_layout(&layout, "v1")
        .expect("its layout");
    let layout_arg = layout.display().to_string();
    assert_code(
        &d.cli(&[
            "images",
            "import",
            &layout_arg,
            "--tag",
            "skiff.local/hello:v1",
        ]),
        0,
    );
    let dir = skiff_test_utils::images::workspace_root().join("examples/app");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/app")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let yaml: String = files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("an example"))
        .collect();
    let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(&yaml));
    assert_code(&o, 0);

    let http = crate::http();
    let page = wait_for(
        "frontend's page",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let http = http.clone();
            let url = format!("http://{}/cgi-bin/page", d.ingress());
            async move {
                let resp = http
                    .get(url)
                    .header("host", "frontend.default.localhost")
                    .send()
                    .await
                    .ok()?;
                if !resp.status().is_success() {
                    return None;
                }
                let body = resp.text().await.ok()?;
                body.contains("backend says: <!doctype").then_some(body)
            }
        },
    )
    .await
    .expect("the page");
    assert!(
        page.contains("greeting: hello from the config map"),
        "{page}"
    );
    assert!(
        page.contains("database password is 9 characters long"),
        "{page}"
    );
    assert!(page.contains("Hello from skiff!"), "{page}");

    let o = d.cli(&["get", "secrets"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("db") && !stdout(&o).contains("change-me"),
        "{}",
        stdout(&o)
    );
    for svc in ["frontend", "backend"] {
        assert_code(&d.cli(&["delete", "service", svc]), 0);
    }
    d.cleanup().await.expect("cleanup");
    let _ = std::fs::remove_dir_all(&layout);
}
