//! Resizing a volume in the metadata. A resize is two metadata commands
//! around one entry in every shard's log: `BeginResize` records the target
//! (and, for a shrink, lowers the size clients see at once, so nothing new
//! is written past it); every shard then applies a resize entry in its own
//! log order (`BlockOp::Resize`: the range between the two sizes is
//! cleared on every replica alike); `FinishResize` makes the new size the
//! volume's. A grow becomes visible only once every shard has ordered its
//! resize entry before any write past the old end, so a replica never sees
//! such a write before it knows the volume grew. A resize whose proposer
//! died in between stays pending in the metadata, and the metadata leader
//! finishes it (`Cluster::finish_resizes`), so the volume never ends at
//! two sizes.

use serde::{Deserialize, Serialize};

use super::{MetaError, MetaState};

/// A resize begun and not yet finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingResize {
    /// The volume's resize count with this one (`VolumeRecord::resizes`):
    /// its shards apply each resize once, by this number.
    pub seq: u64,
    /// The size before it.
    pub from: u64,
    /// The size it goes to.
    pub size: u64,
    /// When it began (seconds since the epoch, from the proposer).
    pub since_unix: u64,
}

impl MetaState {
    /// Records a resize of `name` to `size`. A shrink needs `allow_shrink`
    /// and is refused while the volume is attached; a volume keeps at
    /// least one chunk per shard. Beginning the resize already pending
    /// again is a no-op (a retry); another size replaces it (its shard
    /// entries clear the range between the sizes again, so either order
    /// ends at the last one).
    pub(super) fn begin_resize(
        &mut self,
        name: &str,
        size: u64,
        allow_shrink: bool,
        since_unix: u64,
    ) -> Result<(), MetaError> {
        let rec = self
            .volumes
            .get_mut(name)
            .ok_or_else(|| MetaError::VolumeNotFound(name.to_string()))?;
        let refuse = |reason: String| MetaError::Resize {
            name: name.to_string(),
            reason,
        };
        raftblock_storage::catalog::validate_sizes(size, rec.meta.chunk_size)
            .map_err(|e| refuse(e.to_string()))?;
        let chunks = size.div_ceil(rec.meta.chunk_size);
        if chunks < rec.shards.len() as u64 {
            return Err(refuse(format!(
                "{size} bytes is fewer chunks ({chunks}) than the volume has shards ({})",
                rec.shards.len()
            )));
        }
        let current = rec.resize.as_ref().map_or(rec.meta.size, |p| p.size);
        if size == current {
            return Ok(());
        }
        if size < rec.meta.size {
            if !allow_shrink {
                return Err(refuse(format!(
                    "{size} bytes is smaller than its {} bytes; shrinking loses the data past \
                     the new end and needs --allow-shrink",
                    rec.meta.size
                )));
            }
            if let Some(a) = &rec.attachment {
                return Err(refuse(format!(
                    "it is attached on node {} (epoch {}); shrink it once detached",
                    a.node, a.epoch
                )));
            }
        }
        let from = rec.meta.size;
        if size < from {
            rec.meta.size = size;
        }
        rec.resizes += 1;
        rec.resize = Some(PendingResize {
            seq: rec.resizes,
            from,
            size,
            since_unix,
        });
        Ok(())
    }

    /// Ends the resize of `name` to `size` once every shard applied it.
    /// A no-op when another resize replaced it meanwhile.
    pub(super) fn finish_resize(&mut self, name: &str, size: u64) -> Result<(), MetaError> {
        let rec = self
            .volumes
            .get_mut(name)
            .ok_or_else(|| MetaError::VolumeNotFound(name.to_string()))?;
        if rec.resize.as_ref().is_some_and(|p| p.size == size) {
            rec.meta.size = size;
            rec.resize = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::testing::state;
    use crate::meta::{Attachment, MetaCommand};

    const MIB: u64 = 1 << 20;

    /// Volume `v`: 1 GiB in 64 MiB chunks, `shards` shards.
    fn with_volume(shards: usize) -> MetaState {
        state(3, vec![vec![1, 2, 3]; shards])
    }

    fn begin(m: &mut MetaState, size: u64, allow_shrink: bool) -> Result<(), MetaError> {
        let i = m.applied + 1;
        m.apply(
            i,
            MetaCommand::BeginResize {
                name: "v".into(),
                size,
                allow_shrink,
                since_unix: 1,
            },
        )
        .map(|_| ())
    }

    fn finish(m: &mut MetaState, size: u64) {
        let i = m.applied + 1;
        let r = m.apply(
            i,
            MetaCommand::FinishResize {
                name: "v".into(),
                size,
            },
        );
        assert!(r.is_ok(), "{r:?}");
    }

    fn size(m: &MetaState) -> u64 {
        m.volumes["v"].meta.size
    }

    #[test]
    fn a_grow_is_visible_only_once_finished() {
        let mut m = with_volume(2);
        assert!(begin(&mut m, 2048 * MIB, false).is_ok());
        assert_eq!(size(&m), 1024 * MIB);
        let p = m.volumes["v"].resize.clone();
        assert_eq!(p.map(|p| (p.from, p.size)), Some((1024 * MIB, 2048 * MIB)));
        finish(&mut m, 2048 * MIB);
        assert_eq!(size(&m), 2048 * MIB);
        assert_eq!(m.volumes["v"].resize, None);
    }

    #[test]
    fn a_shrink_needs_consent_and_no_attachment_and_lowers_the_size_at_once() {
        let mut m = with_volume(2);
        let e = begin(&mut m, 512 * MIB, false);
        assert!(
            matches!(&e, Err(MetaError::Resize { reason, .. }) if reason.contains("--allow-shrink")),
            "{e:?}"
        );
        if let Some(v) = m.volumes.get_mut("v") {
            v.attachment = Some(Attachment {
                node: 2,
                epoch: 1,
                since_unix: 0,
                renewed: 0,
            });
        }
        let e = begin(&mut m, 512 * MIB, true);
        assert!(
            matches!(&e, Err(MetaError::Resize { reason, .. }) if reason.contains("attached on node 2")),
            "{e:?}"
        );
        if let Some(v) = m.volumes.get_mut("v") {
            v.attachment = None;
        }
        assert!(begin(&mut m, 512 * MIB, true).is_ok());
        assert_eq!(size(&m), 512 * MIB, "clients see the smaller size at once");
        finish(&mut m, 512 * MIB);
        assert_eq!((size(&m), m.volumes["v"].resize.clone()), (512 * MIB, None));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        let mut m = with_volume(4);
        for (s, why) in [
            (1024 * MIB + 1, "multiple of 4096"),
            (128 * MIB, "fewer chunks (2) than the volume has shards (4)"),
        ] {
            let e = begin(&mut m, s, true);
            assert!(
                matches!(&e, Err(MetaError::Resize { reason, .. }) if reason.contains(why)),
                "{s}: {e:?}"
            );
        }
        assert_eq!(size(&m), 1024 * MIB);
    }

    #[test]
    fn a_stale_finish_does_not_undo_a_newer_resize() {
        let mut m = with_volume(2);
        assert!(begin(&mut m, 2048 * MIB, false).is_ok());
        assert!(begin(&mut m, 4096 * MIB, false).is_ok());
        finish(&mut m, 2048 * MIB);
        assert_eq!(size(&m), 1024 * MIB);
        finish(&mut m, 4096 * MIB);
        assert_eq!(size(&m), 4096 * MIB);
    }
}
