//! Why a plugin call failed, and the one place such a failure becomes
//! dockerd's answer: HTTP 500 with `{"Err": "<text>"}`. dockerd shows the
//! text to the user as it is, so every variant names the volume (or the
//! file, socket or request) it is about.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::api::{OptionError, CONTENT_TYPE};
use super::backend::BackendError;
use super::mounts::MountTableError;
use crate::attach::fs::UnsupportedFilesystem;
use crate::attach::AttachError;

/// Why a call of the Docker volume plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The request body is not the JSON dockerd sends.
    #[error("malformed request: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The options of a Create were refused.
    #[error("volume {volume}: {source}")]
    Options {
        /// The volume.
        volume: String,
        /// What is wrong with them.
        source: OptionError,
    },
    /// The volume records a filesystem this plugin cannot make or mount.
    #[error("volume {volume}: {source}")]
    Filesystem {
        /// The volume.
        volume: String,
        /// The filesystem it names.
        source: UnsupportedFilesystem,
    },
    /// There is no volume of that name (in this node's view).
    #[error("no such volume: {volume}")]
    NoSuchVolume {
        /// The volume.
        volume: String,
    },
    /// Remove of a volume that is mounted on this node.
    #[error("volume {volume} is mounted on this node")]
    MountedHere {
        /// The volume.
        volume: String,
    },
    /// The cluster did not answer within the time dockerd allows.
    #[error("{op} volume {volume}: no answer from the cluster within {budget:?}")]
    Timeout {
        /// What was being done (`removing`, `attaching`).
        op: &'static str,
        /// The volume.
        volume: String,
        /// How long it waited.
        budget: Duration,
    },
    /// The store refused or failed the call.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Attaching the volume, or making or mounting its filesystem, failed
    /// (the attachment was given back).
    #[error("mounting volume {volume}: {source}")]
    Mount {
        /// The volume.
        volume: String,
        /// What failed.
        source: AttachError,
    },
    /// Unmounting the volume's filesystem or detaching its device failed
    /// (the volume stays in the mount table, and the sweep tries again).
    #[error("unmounting volume {volume}: {source}")]
    Unmount {
        /// The volume.
        volume: String,
        /// What failed.
        source: AttachError,
    },
    /// The blocking task doing a mount or an unmount panicked or was
    /// cancelled.
    #[error("{op} task for volume {volume} failed: {source}")]
    Task {
        /// `mount` or `unmount`.
        op: &'static str,
        /// The volume.
        volume: String,
        /// How it ended.
        source: tokio::task::JoinError,
    },
    /// The mount table could not be loaded or saved.
    #[error(transparent)]
    MountTable(#[from] MountTableError),
    /// The plugin socket could not be set up.
    #[error("{step} {}: {source}", path.display())]
    Socket {
        /// What was being done (`creating`, `removing stale socket`,
        /// `binding`, `chmod`).
        step: &'static str,
        /// The socket, or its directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

impl IntoResponse for PluginError {
    /// dockerd's error answer: the one place `{"Err": ...}` is built from
    /// an error.
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "Err": self.to_string() });
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_error_is_answered_as_500_with_its_text_in_err() {
        let e = PluginError::Backend(BackendError::InUse {
            volume: "v1".into(),
            node: 1,
            epoch: 4,
        });
        let text = e.to_string();
        assert_eq!(text, "volume v1 is in use: attached on node 1 (epoch 4)");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v, serde_json::json!({ "Err": text }));
    }

    #[test]
    fn texts_name_the_volume_and_keep_the_cause() {
        let e = PluginError::Options {
            volume: "bad".into(),
            source: OptionError::Unknown("colour".into()),
        };
        assert_eq!(
            e.to_string(),
            "volume bad: unknown option `colour` (known: size, replicas, fs, chunk_size, spread, require)"
        );
        let e = PluginError::Backend(BackendError::HeldElsewhere {
            volume: "v1".into(),
            node: 1,
            epoch: 2,
            silent_ms: 10,
            grace_ms: 30_000,
        });
        assert!(e.to_string().contains("attached on node 1"), "{e}");
        let e = PluginError::Timeout {
            op: "attaching",
            volume: "v1".into(),
            budget: Duration::from_secs(90),
        };
        assert_eq!(
            e.to_string(),
            "attaching volume v1: no answer from the cluster within 90s"
        );
    }
}
