//! The wire shapes of Docker's volume plugin protocol (legacy `VolumeDriver`
//! API): what dockerd posts and what it expects back, with Go's field names,
//! and the parsing of `docker volume create -o` options.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Where it is mounted on this node, if it is.
    #[serde(rename = "Mountpoint", skip_serializing_if = "String::is_empty")]
    pub mountpoint: String,
    /// Free-form details shown by `docker volume inspect`.
    #[serde(rename = "Status", skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, serde_json::Value>,
}

/// Filesystem made on a volume's first mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    /// ext4 (the default).
    Ext4,
    /// XFS.
    Xfs,
}

impl Filesystem {
    /// The name `mkfs.<name>` and `mount -t` use.
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }

    /// Parses `ext4` or `xfs`.
    pub fn parse(s: &str) -> Result<Filesystem, String> {
        match s {
            "ext4" => Ok(Filesystem::Ext4),
            "xfs" => Ok(Filesystem::Xfs),
            other => Err(format!("fs `{other}` is not supported (use ext4 or xfs)")),
        }
    }
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
}

/// Default size of a volume created without `-o size`.
pub const DEFAULT_SIZE: u64 = 10 << 30;
/// Default replicas of a volume created without `-o replicas`.
pub const DEFAULT_REPLICAS: u32 = 3;

impl CreateOptions {
    /// Parses the options map; unknown keys are an error, so a typo is not
    /// silently ignored.
    pub fn parse(opts: &BTreeMap<String, String>) -> Result<CreateOptions, String> {
        let mut o = CreateOptions {
            size: DEFAULT_SIZE,
            replicas: DEFAULT_REPLICAS,
            fs: Filesystem::Ext4,
            chunk_size: None,
        };
        for (k, v) in opts {
            match k.as_str() {
                "size" => {
                    o.size = raftblock_storage::size::parse_size(v)
                        .map_err(|e| format!("option size: {e}"))?
                }
                "replicas" => {
                    o.replicas =
                        v.parse()
                            .ok()
                            .filter(|r| (1..=7).contains(r))
                            .ok_or_else(|| {
                                format!("option replicas: `{v}` is not a number from 1 to 7")
                            })?
                }
                "fs" => o.fs = Filesystem::parse(v)?,
                "chunk_size" => {
                    o.chunk_size = Some(
                        raftblock_storage::size::parse_size(v)
                            .map_err(|e| format!("option chunk_size: {e}"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "unknown option `{other}` (known: size, replicas, fs, chunk_size)"
                    ))
                }
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ]))
        .expect("all options");
        assert_eq!(
            (o.size, o.replicas, o.fs, o.chunk_size),
            (1 << 30, 2, Filesystem::Xfs, Some(16 << 20))
        );
        for bad in [
            ("size", "lots"),
            ("replicas", "0"),
            ("fs", "btrfs"),
            ("color", "red"),
        ] {
            let e = CreateOptions::parse(&opts(&[bad])).expect_err("refused");
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
