//! A private `redis-server` with a TLS port, a CA and a server certificate made at test
//! time with the `openssl` command, and an ACL user.

use std::process::Command;

use tempfile::TempDir;

use crate::{net::free_port, redis::RedisServer};

/// The ACL user of a [`TlsRedis`].
pub const TLS_USER: &str = "app";
/// The password of [`TLS_USER`].
pub const TLS_PASSWORD: &str = "s3cret-acl-password";

/// A CA and a certificate for 127.0.0.1 signed by it, in a temp dir.
#[derive(Debug)]
pub struct Certs {
    dir: TempDir,
}

impl Certs {
    /// Makes the CA and the server certificate (EC keys, valid for two days).
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("the openssl command runs (Debian package `openssl`)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=tiered-sessions test CA",
                ][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.crt"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-nodes", "-subj", "/CN=127.0.0.1"][..],
                &ec,
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat(),
        );
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
            .expect("write san.ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        Certs { dir }
    }

    /// The path of a file in the directory: `ca.crt`, `server.crt`, `server.key`.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A redis-server with a plain port (for the test's admin client) and a TLS port that
/// only the ACL user `app` may use meaningfully. Stopped when dropped.
#[derive(Debug)]
pub struct TlsRedis {
    /// The server; its [`admin`](RedisServer::admin) client uses the plain port.
    pub server: RedisServer,
    /// The TLS port.
    pub tls_port: u16,
    /// Its certificates.
    pub certs: Certs,
}

impl TlsRedis {
    /// Makes the certificates and starts the server.
    pub async fn start() -> TlsRedis {
        let certs = Certs::make();
        let tls_port = free_port();
        let password = format!(">{TLS_PASSWORD}");
        let server = RedisServer::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &certs.path("server.crt"),
            "--tls-key-file",
            &certs.path("server.key"),
            "--tls-ca-cert-file",
            &certs.path("ca.crt"),
            "--tls-auth-clients",
            "no",
            // An ACL user: `user app on >password ~* &* +@all`, one word per argument.
            "--user",
            TLS_USER,
            "on",
            &password,
            "~*",
            "&*",
            "+@all",
        ])
        .await;
        TlsRedis {
            server,
            tls_port,
            certs,
        }
    }

    /// A `rediss://` URL of the TLS port as the ACL user, with `password`.
    pub fn url(&self, password: &str) -> String {
        format!("rediss://{TLS_USER}:{password}@127.0.0.1:{}", self.tls_port)
    }

    /// The CA certificate file that signed the server's certificate.
    pub fn ca(&self) -> String {
        self.certs.path("ca.crt")
    }
}
