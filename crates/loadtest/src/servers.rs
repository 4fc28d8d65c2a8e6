//! `--spawn-servers`: a private `redis-server` and Postgres cluster on free loopback
//! ports, for a one-command run. Both are stopped and their temp dirs removed when the
//! run ends, and by a watchdog process if the tool dies first.
//!
//! Postgres keeps its default `fsync = on` (the run measures write cost) and preloads
//! `pg_stat_statements` when the installation ships it, so statement counts are exact.

use std::{
    ffi::OsString,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// How long a server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The servers of one run.
#[derive(Debug)]
pub struct Servers {
    /// `redis://127.0.0.1:<port>`, if Redis was asked for.
    pub redis_url: Option<String>,
    /// `postgres://postgres@127.0.0.1:<port>/postgres`, if Postgres was asked for.
    pub database_url: Option<String>,
    _redis: Option<Guard>,
    _postgres: Option<Guard>,
}

/// Starts the servers the run needs.
pub async fn spawn(redis: bool, postgres: bool) -> Result<Servers> {
    let (redis_url, redis_guard) = if redis {
        let (url, guard) = spawn_redis().await?;
        (Some(url), Some(guard))
    } else {
        (None, None)
    };
    let (database_url, pg_guard) = if postgres {
        let (url, guard) = spawn_postgres().await?;
        (Some(url), Some(guard))
    } else {
        (None, None)
    };
    Ok(Servers {
        redis_url,
        database_url,
        _redis: redis_guard,
        _postgres: pg_guard,
    })
}

fn free_port() -> Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Spawn {
            what: "server",
            reason: format!("cannot bind 127.0.0.1:0 to find a free port: {e}"),
        })
}

fn temp_dir(prefix: &str) -> Result<PathBuf> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map(tempfile::TempDir::keep)
        .map_err(|e| Error::Spawn {
            what: "server",
            reason: format!("cannot create a temp dir: {e}"),
        })
}

/// Runs a cleanup command and removes a dir when dropped, or when this process exits in
/// any way: a `sh` child waits for its stdin (our end of a pipe) to close.
#[derive(Debug)]
struct Guard {
    child: Child,
    stdin: Option<ChildStdin>,
    redis: Option<Child>,
}

const WATCHDOG: &str = r#"trap '' INT HUP TERM
read _ || :
dir=$1; shift
"$@" >/dev/null 2>&1
[ -n "$dir" ] && rm -rf -- "$dir"
exit 0"#;

impl Guard {
    fn new(dir: &Path, cleanup: &[OsString]) -> Result<Guard> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("session-loadtest-watchdog")
            .arg(dir)
            .args(cleanup)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Spawn {
                what: "server",
                reason: format!("cannot run sh for the clean-up watchdog: {e}"),
            })?;
        let stdin = child.stdin.take();
        Ok(Guard {
            child,
            stdin,
            redis: None,
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The watchdog kills the server; a child is reaped only afterwards, so its pid
        // cannot have been reused by then.
        drop(self.stdin.take());
        let _ = self.child.wait();
        if let Some(mut redis) = self.redis.take() {
            let _ = redis.wait();
        }
    }
}

async fn spawn_redis() -> Result<(String, Guard)> {
    let dir = temp_dir("session-loadtest-redis-")?;
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Spawn {
                what: "redis-server",
                reason: format!("{e}; install it (Debian: apt-get install -y redis-server)"),
            })?;
        let pid = child.id().to_string();
        let mut guard = Guard::new(&dir, &["kill".into(), "-9".into(), pid.into()])?;
        guard.redis = Some(child);
        if wait_for_redis(port, guard.redis.as_mut()).await {
            return Ok((format!("redis://127.0.0.1:{port}"), guard));
        }
        last_error = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
        drop(guard);
        std::fs::create_dir_all(&dir).ok();
    }
    Err(Error::Spawn {
        what: "redis-server",
        reason: format!(
            "it did not answer PING; its log: {}",
            last_error.lines().last().unwrap_or("(empty)")
        ),
    })
}

/// Polls `PING` until `+PONG`, the process exits, or the deadline passes.
async fn wait_for_redis(port: u16, mut child: Option<&mut Child>) -> bool {
    let until = Instant::now() + START_TIMEOUT;
    while Instant::now() < until {
        if let Some(child) = child.as_deref_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
        }
        if let Ok(mut stream) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            let mut reply = [0u8; 7];
            if stream.write_all(b"PING\r\n").await.is_ok()
                && stream.read_exact(&mut reply).await.is_ok()
                && &reply == b"+PONG\r\n"
            {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Where the Postgres server binaries are, and whether they must run as `postgres`.
struct PgTools {
    bin: Option<PathBuf>,
    as_postgres: bool,
}

impl PgTools {
    fn find() -> PgTools {
        let bin = std::env::var_os("PG_BIN").map(PathBuf::from).or_else(|| {
            std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|e| {
                    let e = e.ok()?;
                    let v: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").is_file().then_some((v, bin))
                })
                .max_by_key(|(v, _)| *v)
                .map(|(_, bin)| bin)
        });
        // Postgres refuses to run as root.
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        PgTools { bin, as_postgres }
    }

    fn argv(&self, tool: &str, args: &[OsString]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        if self.as_postgres {
            argv.extend(["runuser", "-u", "postgres", "--"].map(OsString::from));
        }
        argv.push(match &self.bin {
            Some(bin) => bin.join(tool).into_os_string(),
            None => tool.into(),
        });
        argv.extend(args.iter().cloned());
        argv
    }

    fn run(&self, tool: &str, args: &[OsString]) -> Result<std::process::Output> {
        let argv = self.argv(tool, args);
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Spawn {
                what: "Postgres",
                reason: format!(
                    "cannot run {tool}: {e}; install the server (Debian: apt-get install -y postgresql) or set PG_BIN"
                ),
            })
    }

    fn has_pg_stat_statements(&self) -> bool {
        let Some(bin) = &self.bin else { return false };
        let config = |flag: &str| {
            Command::new(bin.join("pg_config"))
                .arg(flag)
                .output()
                .ok()
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        };
        match (config("--pkglibdir"), config("--sharedir")) {
            (Some(lib), Some(share)) => {
                lib.join("pg_stat_statements.so").is_file()
                    && share.join("extension/pg_stat_statements.control").is_file()
            }
            _ => false,
        }
    }
}

async fn spawn_postgres() -> Result<(String, Guard)> {
    let tools = PgTools::find();
    let dir = temp_dir("session-loadtest-pg-")?;
    let data = dir.join("data");
    let stop: Vec<OsString> = vec![
        "-D".into(),
        data.clone().into(),
        "-m".into(),
        "immediate".into(),
        "-w".into(),
        "stop".into(),
    ];
    let guard = Guard::new(&dir, &tools.argv("pg_ctl", &stop))?;
    let spawn_error = |reason: String| Error::Spawn {
        what: "Postgres",
        reason,
    };
    if tools.as_postgres {
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status();
        if !chown.is_ok_and(|s| s.success()) {
            return Err(spawn_error(
                "cannot hand its temp dir to the `postgres` user (apt-get install -y postgresql creates it)".into(),
            ));
        }
    }
    let initdb: Vec<OsString> = [
        "-D".into(),
        data.clone().into_os_string(),
        "-A".into(),
        "trust".into(),
        "-U".into(),
        "postgres".into(),
        "--no-sync".into(),
        "-E".into(),
        "UTF8".into(),
        "--locale=C".into(),
    ]
    .to_vec();
    let out = tools.run("initdb", &initdb)?;
    if !out.status.success() {
        return Err(spawn_error(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        )));
    }
    let mut conf = format!(
        "\n# session-loadtest\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 200\n",
        dir.display()
    );
    if tools.has_pg_stat_statements() {
        conf.push_str("shared_preload_libraries = 'pg_stat_statements'\n");
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
        .map_err(|e| spawn_error(format!("cannot write postgresql.conf: {e}")))?;
    for _ in 0..3 {
        let port = free_port()?;
        let start: Vec<OsString> = vec![
            "-D".into(),
            data.clone().into(),
            "-l".into(),
            dir.join("log").into(),
            "-w".into(),
            "-t".into(),
            START_TIMEOUT.as_secs().to_string().into(),
            "start".into(),
            "-o".into(),
            format!("-p {port}").into(),
        ];
        if tools.run("pg_ctl", &start)?.status.success() {
            return Ok((
                format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                guard,
            ));
        }
    }
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    Err(spawn_error(format!(
        "pg_ctl start failed; its log: {}",
        log.lines().last().unwrap_or("(empty)")
    )))
}
