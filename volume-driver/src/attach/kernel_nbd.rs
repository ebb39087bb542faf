//! Attaching a volume as a kernel NBD device (`/dev/nbdN`) where the `nbd`
//! module is loaded, through the ioctl interface (the one `nbd-client -L`
//! uses). The daemon serves the device itself: the kernel gets one end of a
//! socket pair, the other end goes straight into the NBD transmission loop
//! with the attached volume, so there is no TCP hop, no handshake, and the
//! writes carry the attachment's epoch like the FUSE path's do.
//!
//! Not exercised by the test suite: the machines it runs on have no `nbd`
//! module, and [`available`] then sends every attach to FUSE + loop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raftblock_storage::VolumeIo;
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::error::AttachError;
use crate::NbdMetrics;

// ioctl numbers from <linux/nbd.h>: _IO(0xab, n).
const NBD_SET_SOCK: libc::c_ulong = 0xab00;
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
const NBD_DO_IT: libc::c_ulong = 0xab03;
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
const NBD_CLEAR_QUE: libc::c_ulong = 0xab05;
const NBD_SET_SIZE_BLOCKS: libc::c_ulong = 0xab07;
const NBD_DISCONNECT: libc::c_ulong = 0xab08;
const NBD_SET_TIMEOUT: libc::c_ulong = 0xab09;
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;
/// Devices probed for a free one.
const MAX_DEVICES: u32 = 256;
/// Per-request timeout given to the kernel, in seconds: longer than a
/// router waits for a shard leader, so a failover stalls I/O instead of
/// failing it.
const REQUEST_TIMEOUT_S: libc::c_ulong = 120;

/// Whether this host can attach through kernel NBD (loading the module if
/// it is there but not loaded). Decided once per process.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if !Path::new("/sys/module/nbd").exists() {
            let _ = std::process::Command::new("modprobe").arg("nbd").output();
        }
        Path::new("/sys/module/nbd").exists() && Path::new("/dev/nbd0").exists()
    })
}

fn ioctl(f: &File, req: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<libc::c_int> {
    // SAFETY: the NBD ioctls used here take an integer argument (or none);
    // the descriptor is valid for the lifetime of `f`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Builds the error for `step` on `device` from the I/O error it ended with.
fn nbd_err(step: &'static str, device: &Path) -> impl FnOnce(std::io::Error) -> AttachError {
    let device = device.to_path_buf();
    move |source| AttachError::Nbd {
        step,
        device,
        source,
    }
}

/// A volume attached as `/dev/nbdN`; [`KernelDevice::detach`] undoes it.
pub struct KernelDevice {
    /// The block device.
    pub device: PathBuf,
    file: Arc<File>,
    /// The block size the device was set up with.
    block: u64,
    do_it: Option<std::thread::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl KernelDevice {
    /// Tells the kernel the volume is now `size` bytes (a connected device
    /// takes a new size; the block layer announces the change).
    pub fn set_size(&self, size: u64) -> Result<(), AttachError> {
        ioctl(
            &self.file,
            NBD_SET_SIZE_BLOCKS,
            (size / self.block) as libc::c_ulong,
        )
        .map(|_| ())
        .map_err(|source| AttachError::Grow {
            step: "NBD_SET_SIZE_BLOCKS",
            device: self.device.clone(),
            source,
        })
    }

    /// Disconnects the device and stops serving it.
    pub fn detach(mut self) -> Result<(), AttachError> {
        let r = ioctl(&self.file, NBD_DISCONNECT, 0)
            .map(|_| ())
            .map_err(nbd_err("NBD_DISCONNECT", &self.device));
        if let Some(t) = self.do_it.take() {
            let _ = t.join();
        }
        let _ = self.stop.send(true);
        r
    }
}

/// Configures a free `/dev/nbdN` for `volume` and starts serving it on `rt`.
pub fn attach<V: VolumeIo>(volume: Arc<V>, rt: Handle) -> Result<KernelDevice, AttachError> {
    let size = volume.size();
    let block: u64 = if size & 4095 == 0 { 4096 } else { 512 };
    let mut last_err = AttachError::NoNbdDevices;
    for i in 0..MAX_DEVICES {
        let device = PathBuf::from(format!("/dev/nbd{i}"));
        if !device.exists() {
            break;
        }
        if Path::new(&format!("/sys/block/nbd{i}/pid")).exists() {
            continue; // connected to someone
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&device)
        {
            Ok(f) => f,
            Err(source) => {
                last_err = AttachError::Nbd {
                    step: "opening",
                    device,
                    source,
                };
                continue;
            }
        };
        let (kernel_end, our_end) =
            UnixStream::pair().map_err(nbd_err("making a socket pair for", &device))?;
        let configured = (|| -> std::io::Result<()> {
            ioctl(&file, NBD_CLEAR_SOCK, 0)?;
            ioctl(&file, NBD_SET_BLKSIZE, block as libc::c_ulong)?;
            ioctl(&file, NBD_SET_SIZE_BLOCKS, (size / block) as libc::c_ulong)?;
            ioctl(
                &file,
                NBD_SET_FLAGS,
                crate::nbd::kernel_transmission_flags() as libc::c_ulong,
            )?;
            ioctl(&file, NBD_SET_TIMEOUT, REQUEST_TIMEOUT_S)?;
            ioctl(&file, NBD_SET_SOCK, kernel_end.as_raw_fd() as libc::c_ulong)?;
            Ok(())
        })();
        if let Err(source) = configured {
            // EBUSY: another attach took this device meanwhile.
            last_err = AttachError::Nbd {
                step: "configuring",
                device,
                source,
            };
            let _ = ioctl(&file, NBD_CLEAR_SOCK, 0);
            continue;
        }
        our_end
            .set_nonblocking(true)
            .map_err(nbd_err("serving", &device))?;
        let (stop, stop_rx) = watch::channel(false);
        let serving = {
            let _in_rt = rt.enter();
            tokio::net::UnixStream::from_std(our_end).map_err(nbd_err("serving", &device))?
        };
        let name = volume.name().to_string();
        let dev = device.clone();
        rt.spawn(async move {
            let metrics = Arc::new(NbdMetrics::default());
            if let Err(e) =
                crate::nbd::serve_kernel_socket(serving, volume, metrics, stop_rx).await
            {
                tracing::warn!(volume = %name, device = %dev.display(), error = %e, "kernel NBD connection ended");
            }
        });
        let file = Arc::new(file);
        let f2 = file.clone();
        let dev = device.clone();
        let do_it = std::thread::Builder::new()
            .name(format!("nbd{i}"))
            .spawn(move || {
                // Blocks for the life of the connection.
                if let Err(e) = ioctl(&f2, NBD_DO_IT, 0) {
                    tracing::debug!(device = %dev.display(), error = %e, "NBD_DO_IT returned");
                }
                let _ = ioctl(&f2, NBD_CLEAR_QUE, 0);
                let _ = ioctl(&f2, NBD_CLEAR_SOCK, 0);
                drop(kernel_end);
            })
            .map_err(nbd_err("starting the thread serving", &device))?;
        return Ok(KernelDevice {
            device,
            file,
            block,
            do_it: Some(do_it),
            stop,
        });
    }
    Err(AttachError::NoFreeNbdDevice {
        last: Box::new(last_err),
    })
}
