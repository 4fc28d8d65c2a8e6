//! HTTP mode: sign users in through the server's login request, then read a page with
//! their cookies.

use std::{borrow::Cow, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    header::{CONTENT_TYPE, COOKIE, SET_COOKIE},
    http::HeaderValue,
    Method, Request, Uri,
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use crate::{
    backend::ErrorKind,
    cli::{Credentials, HttpArgs},
    error::{chain, check_target, Error, Result},
};

/// How long one sign-in may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Sign-ins in flight at once.
const LOGIN_CONCURRENCY: usize = 8;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The read request, cloned into every task.
#[derive(Clone, Debug)]
pub struct HttpOp {
    client: HttpClient,
    url: Uri,
    cookies: Arc<Vec<HeaderValue>>,
}

impl HttpOp {
    /// Sessions (cookies) it reads with.
    pub fn len(&self) -> usize {
        self.cookies.len()
    }

    /// Whether it has no cookie.
    pub fn is_empty(&self) -> bool {
        self.cookies.is_empty()
    }

    /// `GET` of the read URL with cookie `i`; a non-2xx answer is an error named by its
    /// status code.
    pub async fn run(&self, i: usize) -> Result<(), ErrorKind> {
        let request = Request::get(self.url.clone())
            .header(COOKIE, self.cookies[i].clone())
            .body(Full::new(Bytes::new()))
            .map_err(|e| Cow::Owned(format!("request: {e}")))?;
        let response = self.client.request(request).await.map_err(|e| {
            Cow::Owned(format!(
                "transport: {}",
                crate::backend::shorten(&chain(&e))
            ))
        })?;
        let status = response.status();
        // Read the body so the connection can be reused.
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| Cow::Owned(format!("body: {e}")))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Cow::Owned(format!("HTTP {status}")))
        }
    }
}

fn join(base: &str, path: &str) -> Result<Uri> {
    let url = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let uri: Uri = url.parse().map_err(|e| Error::Url {
        what: "--base-url",
        url: url.clone(),
        reason: format!("{e}"),
    })?;
    if uri.scheme_str() != Some("http") {
        return Err(Error::Url {
            what: "--base-url",
            url,
            reason: "only http:// is supported (run the load test next to the server)".into(),
        });
    }
    Ok(uri)
}

/// Signs in `args.sessions` times, taking `args.users` in turn, and returns the read
/// request with the cookies the server set.
pub async fn sign_in(args: &HttpArgs, progress: &dyn Fn(u64)) -> Result<HttpOp> {
    check_target("--base-url", &args.base_url, args.load.allow_remote)?;
    let login = join(&args.base_url, &args.login_path)?;
    let read = join(&args.base_url, &args.read_path)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector);

    let mut cookies = Vec::with_capacity(args.sessions as usize);
    let mut next = 0u64;
    while next < args.sessions {
        let batch = args.sessions.min(next + LOGIN_CONCURRENCY as u64);
        let mut logins = tokio::task::JoinSet::new();
        for i in next..batch {
            let user = args.users[i as usize % args.users.len()].clone();
            let (client, login) = (client.clone(), login.clone());
            logins.spawn(async move { (i, login_once(&client, &login, &user).await) });
        }
        let mut done = Vec::new();
        while let Some(joined) = logins.join_next().await {
            let (i, cookie) =
                joined.map_err(|e| Error::Login(format!("a sign-in task failed: {e}")))?;
            done.push((i, cookie?));
        }
        done.sort_unstable_by_key(|(i, _)| *i);
        cookies.extend(done.into_iter().map(|(_, cookie)| cookie));
        next = batch;
        progress(cookies.len() as u64);
    }
    Ok(HttpOp {
        client,
        url: read,
        cookies: Arc::new(cookies),
    })
}

async fn login_once(client: &HttpClient, url: &Uri, user: &Credentials) -> Result<HeaderValue> {
    let body = serde_json::json!({"username": user.username, "password": user.password});
    let request = Request::builder()
        .method(Method::POST)
        .uri(url.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| Error::Login(format!("cannot build the request to {url}: {e}")))?;
    let response = match tokio::time::timeout(LOGIN_TIMEOUT, client.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            return Err(Error::Connect {
                what: "the server",
                url: url.to_string(),
                reason: format!("{}; is it running?", chain(&e)),
            })
        }
        Err(_) => {
            return Err(Error::Connect {
                what: "the server",
                url: url.to_string(),
                reason: format!("no answer within {LOGIN_TIMEOUT:?}"),
            })
        }
    };
    let status = response.status();
    let cookie: Vec<String> = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(|pair| pair.trim().to_owned())
        .filter(|pair| pair.contains('='))
        .collect();
    let _ = response.into_body().collect().await;
    if !(status.is_success() || status.is_redirection()) {
        return Err(Error::Login(format!(
            "POST {url} as `{}` answered {status}; check --user NAME:PASSWORD and --login-path",
            user.username
        )));
    }
    if cookie.is_empty() {
        return Err(Error::Login(format!(
            "POST {url} as `{}` answered {status} but set no cookie; is --login-path the sign-in request?",
            user.username
        )));
    }
    HeaderValue::from_str(&cookie.join("; ")).map_err(|e| {
        Error::Login(format!(
            "the server set a cookie that cannot be sent back: {e}"
        ))
    })
}
