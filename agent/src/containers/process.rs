//! A container's init process held by a pidfd, and its root opened as an fd-anchored [`Root`].
//!
//! Order of the checks (why a recycled pid is never scanned): the pidfd is opened first, so it
//! names one process for good; then `/proc/<pid>/cgroup` must still put that pid in the
//! container, and `/proc/<pid>/root` is opened; then the pidfd must still be alive. If the
//! process exited at any point before that last check the pid may have been reused, and
//! everything is thrown away; if it is alive, the `/proc/<pid>` that was read and opened was
//! this very process. The same liveness check follows every walk: a result of a container that
//! exited meanwhile is not reported.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use fim_engine::root::Root;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use super::cgroup;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("container {id}: no process of it on this node (not started yet, or exited)")]
    NotFound { id: String },
    #[error("container {id}: process {pid}: {what}: {source}")]
    Io {
        id: String,
        pid: i32,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("container {id}: process {pid} left the container while it was being opened")]
    Gone { id: String, pid: i32 },
}

/// The container's init process and its root directory, valid while [`Self::alive`].
#[derive(Debug)]
pub struct ContainerProcess {
    pub id: String,
    pub pid: i32,
    pidfd: OwnedFd,
    pub root: Root,
}

impl ContainerProcess {
    /// Finds container `id`'s init process under `proc` (`/proc`) and opens it.
    pub fn find(proc: &Path, id: &str) -> Result<ContainerProcess, ProcessError> {
        let members = cgroup::members(proc, id);
        let pid = cgroup::init_process(&members)
            .ok_or_else(|| ProcessError::NotFound { id: id.to_owned() })?;
        Self::open(proc, id, pid)
    }

    /// Opens process `pid` as container `id`'s (see the module docs for the order).
    pub fn open(proc: &Path, id: &str, pid: i32) -> Result<ContainerProcess, ProcessError> {
        let io = |what, source| ProcessError::Io {
            id: id.to_owned(),
            pid,
            what,
            source,
        };
        let gone = || ProcessError::Gone {
            id: id.to_owned(),
            pid,
        };
        let raw = Pid::from_raw(pid).ok_or_else(gone)?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty()).map_err(|e| io("pidfd_open", e.into()))?;
        let dir: PathBuf = proc.join(pid.to_string());
        let text = std::fs::read_to_string(dir.join("cgroup")).map_err(|e| io("read cgroup", e))?;
        if !cgroup::in_container(&text, id) {
            return Err(gone());
        }
        let root = Root::open(&dir.join("root")).map_err(|e| io("open root", e))?;
        let process = ContainerProcess {
            id: id.to_owned(),
            pid,
            pidfd,
            root,
        };
        if !process.alive() {
            return Err(gone());
        }
        Ok(process)
    }

    /// Whether the process still runs (a pidfd becomes readable when its process exits).
    pub fn alive(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        n == 0
    }

    /// SIGKILLs the container's init process through the pidfd (never a recycled pid); the
    /// kernel then kills every other process of its pid namespace, and the kubelet restarts the
    /// container.
    pub fn kill(&self) -> std::io::Result<()> {
        pidfd_send_signal(&self.pidfd, Signal::KILL).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_outside_the_container_is_refused_and_a_dead_one_is_not_alive() {
        const ID: &str = "3f1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
        let me = std::process::id() as i32;
        let err = ContainerProcess::open(Path::new("/proc"), ID, me).unwrap_err();
        assert!(matches!(err, ProcessError::Gone { .. }), "{err}");
        assert!(matches!(
            ContainerProcess::find(Path::new("/proc"), ID),
            Err(ProcessError::NotFound { .. })
        ));

        // A child in a fake container: /proc with our real child's pid, whose cgroup names ID.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let proc = tempfile::tempdir().unwrap();
        let dir = proc.path().join(pid.to_string());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup"), format!("0::/kubepods/pod1/{ID}\n")).unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(rootfs.path(), dir.join("root")).unwrap();
        let process = ContainerProcess::open(proc.path(), ID, pid).unwrap();
        assert!(process.alive());
        process.kill().unwrap();
        child.wait().unwrap();
        assert!(!process.alive(), "killed through the pidfd");
        // The pid is gone now: opening it again fails rather than naming another process.
        assert!(ContainerProcess::open(proc.path(), ID, pid).is_err());
    }
}
