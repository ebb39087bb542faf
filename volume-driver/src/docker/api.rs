//! The wire shapes of Docker's volume plugin protocol (legacy `VolumeDriver`
//! API): what dockerd posts and what it expects back, with Go's field names,
//! and the parsing of `docker volume create -o` options.

use raftblock_storage::size::SizeError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::attach::fs::UnsupportedFilesystem;

/// Content type of every answer (dockerd does not check it; this is the
/// conventional one).
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.1+json";

/// Body of `Create`.
#[derive(Debug, Default, Deserialize)]
pub struct CreateRequest {
    /// Volume name.
    #[serde(rename = "Name")]
    pub name: String,
    /// `-o key=value` options; absent or null when none were given.
    #[serde(rename = "Opts", default)]
    pub opts: Option<BTreeMap<String, String>>,
}

/// Body of `Remove`, `Path` and `Get`.
#[derive(Debug, Default, Deserialize)]
pub struct NameRequest {
    /// Volume name.
    #[serde(rename = "Name")]
    pub name: String,
}

/// Body of `Mount` and `Unmount`.
#[derive(Debug, Default, Deserialize)]
pub struct MountRequest {
    /// Volume name.
    #[serde(rename = "Name")]
    pub name: String,
    /// The caller: one mount point of one container (not the container id).
    #[serde(rename = "ID", default)]
    pub id: String,
}

/// One volume as `Get` and `List` report it.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeView {
    /// Name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Creation time, RFC 3339 (shown by `docker volume inspect`).
    #[serde(rename = "CreatedAt", skip_serializing_if = "String::is_empty")]
    pub created_at: String,
    /// Where it is mounted on this node, if it is.
    #[serde(rename = "Mountpoint", skip_serializing_if = "String::is_empty")]
    pub mountpoint: String,
    /// Free-form details shown by `docker volume inspect`.
    #[serde(rename = "Status", skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, serde_json::Value>,
}

/// `secs` since the Unix epoch as RFC 3339 UTC (empty for 0).
pub fn rfc3339(secs: u64) -> String {
    if secs == 0 {
        return String::new();
    }
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The filesystem made on a volume's first mount (the `fs` option); it
/// belongs to attaching, which makes and mounts it.
pub use crate::attach::fs::Filesystem;

/// Why the options of `docker volume create -o ...` were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// `size` or `chunk_size` is not a size.
    #[error("option {key}: {source}")]
    Size {
        /// The option (`size` or `chunk_size`).
        key: &'static str,
        /// Why the value did not parse.
        source: SizeError,
    },
    /// `replicas` is not a number from 1 to 7.
    #[error("option replicas: `{0}` is not a number from 1 to 7")]
    Replicas(String),
    /// `fs` names a filesystem that is not supported.
    #[error(transparent)]
    Filesystem(#[from] UnsupportedFilesystem),
    /// `spread` is not a label key.
    #[error("option spread: `{0}` is not a label key (letters, digits, '-', '_', '.')")]
    Spread(String),
    /// `require` is not a list of `key=value` labels.
    #[error("option require: {0}")]
    Require(#[from] raftblock_storage::catalog::LabelError),
    /// An option this plugin does not know (so a typo is not silently
    /// ignored).
    #[error("unknown option `{0}` (known: size, replicas, fs, chunk_size, spread, require)")]
    Unknown(String),
}

/// Options of `docker volume create -d raftblock -o ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Size in bytes (`size`, default 10G).
    pub size: u64,
    /// Replicas per shard (`replicas`, default 3).
    pub replicas: u32,
    /// Filesystem made on first mount (`fs`, default ext4).
    pub fs: Filesystem,
    /// Chunk size in bytes (`chunk_size`), or the store's default.
    pub chunk_size: Option<u64>,
    /// Replicas of a shard on nodes with distinct values of this node
    /// label (`spread=zone`).
    pub spread: Option<String>,
    /// Only nodes with these labels (`require=disk=ssd[,key=value]`).
    pub require: BTreeMap<String, String>,
}

/// Default size of a volume created without `-o size`.
pub const DEFAULT_SIZE: u64 = 10 << 30;
/// Default replicas of a volume created without `-o replicas`.
pub const DEFAULT_REPLICAS: u32 = 3;

impl CreateOptions {
    /// Parses the options map; unknown keys are an error, so a typo is not
    /// silently ignored.
    pub fn parse(opts: &BTreeMap<String, String>) -> Result<CreateOptions, OptionError> {
        let size = |key, v: &str| {
            raftblock_storage::size::parse_size(v)
                .map_err(|source| OptionError::Size { key, source })
        };
        let mut o = CreateOptions {
            size: DEFAULT_SIZE,
            replicas: DEFAULT_REPLICAS,
            fs: Filesystem::Ext4,
            chunk_size: None,
            spread: None,
            require: BTreeMap::new(),
        };
        for (k, v) in opts {
            match k.as_str() {
                "size" => o.size = size("size", v)?,
                "replicas" => {
                    o.replicas = v
                        .parse()
                        .ok()
                        .filter(|r| (1..=7).contains(r))
                        .ok_or_else(|| OptionError::Replicas(v.clone()))?
                }
                "fs" => o.fs = Filesystem::parse(v)?,
                "chunk_size" => o.chunk_size = Some(size("chunk_size", v)?),
                "spread" => {
                    raftblock_storage::catalog::parse_labels(&format!("{v}=x"))
                        .map_err(|_| OptionError::Spread(v.clone()))?;
                    o.spread = Some(v.clone())
                }
                "require" => o.require = raftblock_storage::catalog::parse_labels(v)?,
                other => return Err(OptionError::Unknown(other.to_string())),
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_creation_times() {
        assert_eq!(rfc3339(0), "");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_have_defaults_and_are_checked() {
        let d = CreateOptions::parse(&opts(&[])).expect("defaults");
        assert_eq!(
            (d.size, d.replicas, d.fs, d.chunk_size),
            (10 << 30, 3, Filesystem::Ext4, None)
        );
        let o = CreateOptions::parse(&opts(&[
            ("size", "1G"),
            ("replicas", "2"),
            ("fs", "xfs"),
            ("chunk_size", "16M"),
            ("spread", "zone"),
            ("require", "disk=ssd"),
        ]))
        .expect("all options");
        assert_eq!(
            (o.size, o.replicas, o.fs, o.chunk_size),
            (1 << 30, 2, Filesystem::Xfs, Some(16 << 20))
        );
        assert_eq!(o.spread.as_deref(), Some("zone"));
        assert_eq!(o.require.get("disk").map(String::as_str), Some("ssd"));
        for bad in [
            ("size", "lots"),
            ("replicas", "0"),
            ("fs", "btrfs"),
            ("color", "red"),
            ("spread", "zo ne"),
            ("require", "disk"),
        ] {
            let e = CreateOptions::parse(&opts(&[bad]))
                .expect_err("refused")
                .to_string();
            assert!(e.contains(bad.0) || e.contains(bad.1), "{e}");
        }
    }

    #[test]
    fn requests_parse_as_dockerd_sends_them() {
        let c: CreateRequest = serde_json::from_str(r#"{"Name":"v","Opts":null}"#).expect("create");
        assert_eq!(c.name, "v");
        assert!(c.opts.is_none());
        let m: MountRequest = serde_json::from_str(r#"{"Name":"v","ID":"abc"}"#).expect("mount");
        assert_eq!(m.id, "abc");
    }
}
