//! Child-process plumbing shared by the server types.

use std::ffi::OsString;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

/// Runs `$@` (after an optional leading directory argument) once its stdin closes.
///
/// `read` returns when the pipe's only writer, the test process, closes it: on
/// [`Watchdog::fire`], or when the test process exits in any way (normal exit with statics
/// never dropped, panic, SIGKILL from a test-runner timeout), because the kernel closes
/// its descriptors. The pipe is close-on-exec, so no other child inherits the writer and
/// keeps it open. INT, HUP and TERM are ignored so that a Ctrl-C sent to the terminal's
/// process group does not take the watchdog down before it cleans up.
const SCRIPT: &str = r#"trap '' INT HUP TERM
read _ || :
dir=$1; shift
"$@" >/dev/null 2>&1
[ -n "$dir" ] && rm -rf -- "$dir"
exit 0"#;

/// A `sh` child that cleans up after a server when the test process goes away.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
    done: bool,
}

impl Watchdog {
    /// Runs `command` and then removes `dir` (if not empty) when fired or when the test
    /// process exits.
    pub(crate) fn spawn(dir: &std::path::Path, command: &[OsString]) -> Watchdog {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("tiered-sessions-watchdog")
            .arg(dir)
            .args(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot spawn `sh` for a cleanup watchdog: is /bin/sh installed?");
        let stdin = child.stdin.take();
        Watchdog {
            child,
            stdin,
            done: false,
        }
    }

    /// SIGKILLs `pid` and removes `dir` when the test process exits first.
    pub(crate) fn kill_on_exit(pid: u32, dir: &std::path::Path) -> Watchdog {
        let command = ["kill", "-9", &pid.to_string()].map(OsString::from);
        Watchdog::spawn(dir, &command)
    }

    /// Runs the cleanup now and waits for it to finish.
    pub(crate) fn fire(&mut self) {
        if !self.done {
            self.done = true;
            drop(self.stdin.take());
            // The script always exits; if waiting fails there is nothing left to do.
            let _ = self.child.wait();
        }
    }

    /// Stops the watchdog without running the cleanup.
    ///
    /// Call this before reaping a process whose pid the cleanup would signal, so that the
    /// watchdog can never signal a recycled pid.
    pub(crate) fn disarm(&mut self) {
        if !self.done {
            self.done = true;
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.fire();
    }
}

/// Sends `signal` (a name such as `STOP`) to `pid` with the shell's `kill` builtin.
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"kill -s "$1" "$2""#)
        .arg("sh")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("cannot spawn `sh` to send a signal: is /bin/sh installed?");
    assert!(status.success(), "kill -s {signal} {pid} failed: {status}");
}

/// Whether this process runs as root (then Postgres tools must run as `postgres`).
pub(crate) fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|out| out.status.success() && out.stdout.trim_ascii() == b"0")
            .unwrap_or(false)
    })
}

/// Whether a process with this pid exists (a zombie counts until reaped).
#[cfg(test)]
pub(crate) fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
