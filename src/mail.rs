//! Mail over SMTP, for budget alerts (`budgets.alert_email`).
//!
//! The server is named by a URL:
//!
//! - `smtp://[user:password@]host[:port]` (default port 25): a plain connection, upgraded
//!   with STARTTLS when the server offers it and sent plain when it does not. A password is
//!   never sent over a plain connection: with credentials and no STARTTLS the attempt fails.
//!   `?tls=required` refuses to send anything without STARTTLS.
//! - `smtps://[user:password@]host[:port]` (default port 465): TLS from the first byte.
//!
//! TLS always verifies the server's certificate and name, against the built-in public roots
//! or against `ca_file` (then only against it). User and password are percent-decoded; the
//! password is a [`Secret`] and no error or `Debug` output shows it.
//!
//! Each [`Mailer::send`] opens one connection (alerts are few: no pool to keep alive).

use crate::backend_tls::read_ca_bundle;
use crate::config::AlertEmail;
use crate::secret::Secret;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use lettre::Message;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// Default ports of the two schemes.
pub const SMTP_PORT: u16 = 25;
pub const SMTPS_PORT: u16 = 465;

/// Connecting (TCP and, for `smtps://`, the TLS handshake) may take this long…
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// …and one whole delivery, from connecting to the server's answer to the message, this
/// long (well below the store's claim on an alert, [`crate::store::ALERT_CLAIM_SECS`]).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How the connection to the server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtp://`: STARTTLS when the server offers it, else plain (and then no password).
    StartTlsIfOffered,
    /// `smtp://…?tls=required`: STARTTLS or nothing.
    StartTlsRequired,
    /// `smtps://`: TLS from the start.
    Implicit,
}

/// A parsed `smtp_url`.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    pub security: Security,
    pub host: String,
    pub port: u16,
    /// User and password, percent-decoded; a user without a password is refused.
    pub credentials: Option<(String, Secret)>,
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpUrl")
            .field("security", &self.security)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish()
    }
}

impl SmtpUrl {
    /// Reads `smtp://` and `smtps://` URLs as the module says; the error never holds the
    /// password.
    pub fn parse(text: &str) -> Result<SmtpUrl, String> {
        // The text is not echoed: it may hold the password where no parser finds it.
        let url = url::Url::parse(text.trim()).map_err(|e| {
            format!("not a URL ({e}): use smtp://host[:port] or smtps://host[:port]")
        })?;
        let mut security = match url.scheme() {
            "smtp" => Security::StartTlsIfOffered,
            "smtps" => Security::Implicit,
            other => {
                return Err(format!(
                    "the scheme must be smtp:// (STARTTLS when offered) or smtps:// (implicit TLS), not `{other}:`"
                ))
            }
        };
        let host = match url.host() {
            Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err("the URL names no host".to_owned()),
        };
        if url.path() != "" && url.path() != "/" {
            return Err(format!(
                "an SMTP URL has no path (`{}`)",
                url.path().trim_start_matches('/')
            ));
        }
        for (key, value) in url.query_pairs() {
            match (key.as_ref(), value.as_ref()) {
                ("tls", "required") if security == Security::StartTlsIfOffered => {
                    security = Security::StartTlsRequired
                }
                ("tls", "required") => {}
                ("tls", other) => {
                    return Err(format!(
                        "tls=`{other}` is not known: the only choice is tls=required (STARTTLS or nothing)"
                    ))
                }
                (other, _) => {
                    return Err(format!(
                        "unknown parameter `{other}` (the only one is tls=required)"
                    ))
                }
            }
        }
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
        };
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            ("", Some(_)) => return Err("a password needs a user (user:password@host)".into()),
            (_, None) => return Err("a user needs a password (user:password@host)".into()),
            (user, Some(password)) => {
                let user = decode(user).map_err(|_| "the user is not UTF-8".to_owned())?;
                let password =
                    decode(password).map_err(|_| "the password is not UTF-8".to_owned())?;
                Some((user, Secret::new(password)))
            }
        };
        let port = url.port().unwrap_or(match security {
            Security::Implicit => SMTPS_PORT,
            _ => SMTP_PORT,
        });
        Ok(SmtpUrl {
            security,
            host,
            port,
            credentials,
        })
    }
}

/// An address as a mailbox (`addr@example.com` or `Name <addr@example.com>`), or why not.
pub fn mailbox(text: &str) -> Result<Mailbox, String> {
    text.trim()
        .parse::<Mailbox>()
        .map_err(|e| format!("`{text}` is not an email address ({e})"))
}

/// Sends plain-text mail from one sender to fixed recipients through one SMTP server.
pub struct Mailer {
    url: SmtpUrl,
    tls: TlsParameters,
    from: Mailbox,
    to: Vec<Mailbox>,
    hello: ClientId,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("url", &self.url)
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish()
    }
}

impl Mailer {
    /// A mailer for `budgets.alert_email`, or why it cannot be (the same checks as the
    /// configuration's, made again in case the CA file changed since).
    pub fn new(config: &AlertEmail) -> Result<Mailer, String> {
        let url = SmtpUrl::parse(&config.smtp_url)?;
        let from = mailbox(&config.from)?;
        let to = config
            .to
            .iter()
            .map(|to| mailbox(to))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err("budgets.alert_email.to names no recipient".to_owned());
        }
        let tls = tls_parameters(&url.host, config.ca_file.as_deref())?;
        Ok(Mailer {
            url,
            tls,
            from,
            to,
            hello: ClientId::default(),
        })
    }

    /// How the connection is protected.
    pub fn security(&self) -> Security {
        self.url.security
    }

    /// Sends one message (`text/plain; charset=utf-8`) to every recipient. `message_id`
    /// (without angle brackets) is its `Message-ID`, the same on every attempt, so that a
    /// message sent twice (delivery is at least once) can be recognised. The error says what
    /// failed, without the password.
    pub async fn send(&self, message_id: &str, subject: &str, body: String) -> Result<(), String> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(one_line(subject))
            .message_id(Some(format!("<{message_id}>")))
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")).to_owned())
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let message = builder
            .body(body)
            .map_err(|e| format!("cannot build the message: {e}"))?;
        match tokio::time::timeout(SEND_TIMEOUT, self.deliver(&message)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the SMTP server did not take the message within {} s",
                SEND_TIMEOUT.as_secs()
            )),
        }
    }

    async fn deliver(&self, message: &Message) -> Result<(), String> {
        let implicit = (self.url.security == Security::Implicit).then(|| self.tls.clone());
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.url.host.as_str(), self.url.port),
            Some(CONNECT_TIMEOUT),
            &self.hello,
            implicit,
            None,
        )
        .await
        .map_err(|e| describe("cannot connect to the SMTP server", &e))?;
        let result = self.converse(&mut conn, message).await;
        // After a failure the connection is dropped without QUIT: a failed STARTTLS leaves
        // nothing to speak over.
        if result.is_ok() {
            let _ = conn.quit().await;
        }
        result
    }

    async fn converse(
        &self,
        conn: &mut AsyncSmtpConnection,
        message: &Message,
    ) -> Result<(), String> {
        if self.url.security != Security::Implicit {
            if conn.can_starttls() {
                conn.starttls(self.tls.clone(), &self.hello)
                    .await
                    .map_err(|e| describe("STARTTLS failed", &e))?;
            } else if self.url.security == Security::StartTlsRequired {
                return Err(
                    "the SMTP server does not offer STARTTLS, which smtp_url requires (tls=required)"
                        .to_owned(),
                );
            }
        }
        if let Some((user, password)) = &self.url.credentials {
            if !conn.is_encrypted() {
                return Err("the SMTP server does not offer STARTTLS: the password is not sent over a plain connection (use smtps:// or a server with STARTTLS)".to_owned());
            }
            let credentials = Credentials::new(user.clone(), password.expose().to_owned());
            conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
                .await
                .map_err(|e| describe("the SMTP server refused the login", &e))?;
        }
        conn.send(message.envelope(), &message.formatted())
            .await
            .map_err(|e| describe("the SMTP server refused the message", &e))?;
        Ok(())
    }
}

/// What TLS trusts: `ca_file`'s certificates only, else the built-in public roots.
fn tls_parameters(host: &str, ca_file: Option<&Path>) -> Result<TlsParameters, String> {
    let mut builder = TlsParameters::builder(host.to_owned());
    if let Some(ca_file) = ca_file {
        let pem = read_ca_bundle(ca_file)?;
        let certificate =
            Certificate::from_pem(&pem).map_err(|e| format!("`{}`: {e}", ca_file.display()))?;
        builder = builder
            .certificate_store(CertificateStore::None)
            .add_root_certificate(certificate);
    }
    builder
        .build_rustls()
        .map_err(|e| format!("cannot set up TLS for the SMTP server: {e}"))
}

/// A header value on one line: control characters (a line break in an entity's name)
/// become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `what` and the innermost cause of a lettre error (e.g. "Connection refused (os error
/// 111)", "invalid peer certificate: UnknownIssuer"), or the server's answer.
fn describe(what: &str, e: &lettre::transport::smtp::Error) -> String {
    let mut root: Option<&dyn std::error::Error> = None;
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        root = Some(cause);
        next = cause.source();
    }
    match root {
        Some(cause) => format!("{what}: {e}: {cause}"),
        None => format!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> SmtpUrl {
        SmtpUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn schemes_ports_and_tls() {
        let u = parsed("smtp://mail.example.com");
        assert_eq!(
            (u.security, u.host.as_str(), u.port),
            (Security::StartTlsIfOffered, "mail.example.com", 25)
        );
        assert!(u.credentials.is_none());
        let u = parsed("smtp://mail.example.com:2525?tls=required");
        assert_eq!((u.security, u.port), (Security::StartTlsRequired, 2525));
        let u = parsed("smtps://127.0.0.1/");
        assert_eq!(
            (u.security, u.host.as_str(), u.port),
            (Security::Implicit, "127.0.0.1", 465)
        );
        let u = parsed("smtps://[::1]:1465");
        assert_eq!((u.host.as_str(), u.port), ("::1", 1465));
    }

    #[test]
    fn credentials_are_decoded_and_never_shown() {
        let u = parsed("smtps://alerts%40corp:p%40ss%3Aw0rd@smtp.example.com");
        let (user, password) = u.credentials.clone().unwrap();
        assert_eq!(user, "alerts@corp");
        assert_eq!(password.expose(), "p@ss:w0rd");
        let debug = format!("{u:?}");
        assert!(
            !debug.contains("p@ss") && !debug.contains("p%40ss"),
            "{debug}"
        );
        assert!(debug.contains("alerts@corp"), "{debug}");
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        let cases = [
            ("https://mail.example.com", "smtp://"),
            ("smtp://", "no host"),
            ("smtp://u:hunter2@h/x", "no path"),
            ("smtp://h?tls=maybe", "tls=required"),
            ("smtp://h?starttls=1", "unknown parameter `starttls`"),
            ("smtp://u@h", "needs a password"),
            ("smtp://:hunter2@h", "needs a user"),
            ("not a url hunter2", "not a URL"),
            ("smtp://u:hunter2@h:99999", "not a URL"),
        ];
        for (url, expected) in cases {
            let e = SmtpUrl::parse(url).unwrap_err();
            assert!(e.contains(expected), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
    }

    #[test]
    fn mailboxes() {
        assert_eq!(
            mailbox("a@example.com").unwrap().email.to_string(),
            "a@example.com"
        );
        let m = mailbox("Budget Alerts <alerts@example.com>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Budget Alerts"));
        assert!(mailbox("nobody").unwrap_err().contains("`nobody`"));
        assert!(mailbox("").is_err());
    }

    #[test]
    fn subjects_stay_on_one_line() {
        assert_eq!(one_line("team \"a\r\nBcc: x@y\""), "team \"a  Bcc: x@y\"");
    }
}
