//! A throwaway mesh CA that issues workload certificates the way istiod does:
//! the workload's SPIFFE ID as the URI SAN, usable for server and client
//! authentication. Made with the `openssl` command line in a scratch
//! directory, removed when the [`Pki`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ScratchDir;

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Pki {
    dir: ScratchDir,
    pub ca: PathBuf,
    ca_key: PathBuf,
}

fn openssl(args: &[&str], paths: &[&Path]) {
    let output = Command::new("openssl")
        .args(args)
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} {paths:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

const EC_KEY: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

impl Pki {
    pub fn new() -> Pki {
        let dir = ScratchDir::new("pki");
        let ca = dir.path().join("ca.pem");
        let ca_key = dir.path().join("ca-key.pem");
        openssl(
            &[
                &["req", "-x509", "-nodes", "-days", "1"][..],
                &EC_KEY,
                &[
                    "-subj",
                    "/O=cluster.local",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout",
                ],
            ]
            .concat(),
            &[&ca_key, Path::new("-out"), &ca],
        );
        Pki { dir, ca, ca_key }
    }

    /// A workload certificate with these subject alternative names, in
    /// openssl's syntax (`URI:spiffe://cluster.local/ns/default/sa/sleep`,
    /// `IP:127.0.0.1`), signed by the CA.
    pub fn issue(&self, name: &str, subject_alt_names: &[&str]) -> Identity {
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}-key.pem"));
        let mut args: Vec<String> = ["req", "-x509", "-nodes", "-days", "1"]
            .iter()
            .chain(&EC_KEY)
            .map(|s| s.to_string())
            .collect();
        args.extend(["-subj".to_owned(), "/O=cluster.local".to_owned()]);
        if !subject_alt_names.is_empty() {
            args.extend([
                "-addext".to_owned(),
                format!("subjectAltName={}", subject_alt_names.join(",")),
            ]);
        }
        args.extend(
            [
                "-addext",
                "basicConstraints=CA:FALSE",
                "-addext",
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "-addext",
                "extendedKeyUsage=serverAuth,clientAuth",
                "-CA",
            ]
            .map(str::to_owned),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(
            &args,
            &[
                &self.ca,
                Path::new("-CAkey"),
                &self.ca_key,
                Path::new("-keyout"),
                &key,
                Path::new("-out"),
                &cert,
            ],
        );
        Identity { cert, key }
    }

    /// A mesh workload's certificate: `spiffe://<principal>` as its URI SAN,
    /// and 127.0.0.1, so that clients on loopback can verify it as a server.
    pub fn workload(&self, name: &str, principal: &str) -> Identity {
        self.issue(
            name,
            &[&format!("URI:spiffe://{principal}"), "IP:127.0.0.1"],
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
