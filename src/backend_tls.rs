//! TLS to the backends (Postgres and Redis): which CA bundles are trusted, how a Postgres
//! URL's `sslmode` and `sslrootcert` are read (as libpq reads them), and what a failed
//! handshake means, said for an operator.
//!
//! A certificate that fails verification does not go away by retrying: it is a
//! configuration error, not an outage. [`failure`] tells the two apart where a backend's
//! error enters; at start a TLS failure becomes [`Misconfigured`] and `serve` refuses to
//! start (exit 64) instead of counting the backend as down.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::error::Error;
use std::path::Path;
use std::sync::Arc;

/// A backend that cannot be used as configured, found when connecting to it at start (its
/// TLS failed verification). `serve` exits 64 on it, as on a bad configuration file.
#[derive(Debug, thiserror::Error)]
#[error("{backend}: {reason}")]
pub struct Misconfigured {
    /// `database` or `redis`.
    pub backend: &'static str,
    /// Why, without any secret (URLs are redacted).
    pub reason: String,
}

/// Reads a PEM bundle of CA certificates: the file's bytes when it holds at least one
/// certificate and every one of them can serve as a trust anchor, else why not.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| format!("`{shown}` is not a PEM certificate bundle ({e})"))?;
        roots
            .add(cert)
            .map_err(|e| format!("certificate {} in `{shown}` is not usable ({e})", i + 1))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "`{shown}` holds no PEM certificate (no -----BEGIN CERTIFICATE----- block)"
        ));
    }
    Ok(pem)
}

/// What an `sslmode` asks of the server's certificate.
const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The URL to hand the Postgres driver for `url`, with its TLS parameters read as libpq
/// reads them, or why they cannot work:
///
/// - `sslmode` is one of disable, allow, prefer (the default), require, verify-ca,
///   verify-full; `sslrootcert` (when not `system`) is a readable PEM CA bundle.
/// - `sslmode=require` with an `sslrootcert` verifies the chain, like `verify-ca` (libpq
///   does so for compatibility; a CA that is given is meant to be used).
/// - `sslrootcert=system` trusts the built-in public roots and defaults to `verify-full`;
///   a weaker `sslmode` with it is refused, as libpq refuses it.
///
/// The driver's own names for the parameters (`ssl-mode`, `ssl-root-cert`, `ssl-ca`) are
/// read too. Everything else in the URL is passed on as written.
pub fn postgres_url(url: &str) -> Result<String, String> {
    let Some((head, query)) = url.split_once('?') else {
        return Ok(url.to_owned());
    };
    let (mode, root) = ssl_parameters(query);
    if let Some(mode) = &mode {
        if !SSL_MODES.contains(&mode.as_str()) {
            return Err(format!(
                "sslmode `{mode}` is not one of {}",
                SSL_MODES.join(", ")
            ));
        }
    }
    let system = root.as_deref() == Some("system");
    if let Some(root) = root.as_deref().filter(|_| !system) {
        read_ca_bundle(Path::new(root)).map_err(|e| format!("sslrootcert: {e}"))?;
    }
    let new_mode = match (mode.as_deref(), root.is_some()) {
        (Some("verify-full") | None, _) if system => "verify-full",
        (Some(weak), _) if system => {
            return Err(format!(
                "sslmode `{weak}` does not verify the server; sslrootcert=system needs verify-full"
            ))
        }
        (Some("require"), true) => "verify-ca",
        _ => return Ok(url.to_owned()),
    };
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            // The driver would read `system` as a file name; without it, it trusts the
            // built-in roots, which is what `system` asks for.
            !(is_mode(key) || (system && is_root(key)))
        })
        .map(str::to_owned)
        .collect();
    pairs.push(format!("sslmode={new_mode}"));
    Ok(format!("{head}?{}", pairs.join("&")))
}

fn is_mode(key: &str) -> bool {
    matches!(key, "sslmode" | "ssl-mode")
}

fn is_root(key: &str) -> bool {
    matches!(key, "sslrootcert" | "ssl-root-cert" | "ssl-ca")
}

/// The `sslmode` and `sslrootcert` of a URL's query, decoded.
fn ssl_parameters(query: &str) -> (Option<String>, Option<String>) {
    let mut mode = None;
    let mut root = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if is_mode(&key) {
            mode = Some(value.into_owned());
        } else if is_root(&key) {
            root = Some(value.into_owned());
        }
    }
    (mode, root)
}

/// [`failure`] for the Postgres at `url` (as given to the driver), with a hint where the
/// driver is stricter than libpq: its `verify-ca` checks the host name too (sqlx 0.8 with
/// rustls 0.23.24 and later; launchbadge/sqlx#3793).
pub fn postgres_failure(url: &str, error: &(dyn Error + 'static)) -> Option<String> {
    let tls = tls_error(error)?;
    let query = url.split_once('?').map_or("", |(_, query)| query);
    let (mode, root) = ssl_parameters(query);
    let trusted = match root {
        Some(root) => format!("sslrootcert `{root}` and the built-in public roots"),
        None => "the built-in public roots (sslrootcert can name a private CA)".to_owned(),
    };
    let mut why = describe(tls, &trusted);
    let name_mismatch = matches!(
        tls,
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. }
        )
    );
    if name_mismatch && mode.as_deref() == Some("verify-ca") {
        why.push_str(
            "; sslmode=verify-ca (also what require becomes with an sslrootcert) checks the \
             host name too in this build, so connect by a name the certificate carries",
        );
    }
    Some(why)
}

/// Why TLS to a backend failed, when `error` (or an error it wraps) is a TLS failure: the
/// server's certificate failed verification, or the handshake could not be completed.
/// `None` for everything else (a refused connection, a timeout, a server error), which is
/// an outage. `trusted` says which CAs the connection trusts, for a certificate signed by
/// another.
pub fn failure(error: &(dyn Error + 'static), trusted: &str) -> Option<String> {
    tls_error(error).map(|tls| describe(tls, trusted))
}

/// The rustls error in `error`'s chain. `io::Error` and `Arc`-wrapped errors are looked
/// into explicitly: their `source()` skips the error they wrap, which is where the drivers
/// put rustls' error.
fn tls_error<'e>(mut error: &'e (dyn Error + 'static)) -> Option<&'e rustls::Error> {
    loop {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let wrapped: Option<&'e (dyn Error + 'static)> =
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                io.get_ref().map(|inner| inner as &(dyn Error + 'static))
            } else if let Some(arc) = error.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
                Some(&**arc as &(dyn Error + 'static))
            } else {
                None
            };
        error = wrapped.or_else(|| error.source())?;
    }
}

fn describe(error: &rustls::Error, trusted: &str) -> String {
    use rustls::CertificateError as Cert;
    match error {
        rustls::Error::InvalidCertificate(cert) => {
            let why = match cert {
                Cert::UnknownIssuer => format!("its CA is not among {trusted}"),
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    format!("it is not issued for the host name the URL names ({cert})")
                }
                Cert::Expired | Cert::ExpiredContext { .. } => format!("it has expired ({cert})"),
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                    format!("it is not valid yet ({cert})")
                }
                Cert::Revoked => "it has been revoked".to_owned(),
                Cert::BadSignature => "its signature does not verify".to_owned(),
                _ => format!("it fails verification ({cert})"),
            };
            format!("the server's certificate is not trusted: {why}")
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the server refused the TLS handshake (alert {alert:?})")
        }
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => {
            format!("the TLS handshake failed ({error}): does the server speak TLS on this port?")
        }
        other => format!("the TLS handshake failed ({other})"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed CA certificate (no key kept: only its parsing is tested).
    pub(crate) const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBlzCCAT2gAwIBAgIUD2bysBtvOFrzOQBw8e2z/NoM39gwCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVdG9sbGdhdGUgdW5pdCB0ZXN0IENBMCAXDTI2MTIwNjIxMzI1
MloYDzIxMjYxMTEyMjEzMjUyWjAgMR4wHAYDVQQDDBV0b2xsZ2F0ZSB1bml0IHRl
c3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARH412T3NfdJjuv0tCrecrJ
lDewU5P1XTkrw+pWzhGHym1RRDi4ko2Y2jgMMfcHuawiHZKLN/KkAcZ62NbiaiCk
o1MwUTAdBgNVHQ4EFgQU73OfEqdZ0L4oGYnynlrYH2LDO+MwHwYDVR0jBBgwFoAU
73OfEqdZ0L4oGYnynlrYH2LDO+MwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNIADBFAiEA7cZSSyTSG0U+bxsn1KLI4DOSiBDobHaDR7tjwbWTr48CIBwRqY+k
hP0mJ70/AmFraIQHN8OOzqsbTTVrUojyOpAz
-----END CERTIFICATE-----
";

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn a_ca_bundle_must_be_readable_pem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = read_ca_bundle(&missing).unwrap_err();
        assert!(e.contains("cannot read") && e.contains("nope.pem"), "{e}");
        let key = write(
            &dir,
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let e = read_ca_bundle(Path::new(&key)).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let text = write(&dir, "text.pem", "hello\n");
        assert!(read_ca_bundle(Path::new(&text)).is_err());
        let garbled = write(
            &dir,
            "garbled.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = read_ca_bundle(Path::new(&garbled)).unwrap_err();
        assert!(e.contains("certificate 1"), "{e}");
        let ca = write(&dir, "ca.pem", CA_PEM);
        assert_eq!(read_ca_bundle(Path::new(&ca)).unwrap(), CA_PEM.as_bytes());
    }

    #[test]
    fn postgres_urls_without_tls_parameters_pass_unchanged() {
        for url in [
            "postgres://u:p@h/db",
            "postgres://u:p@h/db?options=-c%20search_path%3Dx",
            "postgres://h/db?sslmode=require",
            "postgres://h/db?sslmode=verify-full&application_name=a",
        ] {
            assert_eq!(postgres_url(url).unwrap(), url);
        }
    }

    #[test]
    fn an_unknown_sslmode_is_refused() {
        let e = postgres_url("postgres://h/db?sslmode=verify").unwrap_err();
        assert!(e.contains("`verify`") && e.contains("verify-full"), "{e}");
    }

    #[test]
    fn an_unreadable_sslrootcert_is_refused() {
        let e = postgres_url("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .unwrap_err();
        assert!(
            e.starts_with("sslrootcert: cannot read `/nonexistent/ca.pem`"),
            "{e}"
        );
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write(&dir, "ca.pem", CA_PEM);
        let url = format!("postgres://u:p@h/db?sslmode=require&sslrootcert={ca}&x=1");
        assert_eq!(
            postgres_url(&url).unwrap(),
            format!("postgres://u:p@h/db?sslrootcert={ca}&x=1&sslmode=verify-ca")
        );
    }

    #[test]
    fn sslrootcert_system_trusts_the_built_in_roots_and_needs_verify_full() {
        assert_eq!(
            postgres_url("postgres://h/db?sslrootcert=system").unwrap(),
            "postgres://h/db?sslmode=verify-full"
        );
        assert_eq!(
            postgres_url("postgres://h/db?sslmode=verify-full&sslrootcert=system&a=b").unwrap(),
            "postgres://h/db?a=b&sslmode=verify-full"
        );
        let e = postgres_url("postgres://h/db?sslmode=require&sslrootcert=system").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
    }

    #[test]
    fn only_tls_errors_are_tls_failures() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(failure(&refused, ""), None);
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let why = failure(&wrapped, "the test CAs").expect("a TLS failure");
        assert_eq!(
            why,
            "the server's certificate is not trusted: its CA is not among the test CAs"
        );
        let shared: Arc<dyn Error + Send + Sync> = Arc::new(wrapped);
        let outer = std::io::Error::other(Outer(shared));
        assert!(failure(&outer, "").is_some());
    }

    /// An error whose source is an `Arc`-wrapped error, as the Redis client builds them.
    #[derive(Debug)]
    struct Outer(Arc<dyn Error + Send + Sync>);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }
}
