//! The pages, as askama templates (the files are in `templates/`, checked at compile time
//! and HTML-escaped by default).

use askama::Template;
use time::{format_description::well_known::Rfc3339, macros::format_description, OffsetDateTime};

use crate::{users::DemoAccount, AppError};

/// Renders a template, turning a rendering failure (a bug) into an internal error.
pub(crate) fn render(template: &impl Template) -> Result<String, AppError> {
    template
        .render()
        .map_err(|e| AppError::Internal(format!("template: {e}")))
}

/// The sign-in page.
#[derive(Template)]
#[template(path = "login.html")]
pub(crate) struct LoginPage<'a> {
    pub(crate) csrf: &'a str,
    pub(crate) username: &'a str,
    pub(crate) error: Option<&'a str>,
    pub(crate) flash: Option<String>,
    pub(crate) accounts: &'a [DemoAccount],
    pub(crate) tiers: &'a str,
    pub(crate) idle: String,
}

/// The signed-in user's page.
#[derive(Template)]
#[template(path = "profile.html")]
pub(crate) struct ProfilePage<'a> {
    pub(crate) name: &'a str,
    pub(crate) username: &'a str,
    pub(crate) csrf: &'a str,
    pub(crate) flash: Option<String>,
    pub(crate) visits: u64,
    pub(crate) expires: Stamp,
    pub(crate) idle: String,
    pub(crate) sessions: Vec<SessionRow>,
    pub(crate) others: usize,
    pub(crate) tiers: &'a str,
}

/// One row of the session list.
pub(crate) struct SessionRow {
    pub(crate) key: String,
    pub(crate) device: String,
    pub(crate) user_agent: String,
    pub(crate) created: Stamp,
    pub(crate) last_seen: Stamp,
    pub(crate) expires: Stamp,
    pub(crate) current: bool,
}

/// An error page.
#[derive(Template)]
#[template(path = "error.html")]
pub(crate) struct ErrorPage<'a> {
    pub(crate) status: u16,
    pub(crate) reason: &'a str,
    pub(crate) message: &'a str,
}

/// A point in time, as a page shows it: machine-readable, in UTC, and relative to now.
pub(crate) struct Stamp {
    pub(crate) rfc3339: String,
    pub(crate) utc: String,
    pub(crate) relative: String,
}

impl Stamp {
    pub(crate) fn new(at: OffsetDateTime, now: OffsetDateTime) -> Self {
        let utc = at.to_offset(time::UtcOffset::UTC);
        Stamp {
            rfc3339: utc.format(&Rfc3339).unwrap_or_default(),
            utc: utc
                .format(format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
                ))
                .unwrap_or_default(),
            relative: relative(at - now),
        }
    }
}

/// "in 29 min", "3 min ago", "just now".
fn relative(delta: time::Duration) -> String {
    let secs = delta.whole_seconds();
    let abs = secs.unsigned_abs();
    if abs < 45 {
        return "just now".to_owned();
    }
    let amount = match abs {
        0..3_570 => format!("{} min", abs.div_ceil(60).max(1)),
        3_570..86_400 => format!("{} h", (abs + 1_800) / 3_600),
        _ => format!("{} days", (abs + 43_200) / 86_400),
    };
    if secs > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A duration for people: "30 minutes", "90 seconds", "2 hours".
pub(crate) fn humane(duration: std::time::Duration) -> String {
    let secs = duration.as_secs();
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if secs % 3_600 == 0 && secs > 0 {
        plural(secs / 3_600, "hour")
    } else if secs % 60 == 0 && secs > 0 {
        plural(secs / 60, "minute")
    } else {
        plural(secs, "second")
    }
}

/// A short name for a user agent: "Firefox on Linux", "curl/8.5.0".
pub(crate) fn device(user_agent: Option<&str>) -> String {
    let Some(ua) = user_agent.filter(|ua| !ua.trim().is_empty()) else {
        return "Unknown device".to_owned();
    };
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("HeadlessChrome/", "Headless Chrome"),
        ("Chrome/", "Chrome"),
        ("Chromium/", "Chromium"),
        ("Safari/", "Safari"),
    ]
    .iter()
    .find(|(token, _)| ua.contains(token))
    .map(|(_, name)| *name);
    let os = [
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(token, _)| ua.contains(token))
    .map(|(_, name)| *name);
    match (browser, os) {
        (Some(browser), Some(os)) => format!("{browser} on {os}"),
        (Some(browser), None) => browser.to_owned(),
        // Scripts: "curl/8.5.0", "python-requests/2.31" — the first product token.
        _ => ua.split_whitespace().next().unwrap_or(ua).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_named_briefly() {
        let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        assert_eq!(device(Some(firefox)), "Firefox on Linux");
        let chrome = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 \
                      (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
        assert_eq!(device(Some(chrome)), "Chrome on macOS");
        assert_eq!(device(Some("curl/8.5.0")), "curl/8.5.0");
        assert_eq!(device(None), "Unknown device");
        assert_eq!(device(Some("  ")), "Unknown device");
    }

    #[test]
    fn times_read_naturally() {
        let s = time::Duration::seconds;
        assert_eq!(relative(s(10)), "just now");
        assert_eq!(relative(s(-10)), "just now");
        assert_eq!(relative(s(1_800)), "in 30 min");
        assert_eq!(relative(s(-180)), "3 min ago");
        assert_eq!(relative(s(7_200)), "in 2 h");
        assert_eq!(relative(s(-3 * 86_400)), "3 days ago");
        assert_eq!(humane(std::time::Duration::from_secs(1_800)), "30 minutes");
        assert_eq!(humane(std::time::Duration::from_secs(3_600)), "1 hour");
        assert_eq!(humane(std::time::Duration::from_secs(90)), "90 seconds");
    }
}
