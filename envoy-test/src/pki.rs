//! A throwaway mesh CA that issues workload certificates the way istiod does,
//! made by `envoy-test/mesh-pki.sh`, the one place that decides the
//! certificate profile for the tests and the local mesh alike: an empty
//! subject, the workload's SPIFFE ID as a critical URI SAN, usable for server
//! and client authentication. The files live in a scratch directory, removed
//! when the [`Pki`] is dropped.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{repo_root, ScratchDir};

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Pki {
    dir: ScratchDir,
    pub ca: PathBuf,
}

/// Runs `mesh-pki.sh` with these arguments.
fn mesh_pki<S: AsRef<OsStr>>(args: &[S]) {
    let output = Command::new(repo_root().join("envoy-test/mesh-pki.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run envoy-test/mesh-pki.sh");
    assert!(
        output.status.success(),
        "mesh-pki.sh {:?}: {}",
        args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Pki {
    pub fn new() -> Pki {
        let dir = ScratchDir::new("pki");
        mesh_pki(&[OsStr::new("ca"), dir.path().as_os_str()]);
        let ca = dir.path().join("ca.pem");
        Pki { dir, ca }
    }

    /// A workload certificate with these subject alternative names, in
    /// openssl's syntax (`URI:spiffe://cluster.local/ns/default/sa/sleep`,
    /// `IP:127.0.0.1`; at least one), signed by the CA.
    pub fn issue(&self, name: &str, subject_alt_names: &[&str]) -> Identity {
        let mut args = vec![
            OsStr::new("issue"),
            self.dir.path().as_os_str(),
            OsStr::new(name),
        ];
        args.extend(subject_alt_names.iter().map(OsStr::new));
        mesh_pki(&args);
        Identity {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
        }
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
