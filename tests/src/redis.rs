//! A private `redis-server` per test.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, FromValue, InfoKind};
use tempfile::TempDir;

use crate::net::{free_port, port_in_use};
use crate::process::{signal, Watchdog};

/// How long a starting server may take to answer `PING` with `PONG`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh ports tried when the chosen one is taken before `redis-server` binds it.
const START_ATTEMPTS: usize = 5;
/// Timeout of every command on the admin client, so a stopped (`SIGSTOP`) server fails a
/// test instead of hanging it.
const ADMIN_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process on a free loopback port, with its own temp dir.
///
/// Started with `--save '' --appendonly no --enable-debug-command local` (so `DEBUG
/// SLEEP` works) and logging to `redis.log` in [`dir`](Self::dir). Dropping it SIGKILLs
/// the server and removes the dir; a watchdog process does both if the test process dies
/// without dropping it.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    pid: u32,
    extra_args: Vec<String>,
    running: Option<Running>,
    admin: Client,
    // Last field: dropped after the process is gone.
    dir: TempDir,
}

#[derive(Debug)]
struct Running {
    child: Child,
    watchdog: Watchdog,
}

/// The chosen port was taken by someone else before `redis-server` could bind it.
struct PortTaken;

impl RedisServer {
    /// Starts a server with the default arguments; see [`start_with`](Self::start_with).
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// Starts a server with `extra_args` appended to the defaults, e.g.
    /// `&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]`.
    ///
    /// Returns once `PING` answers `PONG` and `INFO server` names this child's pid (so a
    /// foreign server on a reused port is never mistaken for ours). Retries on a fresh port
    /// if the chosen one was taken in between; panics if the server cannot start.
    pub async fn start_with(extra_args: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("tiered-redis-")
            .tempdir()
            .expect("cannot create a temp dir for redis-server: is $TMPDIR writable?");
        let extra_args: Vec<String> = extra_args.iter().map(|arg| (*arg).to_owned()).collect();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            if let Ok((running, admin)) = launch(port, dir.path(), &extra_args).await {
                return RedisServer {
                    port,
                    pid: running.child.id(),
                    extra_args,
                    running: Some(running),
                    admin,
                    dir,
                };
            }
        }
        panic!(
            "redis-server: {START_ATTEMPTS} free ports in a row were taken before it bound them"
        );
    }

    /// `redis://127.0.0.1:<port>`, for the client under test.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback port the server listens on; it keeps it across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid of the current server process (of the last one, after [`kill`](Self::kill)).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The server's `--dir`: its `redis.log`, and `dump.rdb` after a `SAVE`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A connected client for setup, faults and inspection (`DEBUG SLEEP`, `CLIENT PAUSE`,
    /// `SAVE`...), with a 10 s command timeout and no reconnect policy.
    ///
    /// Its own commands show up in [`command_calls`](Self::command_calls) like any other.
    /// It is replaced by [`restart`](Self::restart): call `admin()` again afterwards; clones
    /// taken before a kill stay disconnected.
    pub fn admin(&self) -> &Client {
        &self.admin
    }

    /// Calls per command since start or the last [`reset_stats`](Self::reset_stats), from
    /// `INFO commandstats`: lowercase name → calls, e.g. `"getex"`, `"evalsha"`, `"eval"`,
    /// `"set"`; subcommands as Redis names them, e.g. `"config|resetstat"`.
    ///
    /// The admin's own calls are included (`"info"` counts the previous reads, not this one).
    pub async fn command_calls(&self) -> BTreeMap<String, u64> {
        let info: String = self
            .admin
            .info(Some(InfoKind::CommandStats))
            .await
            .expect("INFO commandstats failed: is the server killed or stopped?");
        parse_commandstats(&info)
    }

    /// Runs `name args…` on this server with the admin client, e.g.
    /// `command::<Value>("DEBUG", vec!["SLEEP".into(), "2".into()])`; panics with the
    /// command and the error if it fails.
    pub async fn command<R: FromValue>(&self, name: &'static str, args: Vec<Value>) -> R {
        self.admin
            .custom(
                CustomCommand::new_static(name, ClusterHash::Random, false),
                args,
            )
            .await
            .unwrap_or_else(|e| panic!("{name} on port {} failed: {e}", self.port))
    }

    /// `CONFIG RESETSTAT`: zeroes the command statistics (and the other `INFO` counters).
    pub async fn reset_stats(&self) {
        let _: Value = self.command("CONFIG", vec!["RESETSTAT".into()]).await;
    }

    /// `FLUSHALL`: drops every key, as a lost cache would.
    pub async fn flushall(&self) {
        let _: Value = self
            .admin
            .flushall(false)
            .await
            .expect("FLUSHALL failed: is the server killed or stopped?");
    }

    /// SIGKILLs the server and waits until it is gone; the port and dir stay reserved for
    /// [`restart`](Self::restart). Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            // Disarm first: once the child is reaped its pid may be reused.
            running.watchdog.disarm();
            // Errors mean it is already dead, which is what we want.
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }

    /// Starts the server again on the same port and dir with the same arguments (killing
    /// the current process first, if any), and replaces the [`admin`](Self::admin) client.
    ///
    /// With `SAVE` (or `--dbfilename dump.rdb` and a save) before the kill, the keys come
    /// back from `dump.rdb`. Waits up to 10 s for the port to become free again.
    pub async fn restart(&mut self) {
        self.kill();
        let until = Instant::now() + READY_TIMEOUT;
        loop {
            match launch(self.port, self.dir.path(), &self.extra_args).await {
                Ok((running, admin)) => {
                    self.pid = running.child.id();
                    self.running = Some(running);
                    self.admin = admin;
                    return;
                }
                Err(PortTaken) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(PortTaken) => panic!(
                    "redis-server cannot restart: port {} is still taken after {READY_TIMEOUT:?}",
                    self.port
                ),
            }
        }
    }

    /// Whether the server process runs (it was not killed, or was restarted since).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// `kill -STOP`: the server hangs; clients time out instead of being refused.
    pub fn stop_process(&self) {
        signal(self.pid, "STOP");
    }

    /// `kill -CONT`: resumes a server hung by [`stop_process`](Self::stop_process).
    pub fn cont_process(&self) {
        signal(self.pid, "CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `redis-server` on `port` and waits until it answers as itself.
async fn launch(
    port: u16,
    dir: &Path,
    extra_args: &[String],
) -> Result<(Running, Client), PortTaken> {
    let stderr = File::options()
        .create(true)
        .append(true)
        .open(dir.join("redis.stderr"))
        .expect("cannot create redis.stderr in the server's temp dir");
    let mut child = match Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--enable-debug-command", "local"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
    {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            panic!("redis-server not found: apt-get install -y redis-server redis-tools")
        }
        Err(err) => panic!("cannot spawn redis-server: {err}"),
    };
    let pid = child.id();
    let mut watchdog = Watchdog::kill_on_exit(pid, dir);

    let until = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child
            .try_wait()
            .expect("cannot query the redis-server child's status")
        {
            watchdog.disarm();
            if port_in_use(port) {
                return Err(PortTaken);
            }
            panic!(
                "redis-server exited during startup ({status}); log:\n{}",
                server_log(dir)
            );
        }
        if let Some(admin) = probe(port, pid).await {
            return Ok((Running { child, watchdog }, admin));
        }
        if Instant::now() >= until {
            watchdog.disarm();
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}; log:\n{}",
                server_log(dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client connected to `port` if the server there is ready (`PING` → `PONG`, which
/// fails while it loads a dump) and is the process `pid`.
async fn probe(port: u16, pid: u32) -> Option<Client> {
    let client = admin_client(port);
    client.init().await.ok()?;
    let ours = async {
        let pong: String = client.ping(None).await.ok()?;
        let info: String = client.info(Some(InfoKind::Server)).await.ok()?;
        let process_id = info_field(&info, "process_id")?;
        (pong == "PONG" && process_id == pid.to_string()).then_some(())
    }
    .await;
    if ours.is_some() {
        Some(client)
    } else {
        let _ = client.quit().await;
        None
    }
}

fn admin_client(port: u16) -> Client {
    let config = Config {
        server: ServerConfig::new_centralized("127.0.0.1", port),
        ..Config::default()
    };
    Builder::from_config(config)
        .with_connection_config(|connection| {
            connection.connection_timeout = Duration::from_secs(1);
            connection.internal_command_timeout = ADMIN_COMMAND_TIMEOUT;
        })
        .with_performance_config(|perf| perf.default_command_timeout = ADMIN_COMMAND_TIMEOUT)
        .build()
        .expect("a centralized fred config without TLS always builds")
}

/// The value of `field:value` in an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}

/// `cmdstat_getex:calls=3,usec=…` lines → `{"getex": 3}`.
fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_ascii_lowercase(), calls))
        })
        .collect()
}

fn server_log(dir: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    format!("{}{}", read("redis.stderr"), read("redis.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats() {
        let info = "# Commandstats\r\n\
            cmdstat_getex:calls=3,usec=10,usec_per_call=3.33,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_config|resetstat:calls=1,usec=5,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n";
        let calls = parse_commandstats(info);
        assert_eq!(calls.get("getex"), Some(&3));
        assert_eq!(calls.get("config|resetstat"), Some(&1));
        assert_eq!(calls.len(), 2);
    }
}
