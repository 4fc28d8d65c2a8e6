//! A real headless Chromium, driven through ChromeDriver with fantoccini.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{wd::Capabilities, Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::{free_port, poll_until, process::Watchdog};

/// The flags every browser starts with: headless, no sandbox (the tests run as root), and
/// none of the background traffic Chromium sends to the network at start.
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1100,900",
];

/// A private `chromedriver` on a free loopback port. Each [`ChromeDriver::browser`] is a
/// separate Chromium with its own profile: separate cookies, like two devices.
#[derive(Debug)]
pub struct ChromeDriver {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    watchdog: Watchdog,
}

fn binary(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

impl ChromeDriver {
    /// Starts `chromedriver` (env `CHROMEDRIVER`, default `/usr/bin/chromedriver`) and
    /// waits until it answers.
    pub async fn start() -> Self {
        let driver = binary("CHROMEDRIVER", "/usr/bin/chromedriver");
        assert!(
            driver.exists(),
            "{} not found: apt-get install -y chromium chromium-driver",
            driver.display()
        );
        let dir = tempfile::tempdir().expect("temp dir for browser profiles");
        let port = free_port();
        // Its own process group, so the watchdog can take Chromium down with it.
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let group = format!("-{}", child.id());
        let kill = ["kill", "-9", &group].map(OsString::from);
        let watchdog = Watchdog::spawn(std::path::Path::new(""), &kill);
        let ready = poll_until(
            Duration::from_secs(15),
            Duration::from_millis(50),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        assert!(ready, "chromedriver did not listen on port {port}");
        Self {
            child,
            port,
            dir,
            watchdog,
        }
    }

    /// A new headless Chromium with a fresh profile.
    pub async fn browser(&self) -> Client {
        let chromium = binary("CHROMIUM", "/usr/bin/chromium");
        let profile = tempfile::tempdir_in(self.dir.path()).expect("profile dir");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.keep().display()));
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": args }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session from chromedriver")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // Kills chromedriver and every Chromium it started.
        self.watchdog.fire();
        let _ = self.child.wait();
    }
}
