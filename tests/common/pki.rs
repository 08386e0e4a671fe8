//! A test PKI made with the `openssl` command: a CA, a second CA that signed nothing, and
//! a server certificate from the first for `localhost` and `127.0.0.1`.

use std::path::PathBuf;
use std::process::Command;

/// Runs a command to completion; panics with its output when it fails.
pub fn run(command: &mut Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a second CA that signed nothing here, and a server certificate from the first for
/// `localhost` and `127.0.0.1` (not for `127.0.0.2`, which reaches the same servers), good
/// for TLS clients too (the nodes of a Redis Cluster present it to each other).
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let openssl = |args: &[&str], what: &str| {
            run(
                Command::new("openssl").args(args).current_dir(dir.path()),
                &format!("openssl ({what}; is the openssl command installed?)"),
            )
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        for (name, subject) in [
            ("ca", "/CN=tollgate test CA"),
            ("other-ca", "/CN=another CA"),
        ] {
            let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", subject];
            args.extend(ec);
            let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
            args.extend(["-keyout", &key, "-out", &pem]);
            openssl(&args, "a CA");
        }
        let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=localhost"];
        args.extend(ec);
        args.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(&args, "a server key");
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth, clientAuth\n",
        )
        .expect("write the extensions");
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
            "the server certificate",
        );
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    pub fn other_ca(&self) -> String {
        self.path("other-ca.pem").display().to_string()
    }
}
