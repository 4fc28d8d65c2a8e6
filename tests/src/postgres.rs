//! A private PostgreSQL cluster per test binary (or per test, for fault tests).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::sync::OnceCell;

use crate::net::{free_port, port_in_use};
use crate::process::{running_as_root, Watchdog};

/// Fresh ports tried when the chosen one is taken before the postmaster binds it.
const START_ATTEMPTS: usize = 5;
/// `pg_ctl -w -t`: how long a start (including crash recovery) may take.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// How long [`PostgresCluster::terminate_backends`] waits for the backends to exit.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);
/// `application_name` of the connections this crate opens itself.
pub(crate) const SUPPORT_APP: &str = "tiered-sessions-tests";

/// A private PostgreSQL cluster: `initdb` in a temp dir, a postmaster on a free loopback
/// port, trust authentication for the superuser `postgres`.
///
/// Settings beyond the defaults, written to its `postgresql.conf`: `fsync = off` (fine for
/// behaviour tests; pass `("fsync", "on")` to [`init_with`](Self::init_with) to measure
/// durability or write cost), `autovacuum = off` (its transactions and catalog writes
/// would make [`PgStats`](crate::PgStats) counts flaky), `max_connections = 200`, and
/// `pg_stat_statements` preloaded (when the installation ships it) so `PgStats` can count
/// statements.
///
/// When the test process runs as root, every Postgres tool runs as the `postgres` user
/// (`runuser -u postgres --`), which owns the temp dir. Binaries come from `$PG_BIN`, else
/// the highest-numbered `/usr/lib/postgresql/*/bin`, else `$PATH`.
///
/// Dropping it stops the postmaster (`-m immediate`) and removes the dir. A watchdog
/// process does the same when the test process exits without dropping it, which is what
/// makes [`shared_postgres`] safe to keep in a static.
#[derive(Debug)]
pub struct PostgresCluster {
    port: u16,
    dir: PathBuf,
    tools: Tools,
    // Fires on drop: stops the postmaster and removes `dir`.
    _watchdog: Watchdog,
}

impl PostgresCluster {
    /// Creates and starts a cluster with the default settings; see [`init_with`](Self::init_with).
    pub async fn init() -> PostgresCluster {
        PostgresCluster::init_with(&[]).await
    }

    /// Creates and starts a cluster with extra `postgresql.conf` settings (name, value),
    /// applied after, and so overriding, the defaults: e.g. `&[("fsync", "on")]`.
    ///
    /// `initdb` plus start takes about 0.6 s here. Retries on a fresh port if the chosen one
    /// was taken in between; panics with the server log if the cluster cannot start.
    pub async fn init_with(settings: &[(&str, &str)]) -> PostgresCluster {
        let tools = Tools::find();
        let dir = tempfile::Builder::new()
            .prefix("tiered-pg-")
            .tempdir()
            .expect("cannot create a temp dir for Postgres: is $TMPDIR writable?")
            .keep();
        // Armed before anything can fail, so a panic below still removes the dir.
        let watchdog = Watchdog::spawn(&dir, &tools.argv("pg_ctl", &stop_args(&dir, "immediate")));
        if tools.as_postgres {
            let status = std::process::Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()
                .expect("cannot run chown");
            assert!(
                status.success(),
                "chown postgres {} failed: is there a `postgres` user? (apt-get install -y postgresql creates it)",
                dir.display()
            );
        }
        let data = dir.join("data");
        let mut initdb = tools.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(initdb, "initdb", &dir).await;

        let preload = tools.has_pg_stat_statements();
        write_settings(&data.join("postgresql.conf"), &dir, preload, settings);

        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            if pg_ctl_start(&tools, &dir, port).await {
                let cluster = PostgresCluster {
                    port,
                    dir,
                    tools,
                    _watchdog: watchdog,
                };
                if preload {
                    cluster
                        .execute(
                            "postgres",
                            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
                        )
                        .await;
                }
                return cluster;
            }
            assert!(
                port_in_use(port),
                "pg_ctl start failed; server log:\n{}",
                log_text(&dir)
            );
        }
        panic!("Postgres: {START_ATTEMPTS} free ports in a row were taken before it bound them");
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The loopback port the postmaster listens on; it keeps it across stop and start.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's temp dir: `data/` and the server `log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates an empty database `t_<16 random hex digits>` and returns its URL.
    ///
    /// One per test keeps tests independent and parallel on a shared cluster.
    pub async fn create_database(&self) -> String {
        let name = format!("t_{:016x}", rand::random::<u64>());
        self.execute("postgres", &format!("CREATE DATABASE {name}"))
            .await;
        self.url(&name)
    }

    /// `pg_ctl stop -m fast`: disconnects clients, checkpoints, and waits until it is down.
    pub async fn stop_fast(&self) {
        self.stop("fast").await;
    }

    /// `pg_ctl stop -m immediate`: the postmaster and backends die at once, as in a crash;
    /// the next [`start`](Self::start) runs crash recovery.
    pub async fn stop_immediate(&self) {
        self.stop("immediate").await;
    }

    /// Starts the stopped cluster again on the same port and data dir, waiting until it
    /// accepts connections (up to 10 s for the port to become free again).
    pub async fn start(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if pg_ctl_start(&self.tools, &self.dir, self.port).await {
                return;
            }
            assert!(
                port_in_use(self.port) && Instant::now() < until,
                "pg_ctl start failed; server log:\n{}",
                log_text(&self.dir)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Terminates every backend whose `application_name` is `application_name` (set it on
    /// the pool under test so only its connections die) and waits until they are gone.
    ///
    /// Returns how many were terminated.
    pub async fn terminate_backends(&self, application_name: &str) -> u64 {
        let mut conn = self.connect("postgres").await;
        let terminated: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind(application_name)
        .fetch_one(&mut conn)
        .await
        .expect("pg_terminate_backend query failed");
        let until = Instant::now() + TERMINATE_TIMEOUT;
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
            )
            .bind(application_name)
            .fetch_one(&mut conn)
            .await
            .expect("pg_stat_activity query failed");
            if left == 0 {
                break;
            }
            assert!(
                Instant::now() < until,
                "{left} backends named {application_name:?} still alive {TERMINATE_TIMEOUT:?} after pg_terminate_backend"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = conn.close().await;
        u64::try_from(terminated).unwrap_or(0)
    }

    async fn stop(&self, mode: &str) {
        let mut pg_ctl = self.tools.command("pg_ctl");
        pg_ctl.args(stop_args(&self.dir, mode));
        run(pg_ctl, "pg_ctl stop", &self.dir).await;
    }

    /// A fresh connection per call: nothing here is tied to one tokio runtime.
    async fn connect(&self, db: &str) -> PgConnection {
        let options = self
            .url(db)
            .parse::<sqlx::postgres::PgConnectOptions>()
            .expect("our own URL parses")
            .application_name(SUPPORT_APP);
        PgConnection::connect_with(&options)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "cannot connect to {}: {err} (is the cluster stopped?)",
                    self.url(db)
                )
            })
    }

    async fn execute(&self, db: &str, sql: &str) {
        let mut conn = self.connect(db).await;
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("{sql} failed: {err}"));
        let _ = conn.close().await;
    }
}

static SHARED: OnceCell<PostgresCluster> = OnceCell::const_new();

/// The test binary's one shared cluster, started on first use.
///
/// Every test takes its own database with
/// [`create_database`](PostgresCluster::create_database). Safe across `#[tokio::test]`s,
/// each on its own runtime: the cell holds only plain data and std processes, and every
/// call opens its own connections. The cluster outlives all tests and is stopped and
/// removed by its watchdog when the test process exits (statics are never dropped).
///
/// Do not stop it or terminate others' backends: fault tests take a private
/// [`PostgresCluster::init`].
pub async fn shared_postgres() -> &'static PostgresCluster {
    SHARED.get_or_init(PostgresCluster::init).await
}

/// `pg_ctl start` on `port`, waiting until it accepts connections; `false` if it failed.
async fn pg_ctl_start(tools: &Tools, dir: &Path, port: u16) -> bool {
    let mut pg_ctl = tools.command("pg_ctl");
    pg_ctl
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("log"))
        .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "start", "-o"])
        .arg(format!("-p {port}"));
    output(pg_ctl, "pg_ctl start").await.status.success()
}

fn stop_args(dir: &Path, mode: &str) -> Vec<OsString> {
    let data = dir.join("data");
    [
        "-D".into(),
        data.into_os_string(),
        "-m".into(),
        mode.into(),
        "-w".into(),
        "stop".into(),
    ]
    .into()
}

/// Where the Postgres server tools are and whom they must run as.
#[derive(Debug, Clone)]
struct Tools {
    /// `None`: look the tools up on `$PATH`.
    bin: Option<PathBuf>,
    /// Postgres refuses to run as root: run the tools via `runuser -u postgres --`.
    as_postgres: bool,
}

impl Tools {
    fn find() -> Tools {
        let bin = match std::env::var_os("PG_BIN") {
            Some(bin) => Some(PathBuf::from(bin)),
            None => highest_version_bin(Path::new("/usr/lib/postgresql")),
        };
        if let Some(bin) = &bin {
            assert!(
                bin.join("initdb").is_file(),
                "no initdb in {}: apt-get install -y postgresql, or point PG_BIN at the server binaries",
                bin.display()
            );
        }
        Tools {
            bin,
            as_postgres: running_as_root(),
        }
    }

    fn program(&self, name: &str) -> PathBuf {
        match &self.bin {
            Some(bin) => bin.join(name),
            None => PathBuf::from(name),
        }
    }

    /// The full argv to run `name args…` as the right user.
    fn argv(&self, name: &str, args: &[OsString]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        if self.as_postgres {
            argv.extend(["runuser", "-u", "postgres", "--"].map(OsString::from));
        }
        argv.push(self.program(name).into_os_string());
        argv.extend(args.iter().cloned());
        argv
    }

    fn command(&self, name: &str) -> tokio::process::Command {
        let argv = self.argv(name, &[]);
        let mut command = tokio::process::Command::new(&argv[0]);
        command.args(&argv[1..]).stdin(Stdio::null());
        command
    }

    /// Whether `pg_stat_statements` can be preloaded (Debian ships it in `postgresql-15`).
    fn has_pg_stat_statements(&self) -> bool {
        let dir_of = |flag: &str| {
            let out = std::process::Command::new(self.program("pg_config"))
                .arg(flag)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        };
        let (Some(lib), Some(share)) = (dir_of("--pkglibdir"), dir_of("--sharedir")) else {
            return false;
        };
        lib.join("pg_stat_statements.so").is_file()
            && share.join("extension/pg_stat_statements.control").is_file()
    }
}

/// The `bin` dir of the highest-numbered version under `root` (`/usr/lib/postgresql/15/bin`).
fn highest_version_bin(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

fn write_settings(conf: &Path, dir: &Path, preload: bool, extra: &[(&str, &str)]) {
    let socket_dir = dir.to_string_lossy().into_owned();
    let mut settings: Vec<(&str, &str)> = vec![
        ("listen_addresses", "127.0.0.1"),
        ("unix_socket_directories", &socket_dir),
        ("fsync", "off"),
        ("autovacuum", "off"),
        ("max_connections", "200"),
    ];
    if preload {
        settings.push(("shared_preload_libraries", "pg_stat_statements"));
        settings.push(("pg_stat_statements.max", "10000"));
    }
    settings.extend_from_slice(extra);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(conf)
        .expect("initdb wrote no postgresql.conf");
    let mut text = String::from("\n# tiered-sessions-tests\n");
    for (name, value) in settings {
        text.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
    }
    file.write_all(text.as_bytes())
        .expect("cannot append to postgresql.conf");
}

async fn output(mut command: tokio::process::Command, what: &str) -> std::process::Output {
    command.output().await.unwrap_or_else(|err| {
        panic!("cannot run {what}: {err} (apt-get install -y postgresql, or set PG_BIN)")
    })
}

async fn run(command: tokio::process::Command, what: &str, dir: &Path) {
    let out = output(command, what).await;
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log_text(dir)
    );
}

fn log_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("log")).unwrap_or_default()
}
