//! A real OpenID Provider for the SSO tests: `tests/browser/oidc_provider.mjs` (npm's
//! oidc-provider) run by Node on a free loopback port and killed on drop, and a cookie-keeping
//! HTTP client that signs in at it the way a browser posts its login form.
//!
//! Needs `node` on PATH and `cd tests/browser && npm ci` once.

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use url::Url;

/// The provider's public client (PKCE only).
pub const PUBLIC_CLIENT: &str = "tollgate-public";
/// The provider's confidential client and its secret.
pub const CONFIDENTIAL_CLIENT: &str = "tollgate-confidential";
pub const CONFIDENTIAL_SECRET: &str = "confidential-secret-1234567890";
/// A client registered at the same provider that is not tollgate.
pub const OTHER_CLIENT: &str = "other-client";

/// Node and oidc-provider start in well under a second on an idle machine; a loaded one
/// running many tests at once can take much longer.
const START_TIMEOUT: Duration = Duration::from_secs(120);

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

pub struct OidcProvider {
    /// The issuer URL, as the provider printed it.
    pub issuer: String,
    /// The redirect URI its clients are registered for.
    pub redirect_uri: String,
    child: Child,
    _log: tempfile::NamedTempFile,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    /// Starts a provider whose clients return to `redirect_uri`, and whose token endpoint
    /// takes `auth_methods` (the confidential client uses the first), and waits until it
    /// listens.
    pub async fn start(redirect_uri: &str, auth_methods: &[&str]) -> OidcProvider {
        let dir = browser_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `cd tests/browser && npm ci`"
        );
        let port = super::envoy::free_port();
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = Command::new("node")
            .current_dir(&dir)
            .arg("oidc_provider.mjs")
            .args(["--port", &port.to_string()])
            .args(["--redirect-uri", redirect_uri])
            .args(["--auth-methods", &auth_methods.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("the log file again"))
            .spawn()
            .expect("run node (is it on PATH?)");
        let stdout = child.stdout.take().expect("piped stdout");
        let first_line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line).map(|_| line);
            // The rest is read until the provider exits: a closed pipe would kill it at its
            // next write.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            read
        });
        let read = tokio::time::timeout(START_TIMEOUT, first_line).await;
        let issuer = match read {
            Ok(Ok(Ok(line))) if line.starts_with("http://") => line.trim().to_owned(),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let what = match other {
                    Err(_) => format!("not listening after {START_TIMEOUT:?}"),
                    Ok(Ok(Ok(line))) => format!("printed {line:?} instead of its issuer"),
                    Ok(Ok(Err(e))) => format!("stdout unreadable: {e}"),
                    Ok(Err(e)) => format!("{e}"),
                };
                panic!(
                    "the OpenID Provider did not start ({what}):\n{}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
        };
        OidcProvider {
            issuer,
            redirect_uri: redirect_uri.to_owned(),
            child,
            _log: log,
        }
    }

    /// From now on, ID tokens carry `claims` over their real ones (re-signed by the
    /// provider's key).
    pub async fn fault_id_token_claims(&self, claims: serde_json::Value) {
        let status = super::upstream::client()
            .post(format!("{}/test/id-token-claims", self.issuer))
            .json(&claims)
            .send()
            .await
            .expect("the provider's fault switch")
            .status();
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
}

/// What the browser saw at the end of a sign-in at the provider.
#[derive(Debug)]
pub enum Landing {
    /// Sent to the redirect URI: the callback's URL.
    Callback(Url),
    /// Stopped on a page of the provider (status and body).
    Page(StatusCode, String),
}

impl Landing {
    pub fn callback(self) -> Url {
        match self {
            Landing::Callback(url) => url,
            Landing::Page(status, body) => {
                panic!("the provider did not redirect back ({status}): {body}")
            }
        }
    }
}

/// A browser as far as the provider can tell: it keeps cookies (name → value, for every
/// path of the provider's one origin) and follows redirects, except the one to the
/// redirect URI, where it stops.
pub struct Browser {
    http: reqwest::Client,
    cookies: Mutex<BTreeMap<String, String>>,
    redirect_uri: String,
}

impl Browser {
    pub fn new(redirect_uri: &str) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            cookies: Mutex::new(BTreeMap::new()),
            redirect_uri: redirect_uri.to_owned(),
        }
    }

    fn cookie_header(&self) -> String {
        let cookies = self.cookies.lock().unwrap();
        cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&self, response: &reqwest::Response) {
        let mut cookies = self.cookies.lock().unwrap();
        for header in response.headers().get_all(SET_COOKIE) {
            let text = header.to_str().unwrap_or_default();
            let pair = text.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let expired = text
                .to_ascii_lowercase()
                .contains("expires=thu, 01 jan 1970");
            if value.is_empty() || expired {
                cookies.remove(name.trim());
            } else {
                cookies.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }

    /// Sends one request (a GET, or a POST of `form`), then follows redirects.
    async fn go(&self, mut url: Url, mut form: Option<Vec<(&str, &str)>>) -> Landing {
        for _ in 0..10 {
            if url.as_str().starts_with(&self.redirect_uri) {
                return Landing::Callback(url);
            }
            let request = match form.take() {
                Some(form) => self.http.post(url.clone()).form(&form),
                None => self.http.get(url.clone()),
            };
            let response = request
                .header(COOKIE, self.cookie_header())
                .send()
                .await
                .expect("the provider answers");
            self.keep_cookies(&response);
            let status = response.status();
            if status.is_redirection() {
                let location = response.headers()[LOCATION].to_str().unwrap().to_owned();
                url = url.join(&location).expect("a redirect URL");
                continue;
            }
            return Landing::Page(status, response.text().await.unwrap_or_default());
        }
        panic!("more than 10 redirects");
    }

    /// Opens the authorization URL, and on the provider's sign-in form signs in as
    /// `login` (password `password-<login>`), or presses Cancel when `login` is `None`.
    pub async fn sign_in(&self, authorization_url: &str, login: Option<&str>) -> Landing {
        let url = Url::parse(authorization_url).expect("an authorization URL");
        let page = match self.go(url.clone(), None).await {
            Landing::Page(StatusCode::OK, body) => body,
            other => return other,
        };
        // The form's action: /interaction/{uid}/login (or /abort).
        let action = |what: &str| {
            let end = page.find(&format!("/{what}\"")).expect("the sign-in form");
            let start = page[..end]
                .rfind("\"/interaction/")
                .expect("the form action")
                + 1;
            url.join(&page[start..end + what.len() + 1]).unwrap()
        };
        match login {
            Some(login) => {
                let password = format!("password-{login}");
                self.go(
                    action("login"),
                    Some(vec![("login", login), ("password", &password)]),
                )
                .await
            }
            None => self.go(action("abort"), Some(vec![])).await,
        }
    }
}
