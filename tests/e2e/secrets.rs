//! Secrets and ConfigMaps through the real daemon and CLI: applied beside Services, shown as
//! keys and sizes only, encrypted at rest (the plaintext is in no byte of the store, no API
//! answer, no CLI output and no log line), and given to containers in runc as environment
//! variables; a revision missing its Secret heals when it appears; the key rotates.

use std::time::Duration;

use serde_json::Value;
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};

use crate::runtime::{http, instance_where, ready, service};
use crate::{
    apply, assert_code, registry_with_info_image, service_yaml, skip_without_runc, stderr, stdout,
};

/// The plaintexts these tests store; none may appear anywhere but inside the container.
const SECRETS: &[&str] = &[
    "hunter2-PLAINTEXT",
    "literal-PLAINTEXT",
    "file-PLAINTEXT",
    "env-PLAINTEXT",
];

/// Every byte of the state store (the database and its write-ahead log).
fn store_bytes(d: &TestDaemon) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        if let Ok(b) = std::fs::read(d.data_dir().join(f)) {
            all.extend(b);
        }
    }
    all
}

#[track_caller]
fn assert_no_plaintext(what: &str, text: &[u8]) {
    for s in SECRETS {
        assert!(
            !text.windows(s.len()).any(|w| w == s.as_bytes()),
            "{what} holds the plaintext {s}"
        );
    }
}

/// `apply -f` takes Secrets and ConfigMaps beside Services; get, describe, `secrets create`,
/// errors with paths, rotate-key and delete; the plaintext is never shown nor stored.
#[tokio::test]
async fn secrets_are_stored_encrypted_and_never_shown() {
    let d = TestDaemon::start(crate::SKIFF).await.expect("daemon");
    // hunter2-PLAINTEXT, base64.
    let file = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\ndata: {{password: aHVudGVyMi1QTEFJTlRFWFQ=}}\nstringData: {{user: admin}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{mode: fast}}\n---\n{}",
        service_yaml("sec-cli", "x")
    );
    let o = d.cli_with_stdin(&["validate", "-f", "-"], Some(&file));
    assert_code(&o, 0);
    assert!(stdout(&o).contains("1 valid Secret"), "{}", stdout(&o));
    let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(&file));
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("secret/db created"), "{out}");
    assert!(out.contains("configmap/settings created"), "{out}");
    assert!(out.contains("service/sec-cli created"), "{out}");
    let mut shown = vec![out];

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, "file-PLAINTEXT").expect("write");
    let o = d.cli(&[
        "secrets",
        "create",
        "api",
        "--from-literal",
        "token=literal-PLAINTEXT",
        "--from-file",
        &format!("cert={}", path.display()),
    ]);
    assert_code(&o, 0);
    shown.push(stdout(&o));

    let o = d.cli(&["get", "secrets"]);
    assert_code(&o, 0);
    let table = stdout(&o);
    assert!(table.contains("db") && table.contains("Opaque"), "{table}");
    shown.push(table);
    let o = d.cli(&["get", "secrets", "-o", "json"]);
    assert_code(&o, 0);
    shown.push(stdout(&o));
    let o = d.cli(&["get", "configmaps"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("settings"));
    let o = d.cli(&["describe", "secret", "db"]);
    assert_code(&o, 0);
    let described = stdout(&o);
    assert!(described.contains("password:  17 bytes"), "{described}");
    assert!(described.contains("user:  5 bytes"), "{described}");
    shown.push(described);
    let o = d.cli(&["describe", "secret", "api"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("cert:  14 bytes"), "{}", stdout(&o));
    shown.push(stdout(&o));
    let raw = d.client().get_secret("default", "db").await.expect("get");
    shown.push(serde_json::to_string(&raw).expect("json"));

    // Bad input: a path per problem, exit 3, no value repeated.
    let bad = "apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  password: 'hunter2-PLAINTEXT'\n  a/b: eA==\n";
    let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(bad));
    assert_code(&o, 3);
    let err = stderr(&o);
    assert!(err.contains("data.password (line 6"), "{err}");
    assert!(err.contains("data.a/b"), "{err}");
    assert!(err.contains("data..dockerconfigjson"), "{err}");
    shown.push(err);

    let before = store_bytes(&d);
    assert!(before.len() > 1000, "the store was read");
    assert_no_plaintext("state.db", &before);

    let o = d.cli(&["secrets", "rotate-key"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("2 secrets re-encrypted"),
        "{}",
        stdout(&o)
    );
    assert!(!d.data_dir().join("secret.key.next").exists());
    let key = std::fs::metadata(d.data_dir().join("secret.key")).expect("key");
    assert_eq!(key.len(), 32);
    // Still readable after the rotation, and after a restart with the rotated key.
    let o = d.cli(&["describe", "secret", "db"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("password:  17 bytes"));

    let o = d.cli(&["delete", "secret", "api"]);
    assert_code(&o, 0);
    let o = d.cli(&["get", "secret", "api"]);
    assert_code(&o, 4);

    for (i, s) in shown.iter().enumerate() {
        assert_no_plaintext(&format!("output {i}"), s.as_bytes());
    }
    assert_no_plaintext("state.db after rotation", &store_bytes(&d));
    assert_no_plaintext("the daemon's log", d.log_text().as_bytes());
    d.cleanup().await.expect("cleanup");
}

/// The revision's `Ready` condition as (status, reason, message).
async fn ready_condition(d: &TestDaemon, rev: &str) -> Option<(String, String, String)> {
    let r = d.client().get_revision("default", rev).await.ok()?;
    let c = r.condition("Ready")?;
    Some((
        format!("{:?}", c.status),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

/// A revision whose Secret is missing is `CreateContainerConfigError` naming the Secret;
/// it heals when the Secret is created; its container gets env, envFrom with a prefix and a
/// ConfigMap key, nothing for an optional missing key, and secret, configMap and projected
/// volumes (items, paths, modes, read-only); the plaintext is in no byte of the store, no
/// answer and no log line, even after rotate-key.
#[tokio::test]
async fn secret_env_reaches_the_container_and_heals() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(
        &d,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config}\ndata: {MODE: fast}\n",
    );
    let yaml = service(
        "sec-env",
        &image,
        "env:\n- name: DB_PASSWORD\n  valueFrom:\n    secretKeyRef: {name: app-secret, key: password}\n- name: OPTIONAL\n  valueFrom:\n    secretKeyRef: {name: app-secret, key: absent, optional: true}\n- name: MODE\n  valueFrom:\n    configMapKeyRef: {name: app-config, key: MODE}\nenvFrom:\n- secretRef: {name: app-secret}\n  prefix: S_\n- configMapRef: {name: absent-config, optional: true}\nvolumeMounts:\n- {name: creds, mountPath: /etc/creds, readOnly: true}\n- {name: cfg, mountPath: /etc/cfg, readOnly: true}\n- {name: proj, mountPath: /etc/proj, readOnly: true}\n",
        "volumes:\n- name: creds\n  secret:\n    secretName: app-secret\n    defaultMode: 256\n    items: [{key: password, path: db/pw, mode: 288}]\n- name: cfg\n  configMap: {name: app-config}\n- name: proj\n  projected:\n    sources:\n    - secret: {name: app-secret, items: [{key: user, path: u}]}\n    - configMap: {name: app-config}\n    - configMap: {name: absent-config, optional: true}\n",
    );
    apply(&d, &yaml);
    let (_, reason, message) = wait_for(
        "CreateContainerConfigError",
        Duration::from_millis(50),
        MAX_WAIT,
        || async {
            ready_condition(&d, "sec-env-00001")
                .await
                .filter(|(s, r, _)| s == "False" && r == "CreateContainerConfigError")
        },
    )
    .await
    .expect("the revision says what is missing");
    assert_eq!(reason, "CreateContainerConfigError");
    assert!(
        message.contains("Secret `app-secret` not found"),
        "{message}"
    );
    let o = d.cli(&["describe", "service", "sec-env"]);
    assert!(
        stdout(&o).contains("CreateContainerConfigError"),
        "{}",
        stdout(&o)
    );

    let o = d.cli(&[
        "secrets",
        "create",
        "app-secret",
        "--from-literal",
        "password=env-PLAINTEXT",
        "--from-literal",
        "user=admin",
    ]);
    assert_code(&o, 0);
    let inst = instance_where(
        &d,
        "sec-env",
        "a ready instance once the Secret exists",
        ready,
    )
    .await;
    let id = inst["id"].as_str().expect("id").to_owned();
    let (status, body) = http(&d, &id, "GET", "/info").await;
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).expect("info json");
    let env = &info["env"];
    assert_eq!(env["DB_PASSWORD"], "env-PLAINTEXT", "{env}");
    assert_eq!(env["S_password"], "env-PLAINTEXT", "{env}");
    assert_eq!(env["S_user"], "admin", "{env}");
    assert_eq!(env["MODE"], "fast", "{env}");
    assert!(env.get("OPTIONAL").is_none(), "{env}");
    // Volumes: items at their paths with their modes, read-only.
    let file = async |path: &str| -> (u16, Value) {
        let (status, body) = http(&d, &id, "GET", &format!("/file?path={path}")).await;
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    };
    let (status, f) = file("/etc/creds/db/pw").await;
    assert_eq!(status, 200, "{f}");
    assert_eq!(f["content"], "env-PLAINTEXT");
    assert_eq!(f["mode"], "440");
    assert_eq!(f["writable"], false, "{f}");
    let (status, _) = file("/etc/creds/user").await;
    assert_eq!(status, 404, "only the listed items");
    let (_, f) = file("/etc/cfg/MODE").await;
    assert_eq!(f["content"], "fast");
    assert_eq!(f["mode"], "644");
    let (_, f) = file("/etc/proj/u").await;
    assert_eq!(f["content"], "admin");
    let (_, f) = file("/etc/proj/MODE").await;
    assert_eq!(f["content"], "fast");
    wait_for(
        "Ready=True",
        Duration::from_millis(50),
        MAX_WAIT,
        || async {
            ready_condition(&d, "sec-env-00001")
                .await
                .filter(|(s, _, _)| s == "True")
        },
    )
    .await
    .expect("healed");

    let o = d.cli(&["secrets", "rotate-key"]);
    assert_code(&o, 0);
    let o = d.cli(&["describe", "service", "sec-env"]);
    assert_code(&o, 0);
    assert_no_plaintext("describe service", o.stdout.as_slice());
    let o = d.cli(&["get", "revisions", "-o", "json"]);
    assert_no_plaintext("get revisions", o.stdout.as_slice());
    assert_no_plaintext("state.db", &store_bytes(&d));
    assert_no_plaintext("the daemon's log", d.log_text().as_bytes());
    d.cleanup().await.expect("cleanup");
}

/// `imagePullSecrets`: a `kubernetes.io/dockerconfigjson` Secret's credentials pull from a
/// registry that requires them; a revision naming one not created yet fails to pull and
/// heals when it is created; naming a Secret of another type is refused at apply with the
/// field's path.
#[tokio::test]
async fn image_pull_secrets_authenticate_the_pull() {
    if skip_without_runc() {
        return;
    }
    use skiff_test_utils::registry::{PushFormat, Registry};
    let reg = Registry::start_with_htpasswd("puller", "pull-PLAINTEXT")
        .await
        .expect("registry");
    let layout = tempfile::tempdir().expect("layout");
    skiff_test_utils::images::runtime_info_image()
        .expect("image")
        .write_oci_layout(layout.path(), "v1")
        .expect("layout");
    reg.push_oci_layout(layout.path(), "v1", "skiff/info:v1", PushFormat::Oci, false)
        .await
        .expect("push");
    let image = format!("{}/skiff/info:v1", reg.addr());
    let d = TestDaemon::start(crate::SKIFF).await.expect("daemon");

    // An Opaque Secret named as a pull secret: refused with its path.
    let o = d.cli(&["secrets", "create", "opaque", "--from-literal", "a=b"]);
    assert_code(&o, 0);
    let svc = |name: &str, secret: &str| {
        service(
            name,
            &image,
            "",
            &format!("imagePullSecrets:\n- name: {secret}\n"),
        )
    };
    let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(&svc("pull-bad", "opaque")));
    assert_code(&o, 3);
    assert!(
        stderr(&o).contains("spec.template.spec.imagePullSecrets[0].name"),
        "{}",
        stderr(&o)
    );

    let config = format!(
        "{{\"auths\": {{\"{}\": {{\"username\": \"puller\", \"password\": \"pull-PLAINTEXT\"}}}}}}",
        reg.addr()
    );
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: regcred}}\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{config}'\n"
    );
    apply(&d, &secret);
    apply(&d, &svc("pull-ok", "regcred"));
    let inst = instance_where(
        &d,
        "pull-ok",
        "a ready instance pulled with the pull secret",
        ready,
    )
    .await;
    assert!(inst["id"].as_str().is_some());

    // Naming a pull secret not created yet: the registry refuses the pull; creating the
    // Secret makes the revision try again at once, and it heals.
    apply(&d, &svc("pull-late", "late-cred"));
    let (_, reason, _) = wait_for(
        "ImagePullFailed",
        Duration::from_millis(50),
        MAX_WAIT,
        || async {
            ready_condition(&d, "pull-late-00001")
                .await
                .filter(|(s, _, _)| s == "False")
        },
    )
    .await
    .expect("refused without credentials");
    assert_eq!(reason, "ImagePullFailed");
    apply(&d, &secret.replace("name: regcred", "name: late-cred"));
    instance_where(
        &d,
        "pull-late",
        "a ready instance once the pull secret exists",
        ready,
    )
    .await;

    let mut all = store_bytes(&d);
    all.extend(d.log_text().into_bytes());
    assert!(
        !all.windows(14).any(|w| w == b"pull-PLAINTEXT"),
        "the pull secret's password is in the store or the log"
    );
    d.cleanup().await.expect("cleanup");
}

/// Bad Secret input gets a clear error naming where (never the value): YAML that does not
/// parse, base64 that does not decode, a key with `/`, and 2 MiB of values.
#[tokio::test]
async fn bad_secrets_are_refused_by_path() {
    let d = TestDaemon::start(crate::SKIFF).await.expect("daemon");
    let cases = [
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a\n",
            "not valid YAML",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\ndata: {k: 'not base64 hunter2!'}\n",
            "data.k (line 4",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\nstringData: {a/b: hunter2}\n",
            "stringData.a/b (line 4",
        ),
    ];
    for (yaml, says) in cases {
        let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(yaml));
        assert_ne!(o.status.code(), Some(0), "{yaml}");
        let err = stderr(&o);
        assert!(err.contains(says), "{yaml}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    let big = d.data_dir().with_file_name("big-value");
    std::fs::write(&big, vec![b'x'; 2 << 20]).expect("a 2 MiB file");
    let from = format!("k={}", big.display());
    let o = d.cli(&["secrets", "create", "big", "--from-file", &from]);
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(err.contains("MiB") || err.contains("too large"), "{err}");
    let o = d.cli(&["get", "secrets"]);
    assert!(!stdout(&o).contains("big"), "nothing stored");
    d.cleanup().await.expect("cleanup");
}
