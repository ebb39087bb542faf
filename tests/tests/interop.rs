//! Interoperability with the real NBD clients users run: nbdinfo (libnbd),
//! qemu-io, nbdcopy and fio's nbd engine, each against a real daemon.

use raftblock_tests::{require_tool, run_ok, Daemon};
use serde_json::Value;
use std::process::Command;

#[test]
fn nbdinfo_lists_exports_sizes_block_sizes_and_allocation() {
    if !require_tool("nbdinfo") {
        return;
    }
    let d = Daemon::start();
    d.create_volume("alpha", "64M");
    d.create_volume("beta", "8M");

    let out = run_ok(
        Command::new("nbdinfo")
            .arg("--list")
            .arg("--json")
            .arg(d.uri("")),
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo --list --json");
    let exports = list["exports"].as_array().expect("exports array");
    let names: Vec<&str> = exports
        .iter()
        .filter_map(|e| e["export-name"].as_str())
        .collect();
    assert!(
        names.contains(&"alpha") && names.contains(&"beta"),
        "{names:?}"
    );

    let out = run_ok(Command::new("nbdinfo").arg("--json").arg(d.uri("alpha")));
    let info: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo --json");
    let e = &info["exports"][0];
    assert_eq!(e["export-size"].as_u64(), Some(64 << 20));
    assert_eq!(e["block_size_minimum"].as_u64(), Some(512));
    assert_eq!(e["block_size_preferred"].as_u64(), Some(4096));
    assert_eq!(e["block_size_maximum"].as_u64(), Some(32 << 20));
    assert_eq!(e["can_multi_conn"].as_bool(), Some(true));
    assert_eq!(e["can_flush"].as_bool(), Some(true));
    assert_eq!(e["can_fua"].as_bool(), Some(true));
    assert_eq!(e["can_trim"].as_bool(), Some(true));
    assert_eq!(e["can_zero"].as_bool(), Some(true));
    let contexts: Vec<&str> = e["contexts"]
        .as_array()
        .expect("contexts")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(contexts.contains(&"base:allocation"), "{contexts:?}");

    // Write 1 MiB at 8 MiB; the map then shows data there and holes elsewhere.
    if require_tool("qemu-io") {
        run_ok(
            Command::new("qemu-io")
                .args(["-f", "raw", "-c", "write -P 0x5a 8M 1M"])
                .arg(d.uri("alpha")),
        );
        let out = run_ok(
            Command::new("nbdinfo")
                .arg("--map")
                .arg("--json")
                .arg(d.uri("alpha")),
        );
        let map: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo --map --json");
        let extents = map.as_array().expect("extent array");
        let data: Vec<(u64, u64)> = extents
            .iter()
            .filter(|x| x["type"].as_u64() == Some(0))
            .map(|x| {
                (
                    x["offset"].as_u64().unwrap_or(0),
                    x["length"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(data, vec![(8 << 20, 1 << 20)], "data extents: {extents:?}");
        let covered: u64 = extents.iter().filter_map(|x| x["length"].as_u64()).sum();
        assert_eq!(covered, 64 << 20, "map covers the export");
    }
}

#[test]
fn qemu_io_patterns_discard_and_write_zeroes() {
    if !require_tool("qemu-io") {
        return;
    }
    let d = Daemon::start();
    d.create_volume("q", "128M");
    let uri = d.uri("q");
    let qemu_io = |cmds: &[&str]| raftblock_tests::qemu_io(&uri, cmds);
    qemu_io(&[
        "write -P 0x11 0 4k",
        "write -P 0x22 4k 60k",
        "write -P 0x33 1M 3M",
        "write -P 0x44 70M 1M",
        // Unaligned to 4 KiB (512-aligned): exercises read-modify-write.
        "write -P 0x55 2560 1024",
        "flush",
    ]);
    qemu_io(&[
        "read -P 0x11 0 2560",
        "read -P 0x55 2560 1024",
        "read -P 0x11 3584 512",
        "read -P 0x22 4k 60k",
        "read -P 0x33 1M 3M",
        "read -P 0x44 70M 1M",
        "read -P 0 64k 960k",
        "read -P 0 100M 1M",
    ]);
    // Discard and write zeroes (plain, and with unmap) read back as zeros;
    // the data around them is untouched.
    qemu_io(&["discard 1M 1M", "write -z 2M 512k", "write -z -u 70M 1M"]);
    qemu_io(&[
        "read -P 0 1M 1M",
        "read -P 0 2M 512k",
        "read -P 0x33 2560k 1536k",
        "read -P 0 70M 1M",
        "read -P 0x22 4k 60k",
    ]);
}

#[test]
fn nbdcopy_round_trip_keeps_every_byte() {
    if !require_tool("nbdcopy") {
        return;
    }
    let d = Daemon::start();
    d.create_volume("copy", "48M");
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src.img");
    let back = tmp.path().join("back.img");
    // Random data with holes in it, so both data and zero paths are used.
    let mut img = raftblock_tests::pattern(7, 48 << 20);
    img[(10 << 20)..(20 << 20)].fill(0);
    std::fs::write(&src, &img).expect("write source image");

    run_ok(Command::new("nbdcopy").arg(&src).arg(d.uri("copy")));
    run_ok(Command::new("nbdcopy").arg(d.uri("copy")).arg(&back));
    let sha = |p: &std::path::Path| {
        let out = run_ok(Command::new("sha256sum").arg(p));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(sha(&src), sha(&back), "sha256 after the round trip");
    // And with several connections at once (CAN_MULTI_CONN).
    run_ok(
        Command::new("nbdcopy")
            .args(["--connections=4", "--requests=16"])
            .arg(d.uri("copy"))
            .arg(&back),
    );
    assert_eq!(
        sha(&src),
        sha(&back),
        "sha256 after a multi-connection copy"
    );
}

#[test]
fn fio_verify_many_jobs_two_connections() {
    if !require_tool("fio") {
        return;
    }
    let d = Daemon::start();
    d.create_volume("fio", "256M");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run_ok(
        Command::new("fio")
            .current_dir(tmp.path())
            .arg("--name=verify")
            .arg("--ioengine=nbd")
            .arg(format!("--uri={}", d.uri("fio")))
            .args([
                "--rw=randwrite",
                "--bsrange=4k-64k",
                "--iodepth=32",
                "--numjobs=4",
                "--offset_increment=64M",
                "--size=64M",
                "--io_size=24M",
                "--verify=crc32c",
                "--verify_fatal=1",
                "--do_verify=1",
                "--group_reporting",
                "--output-format=json",
                "--output=verify.json",
            ]),
    );
    drop(out);
    let text = std::fs::read(tmp.path().join("verify.json")).expect("fio output");
    let v: Value = serde_json::from_slice(&text).expect("fio json");
    let job = &v["jobs"][0];
    assert_eq!(job["error"].as_i64(), Some(0), "fio error: {job}");
    let written = job["write"]["io_bytes"].as_u64().unwrap_or(0);
    let verified = job["read"]["io_bytes"].as_u64().unwrap_or(0);
    assert!(written >= 4 * (24 << 20), "wrote {written} bytes");
    assert!(verified > 0, "nothing verified");

    // fio's nbd engine opens one connection per job; also drive one export
    // from two fio processes at once (two connections, disjoint halves).
    let spawn = |offset: &str| {
        Command::new("fio")
            .current_dir(tmp.path())
            .arg(format!("--name=half{offset}"))
            .arg("--ioengine=nbd")
            .arg(format!("--uri={}", d.uri("fio")))
            .args([
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=32",
                "--size=96M",
                "--io_size=16M",
            ])
            .arg(format!("--offset={offset}"))
            .args(["--verify=crc32c", "--verify_fatal=1", "--do_verify=1"])
            .output()
            .expect("spawn fio")
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn("0"));
        let b = s.spawn(|| spawn("128M"));
        (a.join().expect("fio thread"), b.join().expect("fio thread"))
    });
    for o in [a, b] {
        assert!(
            o.status.success(),
            "fio failed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}
