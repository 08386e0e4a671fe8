//! A browser for the web UI's tests: a reqwest client with a cookie store that sends what
//! a browser sends with a form (`Origin`, `application/x-www-form-urlencoded`) and does not
//! follow redirects, so that a test sees every 303 and its cookies.

use reqwest::cookie::CookieStore;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The browser's cookies, kept as a browser at the public URL keeps them: by name and
/// path, where the path is matched against the path the browser sees (the proxy's prefix
/// in front of the path tollgate is reached at). `Secure` is ignored (the proxy in front
/// of a test may say TLS when the test speaks plain HTTP); `Max-Age=0` deletes.
#[derive(Default)]
pub struct Jar {
    prefix: String,
    cookies: Mutex<Vec<(String, String, String)>>,
}

impl Jar {
    /// Keeps one `Set-Cookie`.
    pub fn add(&self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
            return;
        };
        let mut path = "/".to_owned();
        let mut delete = false;
        for attribute in parts {
            let (key, val) = attribute
                .trim()
                .split_once('=')
                .unwrap_or((attribute.trim(), ""));
            match key.to_ascii_lowercase().as_str() {
                "path" => path = val.to_owned(),
                "max-age" => delete = val.trim() == "0",
                _ => {}
            }
        }
        let mut cookies = self.cookies.lock().unwrap();
        cookies.retain(|(n, _, p)| !(n == name && *p == path));
        if !delete {
            cookies.push((name.to_owned(), value.to_owned(), path));
        }
    }

    /// The cookies sent to `path` (as the browser sees it), `name=value; …`.
    pub fn header_for(&self, path: &str) -> Option<String> {
        let cookies = self.cookies.lock().unwrap();
        let sent: Vec<String> = cookies
            .iter()
            .filter(|(_, _, p)| path_matches(p, path))
            .map(|(n, v, _)| format!("{n}={v}"))
            .collect();
        (!sent.is_empty()).then(|| sent.join("; "))
    }
}

/// RFC 6265 §5.1.4: the cookie's path is the request's, or a prefix of it ending at a `/`.
fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/')
                || request_path.as_bytes().get(cookie_path.len()) == Some(&b'/')))
}

impl CookieStore for Jar {
    fn set_cookies(&self, headers: &mut dyn Iterator<Item = &HeaderValue>, _: &url::Url) {
        for header in headers {
            if let Ok(text) = header.to_str() {
                self.add(text);
            }
        }
    }

    fn cookies(&self, url: &url::Url) -> Option<HeaderValue> {
        let seen = format!("{}{}", self.prefix, url.path());
        self.header_for(&seen)
            .and_then(|header| HeaderValue::from_str(&header).ok())
    }
}

/// One browser: its own cookies, talking to `origin` (`http://127.0.0.1:PORT`), with the UI
/// mounted at `{prefix}/ui` (a proxy's `X-Forwarded-Prefix`, sent with every request when
/// not empty).
pub struct Browser {
    client: reqwest::Client,
    pub jar: Arc<Jar>,
    /// The site's origin as the browser sees it (its `Origin` header).
    pub origin: String,
    pub prefix: String,
    /// Where tollgate is reached (the origin, unless a proxy is in between).
    served: String,
    /// Headers a proxy in between adds to every request.
    forwarded: Vec<(&'static str, String)>,
}

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// Where a redirect goes.
    pub fn location(&self) -> Option<&str> {
        self.headers.get("location").and_then(|v| v.to_str().ok())
    }

    /// The value of the first `csrf_token` field of the page's forms.
    pub fn csrf(&self) -> String {
        self.input_value("csrf_token")
            .unwrap_or_else(|| panic!("no csrf_token field on the page:\n{}", self.body))
    }

    /// The `value` of the first `<input>` named `name`.
    pub fn input_value(&self, name: &str) -> Option<String> {
        let at = self.body.find(&format!("name=\"{name}\""))?;
        let start = self.body[..at].rfind("<input")?;
        let end = at + self.body[at..].find('>')?;
        let tag = &self.body[start..end];
        let value = tag.split(" value=\"").nth(1)?;
        Some(value[..value.find('"')?].to_owned())
    }

    /// Every `Set-Cookie` of the answer.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    /// The `Set-Cookie` that sets `name`.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The body as JSON (the answers to the UI's scripts).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The value of attribute `name` of the first element that has one.
    pub fn attribute(&self, name: &str) -> Option<String> {
        let at = self.body.find(&format!(" {name}=\""))? + name.len() + 3;
        let end = at + self.body[at..].find('"')?;
        Some(self.body[at..end].replace("&amp;", "&"))
    }

    pub fn contains(&self, text: &str) -> bool {
        self.body.contains(text)
    }

    /// The page's `<main>`: what it shows apart from the frame.
    pub fn main(&self) -> &str {
        let start = self.body.find("<main").unwrap_or(0);
        let end = self.body.find("</main>").unwrap_or(self.body.len());
        &self.body[start..end]
    }
}

impl Browser {
    pub fn new(origin: impl Into<String>) -> Browser {
        Self::behind(origin, "")
    }

    /// A browser that reaches the UI through a proxy mounting it at `prefix`.
    pub fn behind(origin: impl Into<String>, prefix: &str) -> Browser {
        let jar = Arc::new(Jar {
            prefix: prefix.to_owned(),
            ..Jar::default()
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client");
        let origin = origin.into();
        Browser {
            client,
            jar,
            served: origin.clone(),
            origin,
            prefix: prefix.to_owned(),
            forwarded: Vec::new(),
        }
    }

    /// A browser at `public` (`https://ui.example.com`), whose requests a TLS proxy passes
    /// to tollgate at `served` with `X-Forwarded-Proto` and `X-Forwarded-Host`.
    pub fn proxied(served: impl Into<String>, public: &str) -> Browser {
        let url = url::Url::parse(public).expect("a public origin");
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap()),
            None => url.host_str().unwrap().to_owned(),
        };
        let mut browser = Self::new(public.trim_end_matches('/'));
        browser.served = served.into();
        browser.forwarded = vec![
            ("x-forwarded-proto", url.scheme().to_owned()),
            ("x-forwarded-host", host),
        ];
        browser
    }

    /// `http://host:port/ui{path}` as the browser sees it (with the prefix).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}/ui{path}", self.origin, self.prefix)
    }

    /// The URL tollgate itself serves `path` at (the proxy strips the prefix).
    fn served(&self, path: &str) -> String {
        format!("{}/ui{path}", self.served)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, self.served(path));
        if !self.prefix.is_empty() {
            request = request.header("x-forwarded-prefix", &self.prefix);
        }
        for (name, value) in &self.forwarded {
            request = request.header(*name, value);
        }
        request
    }

    pub async fn get(&self, path: &str) -> Page {
        read(self.request(reqwest::Method::GET, path)).await
    }

    /// GETs `path` with one more header (a cookie the proxy passes, a forwarding header).
    pub async fn get_with_header(&self, path: &str, name: &str, value: &str) -> Page {
        read(self.request(reqwest::Method::GET, path).header(name, value)).await
    }

    /// Follows redirects from `path` until a page that is not one.
    pub async fn follow(&self, path: &str) -> Page {
        let mut page = self.get(path).await;
        for _ in 0..5 {
            let Some(location) = page.location() else {
                return page;
            };
            let under = location
                .strip_prefix(&format!("{}/ui", self.prefix))
                .unwrap_or_else(|| panic!("a redirect out of the UI: {location}"))
                .to_owned();
            page = self.get(&under).await;
        }
        panic!("too many redirects from {path}");
    }

    /// Posts a form as a browser does: urlencoded, with this site as its `Origin`.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_with(path, fields, &[("origin", &self.origin)])
            .await
    }

    /// Posts a form with exactly these extra headers (no `Origin` unless given).
    pub async fn post_with(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let body = encode(fields);
        self.post_raw(path, body.into_bytes(), headers).await
    }

    /// Posts `body` as a form, byte for byte.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Page {
        let mut request = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(request).await
    }

    /// Posts `body` with another content type than a form's.
    pub async fn post_with_type(&self, path: &str, content_type: &str, body: &str) -> Page {
        let request = self
            .request(reqwest::Method::POST, path)
            .header("content-type", content_type)
            .header("origin", &self.origin)
            .body(body.to_owned());
        read(request).await
    }

    /// Posts JSON as the UI's scripts do: same origin, the CSRF token in `x-csrf-token`.
    pub async fn post_json(&self, path: &str, csrf: &str, body: &serde_json::Value) -> Page {
        let request = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .header("origin", &self.origin)
            .header("x-csrf-token", csrf)
            .body(body.to_string());
        read(request).await
    }

    /// Posts a form that carries the CSRF token of the page at `from`.
    pub async fn submit(&self, from: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.get(from).await.csrf();
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all).await
    }

    /// Signs in with a password; the answer to the form.
    pub async fn sign_in(&self, username: &str, password: &str) -> Page {
        self.submit(
            "/login",
            "/login",
            &[("username", username), ("password", password)],
        )
        .await
    }

    /// Signs in with a password and asserts that it worked.
    pub async fn signed_in(&self, username: &str, password: &str) {
        let page = self.sign_in(username, password).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "sign-in: {}", page.body);
    }

    pub async fn sign_in_master(&self, key: &str) -> Page {
        self.submit("/login", "/login/master", &[("master_key", key)])
            .await
    }

    /// The value of cookie `name` as the browser would send it to `path` under the UI.
    pub fn cookie(&self, path: &str, name: &str) -> Option<String> {
        let header = self.jar.header_for(&format!("{}/ui{path}", self.prefix))?;
        header
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_owned())
    }

    /// Sets cookie `name` for the whole UI, as a browser that kept (or forged) it would.
    pub fn set_cookie(&self, name: &str, value: &str) {
        self.jar
            .add(&format!("{name}={value}; Path={}/ui", self.prefix));
    }
}

/// `name=value&…`, URL-encoded.
pub fn encode(fields: &[(&str, &str)]) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in fields {
        form.append_pair(name, value);
    }
    form.finish()
}

async fn read(request: reqwest::RequestBuilder) -> Page {
    let response = request.send().await.expect("the UI answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.expect("a body");
    Page {
        status,
        headers,
        body,
    }
}

// ---- a tollgate for the UI's tests -------------------------------------------------------

/// The password of the users [`Stack::user`] makes.
pub const PASSWORD: &str = "Correct-Horse-9";

/// Password sessions, so that users can sign in with a password.
pub const SESSION: &str =
    "auth:\n  session: { secret: \"0123456789abcdef0123456789abcdef-ui-tests\" }\n";

/// Which store the tollgate under test uses.
#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs an `async fn name(db: Db)` once per store, as the tests `name::sqlite` and
/// `name::postgres`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::ui::Db::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name($crate::common::ui::Db::Postgres).await
            }
        }
    )+};
}

/// A tollgate with password sessions, and the store it uses (for what a test reads or
/// changes behind the UI's back).
pub struct Stack {
    pub t: super::tollgate::Tollgate,
    pub db: tollgate::store::sql::SqlStore,
    _dir: Option<tempfile::TempDir>,
}

impl Stack {
    pub async fn start(db: Db, yaml: &str) -> Stack {
        Self::start_with(db, "", yaml).await
    }

    /// With more `auth:` settings (`auth_lines`, indented under `auth:`).
    pub async fn start_with(db: Db, auth_lines: &str, yaml: &str) -> Stack {
        Self::start_at(db, auth_lines, yaml, "127.0.0.1:0".parse().unwrap()).await
    }

    /// [`Stack::start_with`] with the HTTP listener on `http`.
    pub async fn start_at(
        db: Db,
        auth_lines: &str,
        yaml: &str,
        http: std::net::SocketAddr,
    ) -> Stack {
        let (db, url, dir) = match db {
            Db::Sqlite => {
                let (store, dir, url) = super::db::fresh_sqlite().await;
                (store, url, Some(dir))
            }
            Db::Postgres => {
                let (store, url) = super::db::fresh_postgres().await;
                (store, url, None)
            }
        };
        let yaml = format!("{SESSION}{auth_lines}database: {{ url: \"{url}\" }}\n{yaml}");
        let t = super::tollgate::Tollgate::start_at(&yaml, http).await;
        Stack { t, db, _dir: dir }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.t.http)
    }

    pub fn browser(&self) -> Browser {
        Browser::new(self.origin())
    }

    /// A user with [`PASSWORD`]; its id.
    pub async fn user(&self, name: &str, role: &str) -> String {
        let body = serde_json::json!({
            "username": name,
            "email": format!("{name}@example.com"),
            "role": role,
            "password": PASSWORD,
        });
        let (status, user) = self
            .t
            .admin(reqwest::Method::POST, "/admin/users", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        user["id"].as_str().unwrap().to_owned()
    }

    /// A key through the admin API; `(id, secret)`.
    pub async fn key(&self, body: serde_json::Value) -> (String, String) {
        self.t.create_key(body).await
    }

    /// A key as `GET /admin/keys/{id}` answers it.
    pub async fn key_record(&self, id: &str) -> serde_json::Value {
        let (status, key) = self
            .t
            .admin(reqwest::Method::GET, &format!("/admin/keys/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{key}");
        key
    }

    /// How many web UI sessions the store holds.
    pub async fn sessions(&self) -> i64 {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM ui_sessions")
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    /// The audit log's events of `action`, newest first.
    pub async fn audit(&self, action: &str) -> Vec<serde_json::Value> {
        let (status, events) = self
            .t
            .admin(
                reqwest::Method::GET,
                &format!("/admin/audit?action={action}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{events}");
        events["data"].as_array().unwrap().clone()
    }
}

/// Asserts that `page` is a 303 to `to`.
pub fn redirected_to(page: &Page, to: &str) {
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), Some(to), "{:?}", page.headers);
}
