//! Growing volumes under their containers. A volume attached here that the
//! cluster resized (`raftblock volume resize`) is found by a once-a-second
//! look at the store's sizes; its device is made to show the new size and
//! the filesystem on it is grown online, so `df` in the container shows
//! the new size without a remount. A shrink never reaches an attached
//! volume (the cluster refuses it while attached).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::VolumeBackend;
use super::{lock, Plugin};
use crate::attach::{self, AttachError};

/// How often attached volumes' sizes are compared with the store's.
const EVERY: Duration = Duration::from_secs(1);

/// After a failed grow, the next try waits this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);

impl<B: VolumeBackend> Plugin<B> {
    /// Grows, for ever, the attached volumes whose size went up.
    pub(super) async fn grow_attached(self: Arc<Self>) {
        let mut failed: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::time::sleep(EVERY).await;
            let sizes: Vec<(String, u64)> = lock(&self.attached)
                .iter()
                .map(|(n, a)| (n.clone(), a.size))
                .collect();
            for (name, had) in sizes {
                let Some(size) = self.backend.lookup(&name).map(|v| v.size) else {
                    continue;
                };
                if size <= had || failed.get(&name).is_some_and(|t| t.elapsed() < RETRY_AFTER) {
                    continue;
                }
                failed.remove(&name);
                let guard = self.volume_lock(&name).await;
                let _held = guard.lock().await;
                let (this, name2, mp) = (self.clone(), name.clone(), self.mountpoint(&name));
                let done =
                    tokio::task::spawn_blocking(move || this.grow_one(&name2, size, mp)).await;
                match done {
                    Ok(Ok(true)) => {
                        tracing::info!(volume = %name, from = had, size, "grew the attached volume and its filesystem")
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(volume = %name, size, error = %e,
                            retry_s = RETRY_AFTER.as_secs(), "growing the attached volume failed");
                        failed.insert(name.clone(), Instant::now());
                    }
                    Err(e) => tracing::warn!(volume = %name, error = %e, "growing task failed"),
                }
            }
        }
    }

    /// Makes the device of `name` show `size` bytes and grows its
    /// filesystem (mounted on `mp`); false when it is no longer attached.
    fn grow_one(&self, name: &str, size: u64, mp: PathBuf) -> Result<bool, AttachError> {
        let (device, had) = {
            let mut attached = lock(&self.attached);
            let Some(a) = attached.get_mut(name) else {
                return Ok(false);
            };
            let had = a.size;
            a.grow(size)?;
            (a.device.clone(), had)
        };
        let grown = attach::fs::probe(&device)
            .and_then(|fs| attach::fs::grow(&device, &mp, fs.as_deref().unwrap_or("ext4")));
        if let Err(e) = grown {
            // The next look tries the filesystem again.
            if let Some(a) = lock(&self.attached).get_mut(name) {
                a.size = had;
            }
            return Err(e);
        }
        Ok(true)
    }
}
