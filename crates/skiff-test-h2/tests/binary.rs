//! Proves that the `skiff-test-h2` binary, built static by
//! `skiff_test_utils::images::h2_server_binary`, needs no dynamic loader, serves h2c,
//! HTTP/1.1 and WebSocket on `$PORT`, exits 0 on SIGTERM, and that `h2_server_image` holds
//! it alone as its entrypoint.
//!
//! The binary runs directly on the host here (no container), on a port it picks itself.

use std::net::SocketAddr;
use std::process::Stdio;

use http::Version;
use skiff_test_utils::MAX_WAIT;
use skiff_test_utils::images::{H2_SERVER_PATH, IMAGE_LABEL, h2_server_binary, h2_server_image};
use skiff_test_utils::net::{h2c_get, http1_get, websocket_echo};
use skiff_test_utils::oci::EntryType;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// ELF program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;

/// The program header types of an ELF64 little-endian file.
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    assert_eq!((elf[4], elf[5]), (2, 1), "ELF64, little-endian");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]);
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes"));
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    (0..phnum)
        .map(|i| {
            let at = usize::try_from(phoff).expect("offset fits") + i * phentsize;
            u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes"))
        })
        .collect()
}

/// The static binary has no `PT_INTERP`, so it runs without a dynamic loader or a libc
/// in the image.
#[test]
fn binary_is_static() {
    let path = h2_server_binary().expect("building skiff-test-h2");
    let elf = std::fs::read(&path).expect("reading the binary");
    let types = program_header_types(&elf);
    assert!(!types.is_empty(), "program headers");
    assert!(
        !types.contains(&PT_INTERP),
        "{} asks for a dynamic loader",
        path.display()
    );
}

/// The binary announces the port it bound for `PORT=0`, serves h2c, HTTP/1.1 and
/// WebSocket there, and exits 0 on SIGTERM.
#[tokio::test]
async fn binary_serves_on_port_and_exits_on_sigterm() {
    let path = h2_server_binary().expect("building skiff-test-h2");
    let mut child = Command::new(&path)
        .env("PORT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting skiff-test-h2");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::time::timeout(MAX_WAIT, BufReader::new(stdout).lines().next_line())
        .await
        .expect("the listening line within MAX_WAIT")
        .expect("reading stdout")
        .expect("a line");
    let port: u16 = line
        .strip_prefix("skiff-test-h2 listening on :")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let (status, version, body) = h2c_get(addr, "h2.example", "/proto")
        .await
        .expect("h2c GET /proto");
    assert_eq!(
        (status, version, body.as_str()),
        (200, Version::HTTP_2, "HTTP/2.0\nh2.example\n")
    );
    let (status, version, body) = http1_get(addr, "h1.example", "/proto")
        .await
        .expect("HTTP/1.1 GET /proto");
    assert_eq!(
        (status, version, body.as_str()),
        (200, Version::HTTP_11, "HTTP/1.1\nh1.example\n")
    );
    let echoes = websocket_echo(addr, "ws.example", "/ws", &["a", "b", "c"])
        .await
        .expect("WebSocket echo");
    assert_eq!(echoes, ["a", "b", "c"]);

    let pid = child.id().expect("the child runs").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("running kill");
    assert!(killed.success());
    let status = tokio::time::timeout(MAX_WAIT, child.wait())
        .await
        .expect("exit within MAX_WAIT of SIGTERM")
        .expect("waiting for the child");
    assert_eq!(status.code(), Some(0), "{status}");
}

/// The image holds only the binary (0755, at `H2_SERVER_PATH`) and runs it as its
/// entrypoint with `PORT=8080`.
#[test]
fn image_holds_only_the_binary() {
    let size = std::fs::metadata(h2_server_binary().expect("building skiff-test-h2"))
        .expect("binary")
        .len();
    let image = h2_server_image().expect("building the image");
    assert_eq!(image.layers().len(), 1);
    let entries = image.layers()[0].list().expect("listing the layer");
    let paths: Vec<String> = entries.iter().map(|e| e.path_str()).collect();
    assert_eq!(
        paths,
        [
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/skiff-test-h2"
        ],
        "{paths:?}"
    );
    let server = entries.last().expect("the binary");
    assert_eq!(
        (server.kind, server.mode, server.size),
        (EntryType::Regular, 0o755, size)
    );
    let config: serde_json::Value =
        serde_json::from_slice(&image.config_json()).expect("config JSON");
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!([H2_SERVER_PATH]));
    assert!(c.get("Cmd").is_none() && c.get("User").is_none(), "{c}");
    assert!(
        c["Env"]
            .as_array()
            .expect("Env")
            .contains(&serde_json::json!("PORT=8080")),
        "{c}"
    );
    assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(c["Labels"][IMAGE_LABEL], "h2-server");
}
