//! TLS configuration from PEM files: the server's certificate chain and key, and the optional CA
//! that client certificates must chain to (mutual TLS). Built with the aws-lc-rs provider named
//! explicitly, so the process-wide default provider (or two compiled in) never matters.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};

use super::SecurityError;

/// The PEM files of the server's TLS identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to; None: no client certificates asked.
    pub client_ca: Option<PathBuf>,
}

/// The configurations handshakes use: gRPC speaks HTTP/2 only, the admin endpoint HTTP/1.1 only.
#[derive(Clone)]
pub struct TlsConfigs {
    pub grpc: Arc<ServerConfig>,
    pub http: Arc<ServerConfig>,
}

/// The crypto provider of every TLS configuration of the binary.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every CERTIFICATE block of a PEM file (at least one).
pub fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| SecurityError::Pem {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(SecurityError::NoPemItem {
            what,
            path: path.to_path_buf(),
            expected: "CERTIFICATE block",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, SecurityError> {
    let what = "TLS private key";
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => SecurityError::NoPemItem {
            what,
            path: path.to_path_buf(),
            expected: "PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block",
        },
        source => SecurityError::Pem {
            what,
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Reads the files and builds both configurations. Every failure names the file at fault.
pub fn load(files: &TlsFiles) -> Result<TlsConfigs, SecurityError> {
    let provider = provider();
    let chain = certificates("TLS certificate", &files.cert)?;
    let key = private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| SecurityError::Rustls {
            context: "the TLS protocol versions".into(),
            source,
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("client CA certificate", ca)? {
                roots.add(cert).map_err(|source| SecurityError::Rustls {
                    context: format!("the client CA certificate in {}", ca.display()),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| SecurityError::ClientCa {
                    path: ca.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|source| {
        let context = match source {
            rustls::Error::InconsistentKeys(_) => format!(
                "the private key in {} does not belong to the certificate in {}",
                files.key.display(),
                files.cert.display()
            ),
            _ => format!(
                "the certificate in {} with the key in {}",
                files.cert.display(),
                files.key.display()
            ),
        };
        SecurityError::Rustls { context, source }
    })?;
    let with_alpn = |protocol: &[u8]| {
        let mut c = config.clone();
        c.alpn_protocols = vec![protocol.to_vec()];
        Arc::new(c)
    };
    Ok(TlsConfigs {
        grpc: with_alpn(b"h2"),
        http: with_alpn(b"http/1.1"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn every_bad_file_is_named_in_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = write(d, "a.crt", &a.cert.pem());
        let key = write(d, "a.key", &a.signing_key.serialize_pem());
        let other_key = write(d, "b.key", &b.signing_key.serialize_pem());
        let garbage = write(d, "garbage.pem", "hello\n");
        let missing = d.join("missing.pem");
        let files = |cert: &Path, key: &Path, ca: Option<&Path>| TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: ca.map(Path::to_path_buf),
        };
        let ok = load(&files(&cert, &key, Some(&cert))).unwrap();
        assert_eq!(ok.grpc.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(ok.http.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let cases = [
            (
                files(&missing, &key, None),
                vec!["TLS certificate", "missing.pem"],
            ),
            (
                files(&garbage, &key, None),
                vec!["garbage.pem", "CERTIFICATE"],
            ),
            (
                files(&cert, &garbage, None),
                vec!["garbage.pem", "PRIVATE KEY"],
            ),
            (
                files(&cert, &other_key, None),
                vec!["b.key", "does not belong", "a.crt"],
            ),
            (
                files(&cert, &key, Some(&missing)),
                vec!["client CA", "missing.pem"],
            ),
        ];
        for (f, wants) in cases {
            let e = load(&f).err().expect("refused").to_string();
            for want in wants {
                assert!(e.contains(want), "{f:?}: {e}");
            }
        }
    }
}
