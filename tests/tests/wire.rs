//! Bad input on the wire: requests the protocol says to refuse get the right
//! error and the connection goes on; garbage closes that connection only; in
//! every case other clients keep being served.

use raftblock_tests::nbd::{
    RawNbd, CMD_BLOCK_STATUS, CMD_READ, CMD_TRIM, CMD_WRITE, EINVAL, ENOSPC, FLAG_DF, REQUEST_MAGIC,
};
use raftblock_tests::{pattern, Daemon};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const SIZE: u64 = 64 << 20;

/// A bystander connection with data written before the abuse starts; it
/// must read back intact after each abuse.
struct Bystander {
    conn: RawNbd,
    data: Vec<u8>,
}

impl Bystander {
    fn new(d: &Daemon) -> Bystander {
        let mut conn = RawNbd::connect(d.nbd, "other").expect("connect bystander");
        let data = pattern(42, 64 << 10);
        assert_eq!(conn.write(1 << 20, &data, false).expect("write"), 0);
        Bystander { conn, data }
    }

    fn still_served(&mut self, after: &str) {
        let got = self
            .conn
            .read(1 << 20, self.data.len() as u32)
            .expect(after);
        assert_eq!(
            got.ok().as_ref(),
            Some(&self.data),
            "bystander after {after}"
        );
    }
}

fn daemon() -> Daemon {
    let d = Daemon::start();
    d.create_volume("v", "64M");
    d.create_volume("other", "16M");
    d
}

#[test]
fn refused_requests_get_protocol_errors_and_the_connection_goes_on() {
    let d = daemon();
    let mut by = Bystander::new(&d);
    let mut c = RawNbd::connect(d.nbd, "v").expect("connect");
    assert_eq!(c.size, SIZE);

    // Past the end: EINVAL for reads, ENOSPC for writes.
    assert_eq!(c.read(SIZE - 4096, 8192).expect("read").err(), Some(EINVAL));
    assert_eq!(c.read(SIZE, 512).expect("read").err(), Some(EINVAL));
    assert_eq!(
        c.read(u64::MAX - 511, 512).expect("read").err(),
        Some(EINVAL)
    );
    assert_eq!(
        c.write(SIZE - 512, &[7u8; 1024], false).expect("write"),
        ENOSPC
    );
    assert_eq!(
        c.command(0, CMD_TRIM, SIZE - 4096, 8192).expect("trim"),
        EINVAL
    );
    // Misaligned to the 512-byte minimum block size.
    assert_eq!(c.read(100, 512).expect("read").err(), Some(EINVAL));
    assert_eq!(c.read(0, 100).expect("read").err(), Some(EINVAL));
    assert_eq!(c.write(3, &[1u8; 512], false).expect("write"), EINVAL);
    // Over the 32 MiB maximum payload (refused, never allocated).
    assert_eq!(c.read(0, 40 << 20).expect("read").err(), Some(EINVAL));
    // An unknown command and an unknown flag.
    assert_eq!(c.command(0, 42, 0, 4096).expect("unknown cmd"), EINVAL);
    assert_eq!(
        c.command(1 << 9, CMD_READ, 0, 0).expect("unknown flag"),
        EINVAL
    );
    // DF without structured replies, BLOCK_STATUS without a meta context.
    assert_eq!(c.command(FLAG_DF, CMD_READ, 0, 0).expect("df"), EINVAL);
    assert_eq!(
        c.command(0, CMD_BLOCK_STATUS, 0, 4096)
            .expect("block status"),
        EINVAL
    );

    // The same connection still works.
    let data = pattern(5, 8192);
    assert_eq!(c.write(4096, &data, false).expect("write"), 0);
    assert_eq!(c.read(4096, 8192).expect("read").ok(), Some(data));
    by.still_served("refused requests");
}

#[test]
fn bad_magic_closes_only_that_connection() {
    let d = daemon();
    let mut by = Bystander::new(&d);
    let mut c = RawNbd::connect(d.nbd, "v").expect("connect");
    let mut junk = vec![0xde, 0xad, 0xbe, 0xef];
    junk.extend_from_slice(&[0u8; 24]);
    c.send_raw(&junk).expect("send junk");
    assert!(
        c.closed_by_server(Duration::from_secs(30)),
        "connection kept after bad magic"
    );
    by.still_served("bad magic");
}

#[test]
fn lying_write_length_closes_only_that_connection() {
    let d = daemon();
    let mut by = Bystander::new(&d);

    // A write that announces 1 MiB and sends 100 bytes, then stops sending.
    let mut c = RawNbd::connect(d.nbd, "v").expect("connect");
    c.send(0, CMD_WRITE, 0, 1 << 20, &[9u8; 100])
        .expect("send short write");
    c.shutdown_write().expect("half close");
    assert!(
        c.closed_by_server(Duration::from_secs(30)),
        "connection kept after a short payload"
    );
    by.still_served("short payload");

    // A write that announces more than the maximum payload: closed, and
    // nothing of it lands on the volume.
    let mut c = RawNbd::connect(d.nbd, "v").expect("connect");
    let mut req = Vec::new();
    req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&CMD_WRITE.to_be_bytes());
    req.extend_from_slice(&1u64.to_be_bytes());
    req.extend_from_slice(&0u64.to_be_bytes());
    req.extend_from_slice(&u32::MAX.to_be_bytes());
    c.send_raw(&req).expect("send huge write header");
    let _ = c.send_raw(&[0xffu8; 4096]);
    assert!(
        c.closed_by_server(Duration::from_secs(30)),
        "connection kept after a 4 GiB write"
    );
    by.still_served("oversized write");

    let mut c = RawNbd::connect(d.nbd, "v").expect("reconnect");
    let head = c.read(0, 4096).expect("read").expect("read ok");
    assert!(
        head.iter().all(|&b| b == 0),
        "a refused write changed the volume"
    );
}

#[test]
fn garbage_handshakes_do_not_hurt_the_server() {
    let d = daemon();
    let mut by = Bystander::new(&d);
    // Random bytes instead of client flags and options.
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0xffu8; 300][..], &[][..]] {
        let mut s = TcpStream::connect(d.nbd).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut greet = [0u8; 18];
        s.read_exact(&mut greet).expect("greeting");
        let _ = s.write_all(junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    // An option with a length that lies (announces 1 GiB of option data).
    let mut s = TcpStream::connect(d.nbd).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).expect("greeting");
    let mut opt = 3u32.to_be_bytes().to_vec();
    opt.extend_from_slice(&0x4948_4156_454F_5054u64.to_be_bytes());
    opt.extend_from_slice(&7u32.to_be_bytes());
    opt.extend_from_slice(&(1u32 << 30).to_be_bytes());
    s.write_all(&opt).expect("send option");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest); // the server closes (or refuses) it
    by.still_served("garbage handshakes");
    // New clients still connect and work.
    let mut c = RawNbd::connect(d.nbd, "v").expect("connect after garbage");
    assert_eq!(c.write(0, &[3u8; 4096], true).expect("write"), 0);
}
