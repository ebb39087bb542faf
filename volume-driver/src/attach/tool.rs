//! Running the system's tools (`blkid`, `mkfs.*`, `mount`, `losetup`) as an
//! operator would, with the command line kept for the error.

use std::process::{Command, Output};

use super::error::AttachError;

/// Runs `cmd` to its end and returns what it printed, whatever its exit
/// status; only failing to start it is an error.
pub(super) fn output(cmd: &mut Command) -> Result<Output, AttachError> {
    let command = format!("{cmd:?}");
    cmd.output()
        .map_err(|source| AttachError::Spawn { command, source })
}

/// Runs `cmd`; an exit status other than success is an error carrying what
/// it printed on standard error.
pub(super) fn run(cmd: &mut Command) -> Result<Output, AttachError> {
    let command = format!("{cmd:?}");
    let out = output(cmd)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(AttachError::Tool {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `cmd` for its effect; see [`run`].
pub(super) fn check(cmd: &mut Command) -> Result<(), AttachError> {
    run(cmd).map(drop)
}
