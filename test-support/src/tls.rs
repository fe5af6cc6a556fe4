//! Certificates generated at test time (rcgen, on ring): a test CA, a
//! server certificate it signed for `127.0.0.1` and `localhost`, a client
//! certificate it signed, and a second, unrelated CA (the wrong one), all
//! written as PEM files into a directory.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// The PEM files of one test PKI.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// The CA that signed the server's and the client's certificates.
    pub ca: PathBuf,
    /// Another CA, which signed nothing here: trusting it instead of
    /// [`ca`](Self::ca) must fail.
    pub wrong_ca: PathBuf,
    /// The server's certificate, for `127.0.0.1` and `localhost`.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// A client certificate signed by [`ca`](Self::ca).
    pub client_cert: PathBuf,
    /// The client certificate's private key.
    pub client_key: PathBuf,
}

impl TestCertificates {
    /// Generate them into `dir` (created if missing); panics if it cannot.
    pub fn generate(dir: &Path) -> Self {
        Self::try_generate(dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`generate`](Self::generate), with an error instead of a panic.
    pub fn try_generate(dir: &Path) -> Result<Self, String> {
        let fail = |e: rcgen::Error| format!("generating test certificates: {e}");
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |name: &str, pem: String| -> Result<PathBuf, String> {
            let path = dir.join(name);
            std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(path)
        };
        let ca = certificate_authority("laminar test CA").map_err(fail)?;
        let wrong = certificate_authority("laminar wrong CA").map_err(fail)?;
        let (server_cert, server_key) =
            leaf(&ca, &["127.0.0.1", "localhost"], "redis-server").map_err(fail)?;
        let (client_cert, client_key) = leaf(&ca, &[], "laminar client").map_err(fail)?;
        Ok(Self {
            ca: write("ca.pem", ca.pem())?,
            wrong_ca: write("wrong-ca.pem", wrong.pem())?,
            server_cert: write("server.pem", server_cert)?,
            server_key: write("server.key", server_key)?,
            client_cert: write("client.pem", client_cert)?,
            client_key: write("client.key", client_key)?,
        })
    }
}

fn certificate_authority(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate()?)
}

/// A certificate for `names` signed by `ca`, and its key, as PEM.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    common_name: &str,
) -> Result<(String, String), rcgen::Error> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, ca)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let certificates = TestCertificates::generate(dir.path());
        for path in [
            &certificates.ca,
            &certificates.wrong_ca,
            &certificates.server_cert,
            &certificates.client_cert,
        ] {
            let pem = std::fs::read_to_string(path).unwrap();
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        }
        let key = std::fs::read_to_string(&certificates.server_key).unwrap();
        assert!(key.contains("PRIVATE KEY"), "{key}");
    }
}
