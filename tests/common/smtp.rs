//! A real SMTP server for the tests: `tests/smtp_sink.py` (aiosmtpd, from the crate's
//! `.venv`, see scripts/requirements-test.txt) on a free port of 127.0.0.1, keeping each
//! message it takes as a JSON file that [`Smtp::received`] reads back.
//!
//! [`Smtp::stop`] and [`Smtp::restart`] take it down and bring it back on the same port and
//! with the same mailbox, for tests of a server that is down for a while.

use super::envoy::free_port;
use super::pki::Pki;
use serde::Deserialize;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// How the server protects its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No TLS at all (no STARTTLS offered).
    Plain,
    /// STARTTLS offered.
    StartTls,
    /// TLS from the first byte (smtps).
    Implicit,
}

/// One message the server took.
#[derive(Debug, Clone, Deserialize)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// The message as sent: headers, a blank line, the body.
    pub data: String,
    /// Whether the session was encrypted (implicit TLS or after STARTTLS).
    pub tls: bool,
    /// The user that logged in, if any.
    pub login: Option<String>,
}

impl Received {
    /// The value of the first header `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = value.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((key, rest)) = line.split_once(':') {
                if key.eq_ignore_ascii_case(name) {
                    value = Some(rest.trim().to_owned());
                }
            }
        }
        value
    }

    /// The body (after the headers), with CRLF turned into LF.
    pub fn body(&self) -> String {
        self.data
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .unwrap_or("")
            .replace("\r\n", "\n")
    }
}

/// A running SMTP server.
pub struct Smtp {
    /// The address it listens on: 127.0.0.1 unless [`Smtp::start_on`] says otherwise.
    pub host: String,
    pub port: u16,
    mode: Mode,
    login: Option<(String, String)>,
    login_over_plain: bool,
    cert: Option<(PathBuf, PathBuf)>,
    mailbox: tempfile::TempDir,
    child: Option<Child>,
}

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join(".venv/bin/python");
    assert!(
        venv.is_file(),
        "no {} (run `.venv/bin/pip install -r scripts/requirements-test.txt`: the tests need aiosmtpd)",
        venv.display()
    );
    venv
}

impl Smtp {
    /// A server in `mode` (the TLS modes present `pki`'s server certificate).
    pub fn start(mode: Mode, pki: Option<&Pki>) -> Smtp {
        Smtp::build(mode, pki, None, false, "127.0.0.1")
    }

    /// [`Smtp::start`] listening on `host` (e.g. 127.0.0.2, which the test certificate does
    /// not name).
    pub fn start_on(mode: Mode, pki: Option<&Pki>, host: &str) -> Smtp {
        Smtp::build(mode, pki, None, false, host)
    }

    /// A server that also takes a login, `user` with `password` only (over TLS only unless
    /// `over_plain`).
    pub fn with_login(
        mode: Mode,
        pki: Option<&Pki>,
        user: &str,
        password: &str,
        over_plain: bool,
    ) -> Smtp {
        Smtp::build(
            mode,
            pki,
            Some((user.to_owned(), password.to_owned())),
            over_plain,
            "127.0.0.1",
        )
    }

    fn build(
        mode: Mode,
        pki: Option<&Pki>,
        login: Option<(String, String)>,
        login_over_plain: bool,
        host: &str,
    ) -> Smtp {
        let cert = match mode {
            Mode::Plain => None,
            _ => {
                let pki = pki.expect("a TLS mode needs a PKI");
                Some((pki.path("server.pem"), pki.path("server.key")))
            }
        };
        let mut smtp = Smtp {
            host: host.to_owned(),
            port: free_port(),
            mode,
            login,
            login_over_plain,
            cert,
            mailbox: tempfile::tempdir().expect("a temporary directory"),
            child: None,
        };
        smtp.restart();
        smtp
    }

    /// Starts the server (again) on its port; returns once it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the SMTP server is already running");
        let mut command = Command::new(python());
        command
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_sink.py"))
            .args(["--host", &self.host])
            .args(["--port", &self.port.to_string()])
            .arg("--out")
            .arg(self.mailbox.path())
            .args([
                "--mode",
                match self.mode {
                    Mode::Plain => "plain",
                    Mode::StartTls => "starttls",
                    Mode::Implicit => "smtps",
                },
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((cert, key)) = &self.cert {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some((user, password)) = &self.login {
            command.args(["--login", &format!("{user}:{password}")]);
        }
        if self.login_over_plain {
            command.arg("--login-over-plain");
        }
        let mut child = command.spawn().expect("start tests/smtp_sink.py");
        let stdout = child.stdout.take().expect("its stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the SMTP server's first line");
        assert_eq!(
            line.trim(),
            "ready",
            "the SMTP server did not start (is aiosmtpd installed in .venv?)"
        );
        self.child = Some(child);
    }

    /// Stops the server (its port then refuses connections); the mailbox stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The messages taken so far, in the order taken.
    pub fn received(&self) -> Vec<Received> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.mailbox.path())
            .expect("read the mailbox")
            .map(|entry| entry.expect("a mailbox entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).expect("read a message");
                serde_json::from_str(&text).expect("a message as JSON")
            })
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.stop();
    }
}
