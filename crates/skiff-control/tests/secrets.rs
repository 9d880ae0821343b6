//! The secret store over the real SQLite store, as an ordinary user: values sealed at rest,
//! a wrong key refused, and a key rotation a crash interrupted finished at the next open.

use std::sync::Arc;

use skiff_api::config::ConfigKind;
use skiff_api::manifest::{config_from_document, parse_documents};
use skiff_control::controller::{ControllerError, SystemClock};
use skiff_control::secrets::{KeyFile, SecretError, SecretStore, key_id};
use skiff_store::{SqliteStore, Store};

const PLAIN: &[u8] = b"rotation-PLAINTEXT";

fn store(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(&dir.join("state.db")).expect("store"))
}

async fn put(s: &SecretStore, name: &str) {
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{v: rotation-PLAINTEXT}}\n"
    );
    let doc = parse_documents(&yaml).expect("yaml").remove(0);
    let v = config_from_document(&doc, ConfigKind::Secret).expect("valid");
    s.apply(v, false).await.expect("stored");
}

async fn value(s: &SecretStore, name: &str) -> Result<Vec<u8>, ControllerError> {
    let o = s
        .get(ConfigKind::Secret, "default", name)
        .await?
        .expect("exists");
    Ok(o.data.0["v"].clone())
}

fn raw_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        all.extend(std::fs::read(dir.join(f)).unwrap_or_default());
    }
    all
}

/// Sealed at rest; another key cannot read them; an interrupted rotation (the next key
/// written, the rewrite not committed) is finished when the store opens again.
#[tokio::test]
async fn rotation_survives_a_crash_and_a_wrong_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("secret.key");
    let st = store(dir.path());
    let s = SecretStore::open(st.clone(), KeyFile::new(&key), Arc::new(SystemClock))
        .await
        .expect("open");
    put(&s, "a").await;
    put(&s, "b").await;
    assert_eq!(value(&s, "a").await.expect("reads"), PLAIN);
    assert!(
        !raw_bytes(dir.path())
            .windows(PLAIN.len())
            .any(|w| w == PLAIN)
    );

    // Another key file: the Secrets do not open, and the error names no value.
    let other = SecretStore::new(
        st.clone(),
        KeyFile::new(dir.path().join("other.key")),
        Arc::new(SystemClock),
    )
    .expect("other key");
    match value(&other, "a").await {
        Err(ControllerError::Secret(e @ SecretError::UnknownKey { .. })) => {
            assert!(e.to_string().contains("/secrets/default/a"), "{e}");
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }

    // A crash after writing the next key and before the rewrite committed.
    let next: [u8; 32] = [42; 32];
    std::fs::write(dir.path().join("secret.key.next"), next).expect("next key");
    drop(s);
    let s = SecretStore::open(st.clone(), KeyFile::new(&key), Arc::new(SystemClock))
        .await
        .expect("reopen finishes the rotation");
    assert_eq!(s.key_id(), key_id(&next));
    assert!(!dir.path().join("secret.key.next").exists());
    assert_eq!(std::fs::read(&key).expect("key"), next);
    assert_eq!(value(&s, "a").await.expect("reads"), PLAIN);
    assert_eq!(value(&s, "b").await.expect("reads"), PLAIN);

    // A rotation now: every Secret under a fresh key, still readable after a reopen.
    let report = s.rotate_key().await.expect("rotate");
    assert_eq!(report.rewritten, 2);
    drop(s);
    let s = SecretStore::open(st, KeyFile::new(&key), Arc::new(SystemClock))
        .await
        .expect("reopen");
    assert_eq!(s.key_id(), report.key_id);
    assert_eq!(value(&s, "b").await.expect("reads"), PLAIN);
    assert!(
        !raw_bytes(dir.path())
            .windows(PLAIN.len())
            .any(|w| w == PLAIN)
    );
}
