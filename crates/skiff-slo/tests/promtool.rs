//! The generated Prometheus rules, checked by Prometheus's own tool: `promtool check rules`
//! accepts them and `promtool test rules` runs `tests/promtool/slo.test.yml` against them
//! (alerts fire under errors and stay quiet without; burn-rate recordings have the values
//! expected). The rules are also pinned in `tests/promtool/rules.yml`
//! (`EXPECTORATE=overwrite` rewrites it).
//!
//! Without promtool the test reports itself skipped, except under CI (`CI` set), where it
//! fails: install it with `apt-get install prometheus`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use skiff_slo::{ServiceSlo, prometheus_rules};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/promtool");

/// The SLOs of the test file, from their annotations as a user writes them.
fn slos() -> Vec<ServiceSlo> {
    [
        ("hello", vec![("slo-availability", "99.9")]),
        ("slow", vec![("slo-latency", "300ms@95")]),
        (
            "short",
            vec![("slo-availability", "99"), ("slo-period", "1h")],
        ),
    ]
    .into_iter()
    .map(|(service, pairs)| {
        let annotations: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (format!("skiff.dev/{k}"), v.to_owned()))
            .collect();
        let slo = skiff_api::slo::slo_of(&annotations)
            .expect("valid annotations")
            .expect("an objective");
        ("default".to_owned(), service.to_owned(), slo)
    })
    .collect()
}

/// Whether promtool can run; `None` (with the reason) when it cannot.
fn promtool_missing() -> Option<String> {
    match Command::new("promtool").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`promtool --version` exited with {}", out.status)),
        Err(e) => Some(format!("promtool cannot run: {e}")),
    }
}

fn promtool(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool ran a moment ago");
    println!(
        "$ promtool {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The generated rules are the pinned ones.
#[test]
fn rules_are_pinned() {
    expectorate::assert_contents("tests/promtool/rules.yml", &prometheus_rules(&slos()));
}

/// promtool accepts the generated rules and their unit tests pass.
#[test]
fn rules_pass_promtool() {
    if let Some(why) = promtool_missing() {
        if std::env::var_os("CI").is_some() {
            panic!("{why}: CI must run this test; apt-get install prometheus");
        }
        eprintln!("skipped: {why} (apt-get install prometheus)");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("rules.yml"), prometheus_rules(&slos())).expect("write");
    std::fs::copy(
        Path::new(FIXTURES).join("slo.test.yml"),
        dir.path().join("slo.test.yml"),
    )
    .expect("copy the test file");
    let check = promtool(dir.path(), &["check", "rules", "rules.yml"]);
    assert!(check.status.success(), "promtool check rules failed");
    let test = promtool(dir.path(), &["test", "rules", "slo.test.yml"]);
    assert!(test.status.success(), "promtool test rules failed");
}
