//! Redis Sentinel on loopback: a master, a replica and three sentinels watching them as
//! `mymaster`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::net::free_port;
use crate::poll::{poll_some, poll_until};
use crate::process::Watchdog;
use crate::redis::RedisServer;

/// The name the sentinels monitor the master under.
pub const SENTINEL_SERVICE: &str = "mymaster";

/// One master, one replica, three sentinels; all stopped when dropped.
#[derive(Debug)]
pub struct RedisSentinels {
    servers: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
    _dir: TempDir,
}

#[derive(Debug)]
struct Sentinel {
    port: u16,
    child: Child,
    watchdog: Watchdog,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.watchdog.disarm();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-cli -p port args…`, its output; `None` if it fails.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn spawn_sentinel(dir: &Path, i: usize, master_port: u16) -> Sentinel {
    let port = free_port();
    let conf = dir.join(format!("sentinel-{i}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
             sentinel failover-timeout {SENTINEL_SERVICE} 5000\n",
            dir.display()
        ),
    )
    .expect("write the sentinel config");
    let child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .arg("--logfile")
        .arg(dir.join(format!("sentinel-{i}.log")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: apt-get install -y redis-server");
    let watchdog = Watchdog::kill_on_exit(child.id(), dir);
    Sentinel {
        port,
        child,
        watchdog,
    }
}

impl RedisSentinels {
    /// Starts the master, the replica (waiting until it is in sync) and three sentinels
    /// (waiting until each knows the replica and the two other sentinels).
    pub async fn start() -> RedisSentinels {
        let master = RedisServer::start().await;
        let master_port = master.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port]).await;
        let synced = poll_until(
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async {
                cli(replica.port(), &["INFO", "replication"])
                    .is_some_and(|info| info.contains("master_link_status:up"))
            },
        )
        .await;
        assert!(synced, "the replica did not sync within 20 s");
        let dir = tempfile::Builder::new()
            .prefix("tiered-sentinel-")
            .tempdir()
            .expect("temp dir for the sentinels");
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|i| spawn_sentinel(dir.path(), i, master.port()))
            .collect();
        let ready = poll_until(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                sentinels.iter().all(|s| {
                    cli(s.port, &["SENTINEL", "master", SENTINEL_SERVICE]).is_some_and(|out| {
                        let lines: Vec<&str> = out.lines().collect();
                        let field = |name: &str| {
                            lines
                                .iter()
                                .position(|l| *l == name)
                                .and_then(|i| lines.get(i + 1))
                                .copied()
                        };
                        field("num-slaves") == Some("1")
                            && field("num-other-sentinels") == Some("2")
                    })
                })
            },
        )
        .await;
        assert!(
            ready,
            "the sentinels did not find each other and the replica within 30 s"
        );
        RedisSentinels {
            servers: vec![master, replica],
            sentinels,
            _dir: dir,
        }
    }

    /// A `redis-sentinel://` URL naming the three sentinels.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SENTINEL_SERVICE}&node=127.0.0.1:{}&node=127.0.0.1:{}",
            self.sentinels[0].port, self.sentinels[1].port, self.sentinels[2].port
        )
    }

    /// The port of the server the sentinels name as master now.
    pub async fn master_port(&self) -> Option<u16> {
        poll_some(
            Duration::from_secs(1),
            Duration::from_millis(20),
            || async {
                let out = cli(
                    self.sentinels[0].port,
                    &["SENTINEL", "get-master-addr-by-name", SENTINEL_SERVICE],
                )?;
                out.lines().nth(1)?.trim().parse().ok()
            },
        )
        .await
    }

    /// `SENTINEL FAILOVER mymaster`: promotes the replica.
    pub fn failover(&self) {
        let out = cli(
            self.sentinels[0].port,
            &["SENTINEL", "FAILOVER", SENTINEL_SERVICE],
        );
        assert!(
            out.is_some_and(|o| o.trim() == "OK"),
            "SENTINEL FAILOVER was refused"
        );
    }

    /// The master and the replica, in start order.
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }
}
