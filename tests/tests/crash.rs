//! Durability: what was acknowledged as flushed (FLUSH, or a write with FUA)
//! survives SIGKILL of the daemon and a restart; SIGTERM shuts down cleanly.

use raftblock_tests::nbd::RawNbd;
use raftblock_tests::{pattern, Daemon};

/// Writes spread over several chunks and alignments.
fn writes() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, pattern(1, 4096)),
        (12288, pattern(2, 512)),
        (3 << 20, pattern(3, 1 << 20)),
        ((64 << 20) - 2048, pattern(4, 8192)), // straddles two 64 MiB chunks
        (100 << 20, pattern(5, 300 * 512)),
    ]
}

#[test]
fn flushed_writes_survive_kill9_and_restart() {
    for engine in ["uring", "threads"] {
        let mut d = Daemon::start_with(&["--io-engine", engine]);
        d.create_volume("crash", "128M");
        let mut c = RawNbd::connect(d.nbd, "crash").expect("connect");
        for (off, data) in writes() {
            assert_eq!(
                c.write(off, &data, false).expect("write"),
                0,
                "write at {off}"
            );
        }
        assert_eq!(c.flush().expect("flush"), 0);
        // A FUA write needs no flush after it.
        let fua = pattern(6, 64 << 10);
        assert_eq!(c.write(50 << 20, &fua, true).expect("fua write"), 0);

        d.kill9();
        drop(c);
        d.restart();

        let mut c = RawNbd::connect(d.nbd, "crash").expect("connect after restart");
        for (off, data) in writes().into_iter().chain([(50 << 20, fua)]) {
            let got = c
                .read(off, data.len() as u32)
                .expect("read")
                .expect("read succeeds");
            assert!(got == data, "{engine}: bytes at {off} differ after kill -9");
        }
        // Never-written ranges still read as zeros.
        let zeros = c
            .read(20 << 20, 1 << 20)
            .expect("read")
            .expect("read succeeds");
        assert!(zeros.iter().all(|&b| b == 0), "{engine}: hole not zero");
    }
}

#[test]
fn sigterm_shuts_down_cleanly_and_keeps_data() {
    let mut d = Daemon::start();
    d.create_volume("term", "16M");
    let data = pattern(9, 256 << 10);
    {
        let mut c = RawNbd::connect(d.nbd, "term").expect("connect");
        assert_eq!(c.write(4096, &data, false).expect("write"), 0);
        // No flush: a clean shutdown syncs what was written.
        assert!(
            d.terminate(),
            "daemon did not exit 0 on SIGTERM:\n{}",
            d.log_text()
        );
    }
    d.restart();
    let mut c = RawNbd::connect(d.nbd, "term").expect("connect after restart");
    let got = c
        .read(4096, data.len() as u32)
        .expect("read")
        .expect("read succeeds");
    assert!(got == data, "data lost across SIGTERM");
}
