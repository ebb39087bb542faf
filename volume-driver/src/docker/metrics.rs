//! What the Docker plugin did, for `/metrics`: calls by endpoint and
//! outcome, how long Mount took (attach, mkfs on first use, mount), and how
//! many volumes this node has mounted, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Counters of one node's plugin.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    calls: Mutex<BTreeMap<(&'static str, bool), u64>>,
    mount_micros: AtomicU64,
    mounts_timed: AtomicU64,
    mounted: AtomicU64,
}

impl PluginMetrics {
    /// Counts a call to `endpoint` and whether it succeeded.
    pub fn call(&self, endpoint: &'static str, ok: bool) {
        let mut c = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry((endpoint, ok)).or_default() += 1;
    }

    /// Records how long a Mount that attached the volume took.
    pub fn mount_took(&self, d: Duration) {
        self.mount_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.mounts_timed.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets how many volumes are mounted here.
    pub fn set_mounted(&self, n: usize) {
        self.mounted.store(n as u64, Ordering::Relaxed);
    }

    /// Appends the series in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP raftblock_plugin_calls_total Docker volume plugin calls by endpoint and result.\n\
             # TYPE raftblock_plugin_calls_total counter"
        );
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        for ((endpoint, ok), n) in calls.iter() {
            let result = if *ok { "ok" } else { "error" };
            let _ = writeln!(
                out,
                "raftblock_plugin_calls_total{{endpoint=\"{endpoint}\",result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP raftblock_plugin_mount_seconds Time of Mount calls that attached a volume.\n\
             # TYPE raftblock_plugin_mount_seconds summary\n\
             raftblock_plugin_mount_seconds_sum {}\n\
             raftblock_plugin_mount_seconds_count {}",
            self.mount_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.mounts_timed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP raftblock_plugin_mounted_volumes Volumes mounted by this node's plugin.\n\
             # TYPE raftblock_plugin_mounted_volumes gauge\n\
             raftblock_plugin_mounted_volumes {}",
            self.mounted.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_calls_mount_time_and_mounted() {
        let m = PluginMetrics::default();
        m.call("Mount", true);
        m.call("Mount", true);
        m.call("Remove", false);
        m.mount_took(Duration::from_millis(1500));
        m.set_mounted(1);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("raftblock_plugin_calls_total{endpoint=\"Mount\",result=\"ok\"} 2"));
        assert!(
            out.contains("raftblock_plugin_calls_total{endpoint=\"Remove\",result=\"error\"} 1")
        );
        assert!(out.contains("raftblock_plugin_mount_seconds_sum 1.5"));
        assert!(out.contains("raftblock_plugin_mounted_volumes 1"));
    }
}
