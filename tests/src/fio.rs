//! A background `fio` job that writes a volume over NBD with
//! `--verify=crc32c` and reads every block back when it ends: the client
//! that must see no error while the cluster changes under it.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command};

/// A running verifying write job.
pub struct FioVerify {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl FioVerify {
    /// Starts writing `uri` (random writes, crc32c verify afterwards);
    /// `job` adds the sizes, block sizes and pacing (`--size=`, `--rate=`,
    /// ...).
    pub fn start(name: &str, uri: &str, job: &[&str]) -> FioVerify {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("fio.json");
        let child = Command::new("fio")
            // fio drops a verify state file into its working directory.
            .current_dir(dir.path())
            .arg(format!("--name={name}"))
            .args([
                "--ioengine=nbd",
                "--rw=randwrite",
                "--verify=crc32c",
                "--do_verify=1",
                "--randrepeat=1",
                "--output-format=json",
            ])
            .args(job)
            .arg(format!("--uri={uri}"))
            .arg(format!("--output={}", out.display()))
            .spawn()
            .expect("spawn fio");
        FioVerify {
            child,
            out,
            _dir: dir,
        }
    }

    /// Waits for the job; asserts it ended well (no I/O error, every block
    /// verified) and returns its report.
    pub fn finish(mut self) -> Value {
        let status = self.child.wait().expect("fio");
        let report: Value = serde_json::from_slice(&std::fs::read(&self.out).expect("fio output"))
            .expect("fio json");
        let job = report["jobs"][0].clone();
        assert!(status.success(), "fio failed: {job}");
        assert_eq!(job["error"].as_i64(), Some(0), "fio error: {job}");
        job
    }
}
