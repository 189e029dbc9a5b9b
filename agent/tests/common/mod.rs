//! Child-process machinery shared by the integration tests: start a command with its output
//! drained on reader threads, then reap it with wait4 against a deadline (a hang kills the child
//! and fails the test).
//!
//! Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::io::{self, Read};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const FIM: &str = env!("CARGO_BIN_EXE_fim-agent");
/// A run that takes longer than this is a hang: the child is killed and the test fails.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub struct Finished {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Peak resident set size of the child, KiB (getrusage's ru_maxrss).
    pub max_rss_kib: i64,
}

impl Finished {
    pub fn describe(&self) -> String {
        format!(
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("the report is not JSON ({e}): {}", self.describe()))
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A started child, reaped with wait4 (never with `Child::wait`) so its rusage is ours.
pub struct Running {
    pub pid: libc::pid_t,
    what: String,
    out: JoinHandle<Vec<u8>>,
    err: JoinHandle<Vec<u8>>,
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Starts `cmd` (stdin null, stdout and stderr piped and drained); `what` names it in failures.
pub fn spawn(cmd: &mut Command, what: &str) -> Running {
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound && what.starts_with("aide") => panic!(
            "`aide` is not installed or not on PATH ({e}); this differential test needs AIDE 0.18 \
             (make test installs it)"
        ),
        Err(e) => panic!("cannot start {what}: {e}"),
    };
    let pid = child.id() as libc::pid_t;
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    // Dropping a Child neither waits nor kills; `wait` reaps it with wait4.
    drop(child);
    Running {
        pid,
        what: what.to_string(),
        out,
        err,
    }
}

/// Runs `cmd` to completion, killing it (and failing) if it outlives `DEADLINE`.
pub fn run(cmd: &mut Command, what: &str) -> Finished {
    spawn(cmd, what).wait()
}

impl Running {
    /// Waits (polling, so the deadline holds) and returns the exit code, output and peak RSS.
    pub fn wait(self) -> Finished {
        let started = Instant::now();
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; all-zero is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: wait4 on our own child's pid with valid out-pointers.
            let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
            if r == self.pid {
                break;
            }
            if r == -1 {
                let e = io::Error::last_os_error();
                assert_eq!(
                    e.kind(),
                    io::ErrorKind::Interrupted,
                    "wait4({}): {e}",
                    self.what
                );
                continue;
            }
            if started.elapsed() > DEADLINE {
                // SAFETY: as above; kill and reap our own child.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                    libc::wait4(self.pid, &mut status, 0, &mut usage);
                }
                let stderr = self.err.join().unwrap_or_default();
                panic!(
                    "{} did not finish within {DEADLINE:?}: killed it\n--- stderr ---\n{}",
                    self.what,
                    String::from_utf8_lossy(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let stdout = self.out.join().expect("stdout reader");
        let stderr = self.err.join().expect("stderr reader");
        assert!(
            libc::WIFEXITED(status),
            "{} was killed by signal {}\n{}",
            self.what,
            libc::WTERMSIG(status),
            String::from_utf8_lossy(&stderr)
        );
        Finished {
            code: libc::WEXITSTATUS(status),
            stdout,
            stderr,
            max_rss_kib: usage.ru_maxrss,
        }
    }
}
