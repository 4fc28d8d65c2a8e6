//! The configuration, from environment variables.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HOST` | `127.0.0.1` | address to listen on (`0.0.0.0` in a container) |
//! | `PORT` | `3000` | port to listen on (container platforms set it) |
//! | `REDIS_URL` | unset: in-process cache | Redis cache tier, e.g. `redis://127.0.0.1:6379` |
//! | `REDISHOST`, `REDISPORT`, `REDIS_AUTH` | unset | the same, split as managed-Redis guides give it (used when `REDIS_URL` is unset) |
//! | `REDIS_CA_FILE` | unset: system roots | PEM file of the CAs to trust for `rediss://` |
//! | `DATABASE_URL` | unset: SQLite file `tiered-sessions.sqlite` | durable tier, `postgres://…` or `sqlite://…` |
//! | `SESSION_IDLE_SECS` | `1800` | idle timeout: a session unused this long expires |
//! | `COOKIE_SECURE` | `false` | `true` marks the cookie `Secure` (set it behind HTTPS) |
//! | `RUST_LOG` | `info` | log filter |

use std::time::Duration;

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {expected}")]
pub struct ConfigError {
    name: &'static str,
    value: String,
    expected: &'static str,
}

/// What `main` needs to start the app. `Debug` shows no secrets.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// The tiers (`REDIS_URL` or `REDISHOST`…, `DATABASE_URL`), before the app's settings.
    pub tiers: tiered_sessions::Builder,
    /// The sessions' idle timeout.
    pub idle_timeout: Duration,
    /// Whether the session cookie is `Secure`.
    pub cookie_secure: bool,
}

impl Config {
    /// Default idle timeout: 30 minutes.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(1800);

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup`; unset and blank ones take their defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let invalid = |name, value: String, expected| ConfigError {
            name,
            value,
            expected,
        };
        let port = match var("PORT") {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| invalid("PORT", v, "expected a port number, 0-65535"))?,
            None => 3000,
        };
        let idle_timeout = match var("SESSION_IDLE_SECS") {
            Some(v) => match v.trim().parse::<u64>() {
                Ok(secs) if secs > 0 => Duration::from_secs(secs),
                _ => {
                    return Err(invalid(
                        "SESSION_IDLE_SECS",
                        v,
                        "expected a whole number of seconds, at least 1",
                    ))
                }
            },
            None => Self::DEFAULT_IDLE_TIMEOUT,
        };
        let cookie_secure = match var("COOKIE_SECURE") {
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => return Err(invalid("COOKIE_SECURE", v, "expected true or false")),
            },
            None => false,
        };
        Ok(Config {
            host: var("HOST").unwrap_or_else(|| "127.0.0.1".to_owned()),
            port,
            tiers: tiered_sessions::Builder::from_lookup(&lookup),
            idle_timeout,
            cookie_secure,
        })
    }

    /// The store builder for this configuration: the tiers from the URLs (the embedded
    /// default without them), the idle timeout, and the owner pointer that lets the
    /// store list a user's sessions.
    pub fn store(&self) -> tiered_sessions::Builder {
        self.tiers
            .clone()
            .with_idle_timeout(self.idle_timeout)
            .with_owner_pointer(crate::OWNER_POINTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn defaults_run_on_a_bare_machine() {
        let c = config(&[]).expect("defaults");
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 3000));
        assert_eq!(c.idle_timeout, Duration::from_secs(1800));
        assert!(!c.cookie_secure);
        let tiers = c.store().describe();
        assert!(tiers.contains("in-process memory"), "{tiers}");
        assert!(tiers.contains("SQLite file"), "{tiers}");
    }

    #[test]
    fn variables_override_and_blank_means_unset() {
        let c = config(&[
            ("HOST", "0.0.0.0"),
            ("PORT", "8080"),
            ("SESSION_IDLE_SECS", "60"),
            ("COOKIE_SECURE", "true"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("DATABASE_URL", " "),
        ])
        .expect("config");
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 8080));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert!(c.cookie_secure);
        let tiers = c.store().describe();
        assert!(tiers.contains("Redis at redis://127.0.0.1:6379"), "{tiers}");
        assert!(tiers.contains("SQLite file"), "DATABASE_URL blank: {tiers}");
    }

    #[test]
    fn managed_redis_variables_and_no_secret_in_debug() {
        let c = config(&[
            ("REDISHOST", "10.0.0.7"),
            ("REDISPORT", "6380"),
            ("REDIS_AUTH", "s3cret-auth-string"),
        ])
        .expect("config");
        let tiers = c.store().describe();
        assert!(tiers.contains("Redis at redis://10.0.0.7:6380"), "{tiers}");
        let shown = format!("{c:?} {tiers}");
        assert!(!shown.contains("s3cret-auth-string"), "{shown}");
        let c = config(&[("REDIS_URL", "redis://:hunter2@10.0.0.7:6379")]).expect("config");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("PORT", "http"),
            ("PORT", "70000"),
            ("SESSION_IDLE_SECS", "0"),
            ("SESSION_IDLE_SECS", "-5"),
            ("COOKIE_SECURE", "maybe"),
        ] {
            let err = config(&[(name, value)]).expect_err(name).to_string();
            assert!(err.starts_with(name), "{err}");
        }
    }
}
