//! The tool's errors: each says what to fix, on one line.

use std::fmt::Write as _;

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A combination of options that cannot work; the message says which option to change.
    #[error("{0}")]
    Usage(String),
    /// A URL that does not parse or names a scheme the tool does not speak.
    #[error("bad {what} `{url}`: {reason}")]
    Url {
        /// Which option (`--redis-url`, ...).
        what: &'static str,
        /// The URL, password removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A server that could not be reached or refused the connection.
    #[error("cannot connect to {what} at {url}: {reason}")]
    Connect {
        /// `Redis`, `Postgres`, `the server`.
        what: &'static str,
        /// The URL, password removed.
        url: String,
        /// What failed and what to check.
        reason: String,
    },
    /// The HTTP sign-in did not produce a session.
    #[error("login failed: {0}")]
    Login(String),
    /// `--spawn-servers` could not start a server.
    #[error("cannot start a private {what}: {reason}")]
    Spawn {
        /// `redis-server`, `Postgres`.
        what: &'static str,
        /// What failed and what to install or check.
        reason: String,
    },
    /// Setting a backend up (creating its sessions, migrating its schema) failed.
    #[error("setting up {backend}: {reason}")]
    Setup {
        /// The backend.
        backend: String,
        /// What failed.
        reason: String,
    },
    /// Writing the report failed.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Drawing the plot failed.
    #[error("cannot draw {path}: {reason}")]
    Plot {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// Result of the tool's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources, joined with `: ` on one line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = cause.source();
    }
    out.replace('\n', " ")
}

/// Removes the password from a URL for messages: `redis://user:secret@host` becomes
/// `redis://user:***@host`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The host part of a URL (`scheme://[user[:pw]@]host[:port][/...]`), brackets kept for
/// IPv6 literals.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        &host_port[..=host_port.find(']')?]
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// Whether `host` is a loopback name or address (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a URL whose host is not on loopback unless remote targets were allowed.
pub fn check_target(what: &'static str, url: &str, allow_remote: bool) -> Result<()> {
    let host = url_host(url).ok_or_else(|| Error::Url {
        what,
        url: redact(url),
        reason: "expected scheme://host[:port]/...".into(),
    })?;
    if allow_remote || is_loopback(host) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{what} points at {host}, which is not a loopback address; a load test can \
             overload a server: pass --allow-remote if you mean it"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_loopback() {
        assert_eq!(url_host("redis://127.0.0.1:6379"), Some("127.0.0.1"));
        assert_eq!(
            url_host("postgres://u:p@localhost:5432/db?x=1"),
            Some("localhost")
        );
        assert_eq!(url_host("http://[::1]:3000/api"), Some("[::1]"));
        assert_eq!(url_host("nonsense"), None);
        assert!(is_loopback("127.0.0.2") && is_loopback("[::1]") && is_loopback("LOCALHOST"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("example.com"));
        assert!(check_target("--redis-url", "redis://10.1.2.3", false).is_err());
        assert!(check_target("--redis-url", "redis://10.1.2.3", true).is_ok());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
