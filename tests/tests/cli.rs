//! The CLI's error paths: each gives a clear message on stderr and exit
//! status 1 (2 for arguments clap rejects), and nothing is changed.

use raftblock_tests::nbd::RawNbd;
use raftblock_tests::{free_addr, qemu_io, raftblock_bin, require_tool, Daemon};
use std::io::{Read, Write};
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn fails_with(o: &Output, code: i32, needle: &str) {
    assert_eq!(o.status.code(), Some(code), "stderr: {}", stderr(o));
    assert!(
        stderr(o).to_lowercase().contains(&needle.to_lowercase()),
        "expected `{needle}` in: {}",
        stderr(o)
    );
}

#[test]
fn volume_commands_and_their_errors() {
    let d = Daemon::start();
    let ok = d.cli(&[
        "volume",
        "create",
        "db",
        "--size",
        "1G",
        "--chunk-size",
        "16M",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));

    fails_with(
        &d.cli(&["volume", "create", "db", "--size", "1G"]),
        1,
        "already exists",
    );
    fails_with(
        &d.cli(&["volume", "create", "../etc", "--size", "1G"]),
        1,
        "name",
    );
    fails_with(
        &d.cli(&["volume", "create", "a/b", "--size", "1G"]),
        1,
        "name",
    );
    fails_with(
        &d.cli(&["volume", "create", "..", "--size", "1G"]),
        1,
        "name",
    );
    let long = "x".repeat(65);
    fails_with(
        &d.cli(&["volume", "create", &long, "--size", "1G"]),
        1,
        "name",
    );
    fails_with(
        &d.cli(&["volume", "create", "s", "--size", "10Q"]),
        1,
        "size",
    );
    fails_with(&d.cli(&["volume", "create", "s", "--size", "0"]), 1, "size");
    fails_with(
        &d.cli(&["volume", "create", "s", "--size", "1000"]),
        1,
        "size",
    );
    fails_with(
        &d.cli(&[
            "volume",
            "create",
            "s",
            "--size",
            "1G",
            "--chunk-size",
            "3M",
        ]),
        1,
        "chunk",
    );
    fails_with(&d.cli(&["volume", "info", "nope"]), 1, "does not exist");
    fails_with(&d.cli(&["volume", "delete", "nope"]), 1, "does not exist");
    fails_with(&d.cli(&["volume", "create"]), 2, "required");
    fails_with(&d.cli(&["volume", "frobnicate"]), 2, "unrecognized");

    // Nothing of the failed creates was kept.
    let list = d.cli(&["volume", "list", "--json"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).expect("list json");
    let names: Vec<String> = v
        .as_array()
        .or_else(|| v["volumes"].as_array())
        .expect("volume array")
        .iter()
        .filter_map(|x| x["name"].as_str().map(String::from))
        .collect();
    assert_eq!(names, vec!["db".to_string()]);
    let info = d.cli(&["volume", "info", "db", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("info json");
    assert_eq!(v["size"].as_u64(), Some(1 << 30));
    assert_eq!(v["chunk_size"].as_u64(), Some(16 << 20));

    // A volume with an open NBD connection cannot be deleted.
    let conn = RawNbd::connect(d.nbd, "db").expect("connect");
    fails_with(&d.cli(&["volume", "delete", "db"]), 1, "connect");
    drop(conn);
    // The server notices the closed connection asynchronously.
    let mut deleted = false;
    for _ in 0..100 {
        if d.cli(&["volume", "delete", "db"]).status.success() {
            deleted = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(deleted, "delete after the client left");
    fails_with(&d.cli(&["volume", "info", "db"]), 1, "does not exist");
}

#[test]
fn unreachable_server_and_bad_serve_arguments() {
    let nobody = free_addr().to_string();
    let o = Command::new(raftblock_bin())
        .args(["volume", "list", "--server", &nobody])
        .output()
        .expect("run cli");
    fails_with(&o, 1, &nobody);

    let o = Command::new(raftblock_bin())
        .args([
            "serve",
            "--data-dir",
            "/tmp/x",
            "--nbd-listen",
            "not-an-address",
        ])
        .output()
        .expect("run cli");
    fails_with(&o, 2, "invalid");

    let o = Command::new(raftblock_bin())
        .args(["serve", "--data-dir", "/tmp/x", "--io-engine", "floppy"])
        .output()
        .expect("run cli");
    fails_with(&o, 2, "invalid");

    // A data directory that is a file.
    let f = tempfile::NamedTempFile::new().expect("temp file");
    let o = Command::new(raftblock_bin())
        .args(["serve", "--data-dir"])
        .arg(f.path())
        .args(["--nbd-listen", &free_addr().to_string()])
        .args(["--admin-listen", &free_addr().to_string()])
        .output()
        .expect("run cli");
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&f.path().display().to_string()),
        "{}",
        stderr(&o)
    );
}

#[test]
fn second_daemon_on_the_same_data_dir_is_refused() {
    let d = Daemon::start();
    let o = Command::new(raftblock_bin())
        .args(["serve", "--data-dir"])
        .arg(d.data_dir())
        .args(["--nbd-listen", &free_addr().to_string()])
        .args(["--admin-listen", &free_addr().to_string()])
        .output()
        .expect("run cli");
    fails_with(&o, 1, "lock");
}

/// The size `nbdinfo` reports for `uri`.
fn nbd_size(uri: &str) -> u64 {
    let out = Command::new("nbdinfo")
        .args(["--size", uri])
        .output()
        .expect("run nbdinfo");
    assert!(out.status.success(), "nbdinfo {uri}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A node running alone resizes its volumes too: a grow keeps the data
/// and takes effect for new connections, a shrink needs --allow-shrink
/// and clears what lies past the new end, and the size survives a restart.
#[test]
fn a_standalone_volume_grows_and_shrinks_on_request() {
    if !require_tool("qemu-io") || !require_tool("nbdinfo") {
        return;
    }
    let mut d = Daemon::start();
    let ok = d.cli(&[
        "volume",
        "create",
        "r",
        "--size",
        "64M",
        "--chunk-size",
        "16M",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let uri = d.uri("r");
    qemu_io(&uri, &["write -P 0x61 0 1M", "write -P 0x62 60M 1M"]);
    let ok = d.cli(&["volume", "resize", "r", "--size", "128M"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(nbd_size(&uri), 128 << 20);
    qemu_io(
        &uri,
        &[
            "write -P 0x63 100M 1M",
            "read -P 0x61 0 1M",
            "read -P 0x62 60M 1M",
        ],
    );
    fails_with(
        &d.cli(&["volume", "resize", "r", "--size", "32M"]),
        1,
        "--allow-shrink",
    );
    fails_with(
        &d.cli(&["volume", "resize", "r", "--size", "33M+1", "--allow-shrink"]),
        1,
        "size",
    );
    let ok = d.cli(&["volume", "resize", "r", "--size", "32M", "--allow-shrink"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(nbd_size(&uri), 32 << 20);
    let ok = d.cli(&["volume", "resize", "r", "--size", "128M"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    qemu_io(
        &uri,
        &["read -P 0x61 0 1M", "read -P 0 60M 1M", "read -P 0 100M 1M"],
    );
    assert!(d.terminate(), "SIGTERM: the daemon did not exit cleanly");
    d.restart();
    assert_eq!(nbd_size(&d.uri("r")), 128 << 20, "after a restart");
    qemu_io(&d.uri("r"), &["read -P 0x61 0 1M"]);
}

/// An admin path that does not exist answers 404 with a JSON error, like
/// the rest of the API.
#[test]
fn unknown_admin_paths_answer_a_json_error() {
    let d = Daemon::start();
    let mut s = std::net::TcpStream::connect(d.admin).expect("connect to the admin API");
    s.write_all(b"GET /v1/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"no such endpoint: GET /v1/nope"}"#),
        "{answer}"
    );
}

/// `raftblock completions SHELL` prints a completion script the shell
/// accepts; an unknown shell is refused by clap.
#[test]
fn completions_for_shells() {
    let out = Command::new(raftblock_bin())
        .args(["completions", "bash"])
        .output()
        .expect("run raftblock");
    assert!(out.status.success(), "{}", stderr(&out));
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        script.contains("_raftblock()") && script.contains("resize"),
        "{script}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raftblock.bash");
    std::fs::write(&path, &script).expect("write the script");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("bash -n");
    assert!(check.status.success(), "bash -n: {}", stderr(&check));
    for shell in ["zsh", "fish"] {
        let out = Command::new(raftblock_bin())
            .args(["completions", shell])
            .output()
            .expect("run raftblock");
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{shell}: {}",
            stderr(&out)
        );
    }
    fails_with(
        &Command::new(raftblock_bin())
            .args(["completions", "tcsh"])
            .output()
            .expect("run raftblock"),
        2,
        "invalid value",
    );
}
