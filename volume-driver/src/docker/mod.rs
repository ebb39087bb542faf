//! The Docker volume plugin: dockerd's legacy `VolumeDriver` API over a unix
//! socket. Create/Remove/Get/List/Capabilities go to the store through
//! [`VolumeBackend`]; Mount attaches the volume on this node (FUSE file +
//! loop device), makes the filesystem on first use and mounts it under the
//! data directory, reference-counted by the IDs dockerd sends; the last
//! Unmount detaches. Errors are answered as HTTP 500 with `{"Err": ...}`
//! ([`PluginError`], in `error.rs`).

pub mod api;
pub mod backend;
mod error;
mod grow;
pub mod metrics;
pub mod mounts;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;

use crate::attach::{self, AttachError, Attached};
use api::{CreateOptions, CreateRequest, Filesystem, MountRequest, NameRequest, VolumeView};
pub use backend::{BackendError, VolumeBackend, VolumeInfo};
pub use error::PluginError;
pub use metrics::PluginMetrics;
use mounts::{MountTable, MountedVolume};

/// Default path of the plugin socket (dockerd looks there for `raftblock`).
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/raftblock.sock";
/// How long Mount may wait for the cluster to grant the attachment
/// (including waiting out a silent holder's grace): dockerd gives Mount two
/// minutes, and an answer it timed out on is lost.
const ATTACH_BUDGET: Duration = Duration::from_secs(90);
/// How long Unmount waits to give the lease back before leaving it to
/// the sweep.
const RELEASE_BUDGET: Duration = Duration::from_secs(10);
/// How long Remove may wait for the cluster (dockerd allows a minute).
const REMOVE_BUDGET: Duration = Duration::from_secs(45);
/// How often leases this node holds without a mount are given back.
const LEASE_SWEEP: Duration = Duration::from_secs(15);

/// The plugin's state on this node.
pub struct Plugin<B: VolumeBackend> {
    backend: Arc<B>,
    /// Mountpoints and FUSE files live under here.
    root: PathBuf,
    table: Mutex<MountTable>,
    attached: Mutex<HashMap<String, Attached>>,
    /// One Mount/Unmount at a time per volume.
    busy: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    metrics: Arc<PluginMetrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, api::CONTENT_TYPE)],
        v.to_string(),
    )
        .into_response()
}

/// Parses a request body; dockerd sends no content type, and an empty body
/// for Activate.
fn parse<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, PluginError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(PluginError::Malformed)
}

impl<B: VolumeBackend> Plugin<B> {
    /// The plugin over `backend`, keeping its mounts under `root`.
    pub fn new(
        backend: Arc<B>,
        root: &Path,
        metrics: Arc<PluginMetrics>,
    ) -> Result<Arc<Plugin<B>>, PluginError> {
        let table = MountTable::load(&root.join("mounts.json"))?;
        attach::log_method();
        Ok(Arc::new(Plugin {
            backend,
            root: root.to_path_buf(),
            table: Mutex::new(table),
            attached: Mutex::new(HashMap::new()),
            busy: tokio::sync::Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    fn work_dir(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(name)
    }

    fn mountpoint(&self, name: &str) -> PathBuf {
        self.work_dir(name).join("mnt")
    }

    async fn volume_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.busy
            .lock()
            .await
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn view(&self, v: &VolumeInfo) -> VolumeView {
        let mounted = lock(&self.table).volumes.get(&v.name).cloned();
        let mut status = BTreeMap::new();
        status.insert("size".into(), json!(v.size));
        status.insert("replicas".into(), json!(v.replicas));
        status.insert("fs".into(), json!(v.fs.as_deref().unwrap_or("ext4")));
        if let Some(n) = v.attached_to {
            status.insert("attached_to_node".into(), json!(n));
        }
        if let Some(m) = &mounted {
            status.insert("device".into(), json!(m.device));
            status.insert("mounts".into(), json!(m.ids.len()));
        }
        VolumeView {
            created_at: api::rfc3339(v.created_unix),
            name: v.name.clone(),
            mountpoint: mounted
                .map(|m| m.mountpoint.display().to_string())
                .unwrap_or_default(),
            status,
        }
    }

    async fn create(&self, req: CreateRequest) -> Result<Value, PluginError> {
        let opts = CreateOptions::parse(&req.opts.unwrap_or_default()).map_err(|source| {
            PluginError::Options {
                volume: req.name.clone(),
                source,
            }
        })?;
        self.backend.create(&req.name, &opts).await?;
        Ok(json!({ "Err": "" }))
    }

    async fn remove(&self, name: &str) -> Result<Value, PluginError> {
        if lock(&self.table).volumes.contains_key(name) {
            return Err(PluginError::MountedHere {
                volume: name.to_string(),
            });
        }
        match tokio::time::timeout(REMOVE_BUDGET, self.backend.remove(name)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(PluginError::Timeout {
                    op: "removing",
                    volume: name.to_string(),
                    budget: REMOVE_BUDGET,
                })
            }
        }
        Ok(json!({ "Err": "" }))
    }

    async fn mount(self: &Arc<Self>, req: MountRequest) -> Result<Value, PluginError> {
        let started = std::time::Instant::now();
        let name = req.name.clone();
        let guard = self.volume_lock(&name).await;
        let _held = guard.lock().await;
        {
            let mut t = lock(&self.table);
            if let Some(m) = t.volumes.get_mut(&name) {
                if lock(&self.attached).contains_key(&name) {
                    // Already attached here: one more user (or a re-sent ID).
                    m.ids.insert(req.id.clone());
                    let mp = m.mountpoint.clone();
                    t.save()?;
                    return Ok(json!({ "Mountpoint": mp, "Err": "" }));
                }
            }
        }
        let info = self
            .backend
            .lookup(&name)
            .ok_or_else(|| PluginError::NoSuchVolume {
                volume: name.clone(),
            })?;
        let fs = match info.fs.as_deref() {
            Some(f) => Filesystem::parse(f).map_err(|source| PluginError::Filesystem {
                volume: name.clone(),
                source,
            })?,
            None => Filesystem::Ext4,
        };
        let (volume, epoch) =
            match tokio::time::timeout(ATTACH_BUDGET, self.backend.acquire(&name)).await {
                Ok(r) => r?,
                // A lease granted after this is given back by the sweep.
                Err(_) => {
                    return Err(PluginError::Timeout {
                        op: "attaching",
                        volume: name,
                        budget: ATTACH_BUDGET,
                    })
                }
            };
        let (work, mp) = (self.work_dir(&name), self.mountpoint(&name));
        let rt = tokio::runtime::Handle::current();
        let this = self.clone();
        let name2 = name.clone();
        let done = tokio::task::spawn_blocking(move || -> Result<MountedVolume, AttachError> {
            let a = attach::attach(volume, rt, &work)?;
            let (device, method) = (a.device.clone(), a.method);
            let prepared = (|| {
                let found = attach::fs::probe(&device)?;
                let fs_name = match found {
                    Some(t) => t,
                    None => {
                        attach::fs::make(&device, fs)?;
                        fs.name().to_string()
                    }
                };
                attach::fs::mount(&device, &mp, &fs_name)
            })();
            if let Err(e) = prepared {
                let _ = a.detach();
                return Err(e);
            }
            lock(&this.attached).insert(name2, a);
            Ok(MountedVolume {
                ids: Default::default(),
                device,
                mountpoint: mp,
                attach: method.into(),
                epoch,
            })
        })
        .await
        .map_err(|source| PluginError::Task {
            op: "mount",
            volume: name.clone(),
            source,
        })?;
        let mut mounted = match done {
            Ok(m) => m,
            Err(source) => {
                let _ = self.backend.release(&name, epoch).await;
                return Err(PluginError::Mount {
                    volume: name,
                    source,
                });
            }
        };
        mounted.ids.insert(req.id);
        let mp = mounted.mountpoint.clone();
        let saved = {
            let mut t = lock(&self.table);
            t.volumes.insert(name.clone(), mounted);
            self.metrics.set_mounted(t.volumes.len());
            t.save()
        };
        if let Err(e) = saved {
            // dockerd hears that the mount failed and will not unmount it:
            // nothing may stay mounted or attached for it.
            tracing::error!(volume = %name, error = %e, "recording the mount failed; undoing it");
            if let Err(undo) = self.unmount_and_detach(&name, mp).await {
                tracing::error!(volume = %name, error = %undo, "undoing a mount that could not be recorded");
            }
            self.forget(&name);
            self.give_back(&name, epoch).await;
            return Err(e.into());
        }
        self.metrics.mount_took(started.elapsed());
        tracing::info!(volume = %name, mountpoint = %mp.display(), "mounted");
        Ok(json!({ "Mountpoint": mp, "Err": "" }))
    }

    async fn unmount(self: &Arc<Self>, req: MountRequest) -> Result<Value, PluginError> {
        let name = req.name.clone();
        let guard = self.volume_lock(&name).await;
        let _held = guard.lock().await;
        let last = {
            let mut t = lock(&self.table);
            let Some(m) = t.volumes.get_mut(&name) else {
                // Unknown volume or ID: nothing to undo (dockerd re-sends).
                return Ok(json!({ "Err": "" }));
            };
            if !m.ids.remove(&req.id) {
                // An ID this node never mounted (a re-sent Unmount, or a
                // mount made before the volume moved here).
                return Ok(json!({ "Err": "" }));
            }
            let last = m.ids.is_empty().then(|| (m.mountpoint.clone(), m.epoch));
            t.save()?;
            last
        };
        let Some((mp, epoch)) = last else {
            return Ok(json!({ "Err": "" }));
        };
        self.tear_down(&name, mp, epoch).await?;
        Ok(json!({ "Err": "" }))
    }

    /// Unmounts the filesystem of `name`, detaches its device and gives the
    /// attachment back: what the last Unmount does. Called with the
    /// volume's lock held. If the filesystem is busy the volume stays in
    /// the table with no IDs, and the sweep tries again.
    async fn tear_down(
        self: &Arc<Self>,
        name: &str,
        mp: PathBuf,
        epoch: u64,
    ) -> Result<(), PluginError> {
        self.unmount_and_detach(name, mp).await?;
        self.forget(name);
        lock(&self.table).save()?;
        self.give_back(name, epoch).await;
        tracing::info!(volume = %name, "unmounted and detached");
        Ok(())
    }

    /// Unmounts the filesystem of `name` (if mounted) and detaches its
    /// device.
    async fn unmount_and_detach(
        self: &Arc<Self>,
        name: &str,
        mp: PathBuf,
    ) -> Result<(), PluginError> {
        let this = self.clone();
        let name2 = name.to_string();
        tokio::task::spawn_blocking(move || -> Result<(), AttachError> {
            if attach::fs::is_mounted(&mp) {
                attach::fs::unmount(&mp)?;
            }
            if let Some(a) = lock(&this.attached).remove(&name2) {
                a.detach()?;
            }
            Ok(())
        })
        .await
        .map_err(|source| PluginError::Task {
            op: "unmount",
            volume: name.to_string(),
            source,
        })?
        .map_err(|source| PluginError::Unmount {
            volume: name.to_string(),
            source,
        })
    }

    /// Drops `name` from the mount table in memory only.
    fn forget(&self, name: &str) {
        let mut t = lock(&self.table);
        t.volumes.remove(name);
        self.metrics.set_mounted(t.volumes.len());
    }

    /// Gives the attachment of `name` at `epoch` back to the cluster.
    async fn give_back(&self, name: &str, epoch: u64) {
        // The device is gone either way; if the cluster cannot take the
        // lease back now, the sweep gives it back later (dockerd allows
        // Unmount a minute, and a failed Unmount leaves it confused).
        match tokio::time::timeout(RELEASE_BUDGET, self.backend.release(name, epoch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(volume = %name, error = %e, "giving the attachment back failed; the lease sweep retries")
            }
            Err(_) => {
                tracing::warn!(volume = %name, "giving the attachment back timed out; the lease sweep retries")
            }
        }
    }

    /// Cleans up what an earlier run of the daemon left mounted: its FUSE
    /// files died with it, so the filesystems and loop devices on them are
    /// dead too. Unmounts them, frees the loop devices, and gives the
    /// attachments back (if they are still this node's). Containers still
    /// using such a mount see I/O errors; dockerd mounts again for new ones.
    pub async fn reconcile(self: &Arc<Self>) {
        let stale: Vec<(String, MountedVolume)> = std::mem::take(&mut lock(&self.table).volumes)
            .into_iter()
            .collect();
        let root = self.root.clone();
        let cleaned =
            tokio::task::spawn_blocking(move || attach::clean_stale(&root.join("volumes"))).await;
        match cleaned {
            Ok(msgs) => {
                for m in msgs {
                    tracing::warn!("{m}");
                }
            }
            Err(e) => tracing::error!(error = %e, "cleaning stale mounts"),
        }
        if let Err(e) = lock(&self.table).save() {
            tracing::error!(error = %e, "saving the mount table");
        }
        // Giving the attachments back needs the metadata group, which may
        // still be electing: do it beside serving (a Detach of an epoch
        // that moved on is a no-op).
        let this = self.clone();
        tokio::spawn(async move {
            for (name, m) in &stale {
                tracing::warn!(volume = %name, mountpoint = %m.mountpoint.display(), ids = m.ids.len(), "a mount of the previous run was cleaned up");
                if let Err(e) = this.backend.release(name, m.epoch).await {
                    tracing::warn!(volume = %name, error = %e, "giving back a stale attachment");
                }
            }
        });
    }

    /// Renews the attachments of the volumes mounted here, so other nodes
    /// (through the metadata) see this node still holds them.
    async fn renew_leases(self: Arc<Self>) {
        let every = self.backend.renew_every();
        loop {
            tokio::time::sleep(every).await;
            let held: Vec<(String, u64)> = lock(&self.table)
                .volumes
                .iter()
                .map(|(n, m)| (n.clone(), m.epoch))
                .collect();
            if held.is_empty() {
                continue;
            }
            match tokio::time::timeout(every.max(Duration::from_secs(5)), self.backend.renew(held))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing attachments failed"),
                Err(_) => tracing::warn!("renewing attachments timed out"),
            }
        }
    }

    /// Finishes unmounts that found the filesystem busy, and gives back
    /// leases this node holds on volumes it has not mounted (an attach that
    /// finished after Mount gave up on it, or a detach that failed while
    /// the cluster was unreachable), so they do not block other nodes.
    async fn sweep_leases(self: Arc<Self>) {
        let me = self.backend.local_node();
        loop {
            tokio::time::sleep(LEASE_SWEEP).await;
            // Volumes whose last Unmount could not unmount (busy): again.
            let unused: Vec<String> = lock(&self.table)
                .volumes
                .iter()
                .filter(|(_, m)| m.ids.is_empty())
                .map(|(n, _)| n.clone())
                .collect();
            for name in unused {
                let guard = self.volume_lock(&name).await;
                let _held = guard.lock().await;
                let again = lock(&self.table)
                    .volumes
                    .get(&name)
                    .filter(|m| m.ids.is_empty())
                    .map(|m| (m.mountpoint.clone(), m.epoch));
                if let Some((mp, epoch)) = again {
                    if let Err(e) = self.tear_down(&name, mp, epoch).await {
                        tracing::warn!(volume = %name, error = %e, "unmounting an unused volume failed; trying again later");
                    }
                }
            }
            for v in self.backend.list() {
                if v.attached_to != Some(me) {
                    continue;
                }
                let guard = self.volume_lock(&v.name).await;
                let _held = guard.lock().await;
                if lock(&self.attached).contains_key(&v.name) {
                    continue;
                }
                // Look again under the lock: a Mount may have just finished.
                let Some(now) = self.backend.lookup(&v.name) else {
                    continue;
                };
                if now.attached_to == Some(me) {
                    tracing::warn!(volume = %v.name, epoch = now.attach_epoch, "giving back an attachment no mount uses");
                    if let Err(e) = self.backend.release(&v.name, now.attach_epoch).await {
                        tracing::warn!(volume = %v.name, error = %e, "giving back an unused attachment");
                    }
                }
            }
        }
    }

    fn path(&self, name: &str) -> Value {
        let mp = lock(&self.table)
            .volumes
            .get(name)
            .map(|m| m.mountpoint.display().to_string())
            .unwrap_or_default();
        json!({ "Mountpoint": mp, "Err": "" })
    }

    fn get(&self, name: &str) -> Result<Value, PluginError> {
        let v = self
            .backend
            .lookup(name)
            .ok_or_else(|| PluginError::NoSuchVolume {
                volume: name.to_string(),
            })?;
        Ok(json!({ "Volume": self.view(&v), "Err": "" }))
    }

    fn list(&self) -> Value {
        let vols: Vec<VolumeView> = self.backend.list().iter().map(|v| self.view(v)).collect();
        json!({ "Volumes": vols, "Err": "" })
    }
}

async fn activate() -> Response {
    ok(json!({ "Implements": ["VolumeDriver"] }))
}

async fn capabilities() -> Response {
    ok(json!({ "Capabilities": { "Scope": "global" } }))
}

fn answer(m: &PluginMetrics, endpoint: &'static str, r: Result<Value, PluginError>) -> Response {
    m.call(endpoint, r.is_ok());
    match r {
        Ok(v) => ok(v),
        Err(e) => {
            tracing::warn!(endpoint, error = %e, "volume plugin call failed");
            e.into_response()
        }
    }
}

async fn create<B: VolumeBackend>(State(p): State<Arc<Plugin<B>>>, body: Bytes) -> Response {
    match parse::<CreateRequest>(&body) {
        Ok(r) => answer(&p.metrics, "Create", p.create(r).await),
        Err(e) => answer(&p.metrics, "Create", Err(e)),
    }
}

async fn remove<B: VolumeBackend>(State(p): State<Arc<Plugin<B>>>, body: Bytes) -> Response {
    match parse::<NameRequest>(&body) {
        Ok(r) => answer(&p.metrics, "Remove", p.remove(&r.name).await),
        Err(e) => answer(&p.metrics, "Remove", Err(e)),
    }
}

async fn mount<B: VolumeBackend>(State(p): State<Arc<Plugin<B>>>, body: Bytes) -> Response {
    match parse::<MountRequest>(&body) {
        Ok(r) => answer(&p.metrics, "Mount", p.mount(r).await),
        Err(e) => answer(&p.metrics, "Mount", Err(e)),
    }
}

async fn unmount<B: VolumeBackend>(State(p): State<Arc<Plugin<B>>>, body: Bytes) -> Response {
    match parse::<MountRequest>(&body) {
        Ok(r) => answer(&p.metrics, "Unmount", p.unmount(r).await),
        Err(e) => answer(&p.metrics, "Unmount", Err(e)),
    }
}

async fn path<B: VolumeBackend>(State(p): State<Arc<Plugin<B>>>, body: Bytes) -> Response {
    match parse::<NameRequest>(&body) {
        Ok(r) => ok(p.path(&r.name)),
        Err(e) => answer(&p.metrics, "Path", Err(e)),
    }
}

async fn get<B: VolumeBackend>(State(p): State<Arc<Plugin<B>>>, body: Bytes) -> Response {
    match parse::<NameRequest>(&body) {
        Ok(r) => answer(&p.metrics, "Get", p.get(&r.name)),
        Err(e) => answer(&p.metrics, "Get", Err(e)),
    }
}

async fn list<B: VolumeBackend>(State(p): State<Arc<Plugin<B>>>) -> Response {
    ok(p.list())
}

/// The plugin's routes.
pub fn router<B: VolumeBackend>(plugin: Arc<Plugin<B>>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/VolumeDriver.Capabilities", post(capabilities))
        .route("/VolumeDriver.Create", post(create::<B>))
        .route("/VolumeDriver.Remove", post(remove::<B>))
        .route("/VolumeDriver.Mount", post(mount::<B>))
        .route("/VolumeDriver.Unmount", post(unmount::<B>))
        .route("/VolumeDriver.Path", post(path::<B>))
        .route("/VolumeDriver.Get", post(get::<B>))
        .route("/VolumeDriver.List", post(list::<B>))
        .with_state(plugin)
}

/// Builds the error for `step` on the socket (or its directory) `path`.
fn socket_err(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PluginError {
    let path = path.to_path_buf();
    move |source| PluginError::Socket { step, path, source }
}

/// Binds the plugin socket at `path`, mode 0600. While another live
/// process answers on it (another daemon on this host), waits and tries
/// again every second: this node takes over when that one dies.
pub async fn bind(path: &Path) -> Result<UnixListener, PluginError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(socket_err("creating", dir))?;
    }
    let mut told = false;
    while tokio::net::UnixStream::connect(path).await.is_ok() {
        if !told {
            tracing::info!(socket = %path.display(), "the plugin socket is served by another process; standing by");
            told = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(PluginError::Socket {
                step: "removing stale socket",
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let l = UnixListener::bind(path).map_err(socket_err("binding", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(socket_err("chmod", path))?;
    Ok(l)
}

/// Cleans up the previous run's mounts, binds `socket` (standing by while
/// another process serves it) and serves the plugin until `shutdown` turns
/// true; then removes the socket, so dockerd does not retry a dead one.
pub async fn serve<B: VolumeBackend>(
    socket: PathBuf,
    plugin: Arc<Plugin<B>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    plugin.reconcile().await;
    tokio::spawn(plugin.clone().sweep_leases());
    tokio::spawn(plugin.clone().renew_leases());
    tokio::spawn(plugin.clone().grow_attached());
    let listener = tokio::select! {
        l = bind(&socket) => match l {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the Docker volume plugin is not served");
                return;
            }
        },
        _ = shutdown.wait_for(|s| *s) => return,
    };
    tracing::info!(socket = %socket.display(), "serving the Docker volume plugin");
    let served = axum::serve(listener, router(plugin))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "volume plugin server stopped");
    }
    let _ = std::fs::remove_file(&socket);
}
