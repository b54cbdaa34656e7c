//! TLS set-up for Switchboard, from PEM files to ready rustls configs.
//!
//! Used in three places: the message server's `wss://` listener
//! ([`server_config`]), the message server's link client to the relay
//! ([`client_config`] + [`server_name`]) and the relay's link acceptor
//! ([`server_config`]). It lives in its own crate because `shared` does no
//! I/O and both binaries need it.
//!
//! Loading happens once, at start-up; a bad file is a [`TlsError`] that
//! names the file and the reason, so the operator can fix it before any
//! client connects. Handshakes themselves are the callers' business and
//! happen inside each connection's task (a failed handshake is that
//! connection's error, never the accept loop's):
//!
//! ```no_run
//! # async fn demo(tcp: tokio::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! let acceptor = tls_config::TlsAcceptor::from(tls_config::server_config(
//!     Path::new("cert.pem"),
//!     Path::new("key.pem"),
//! )?);
//! let _tls = acceptor.accept(tcp).await?;
//! # Ok(()) }
//! ```
//!
//! The crypto provider is *ring*, chosen explicitly per config (not through
//! rustls' process-wide default), so no start-up call is needed and another
//! crate enabling a second provider cannot make config building panic.
//! Protocol versions are rustls' safe defaults (TLS 1.2 and 1.3).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use rustls;
pub use rustls_pki_types::ServerName;
pub use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// Why TLS could not be set up. Each variant names the file it is about,
/// and its message includes the underlying cause (which is therefore not
/// also exposed as `source()`, so `{:#}` chains do not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate file is missing, unreadable or not PEM.
    #[error("cannot read certificates from {path}: {cause}")]
    CertFile {
        /// The file.
        path: PathBuf,
        /// What went wrong reading or decoding it.
        cause: rustls_pki_types::pem::Error,
    },
    /// A certificate file holds no `CERTIFICATE` block.
    #[error("no certificate found in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The private key file is missing, unreadable, or holds no PKCS#8,
    /// PKCS#1 or SEC1 key.
    #[error("cannot read a private key from {path}: {cause}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong reading or decoding it.
        cause: rustls_pki_types::pem::Error,
    },
    /// A CA file's certificate cannot serve as a trust anchor.
    #[error("certificate in {path} is not a usable trust anchor: {cause}")]
    TrustAnchor {
        /// The file.
        path: PathBuf,
        /// Why rustls refused it.
        cause: rustls::Error,
    },
    /// The certificates and key read fine but rustls refused them together
    /// (for instance the key does not belong to the certificate).
    #[error("certificate {cert} and key {key} do not make a tls server: {cause}")]
    ServerConfig {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why rustls refused them.
        cause: rustls::Error,
    },
    /// rustls refused to build a config with its defaults (a provider
    /// without the default protocol versions; not expected with *ring*).
    #[error("tls set-up failed: {0}")]
    Setup(rustls::Error),
    /// A host name (or IP address) that cannot be checked against a
    /// certificate.
    #[error("{0:?} is not a valid tls server name")]
    ServerName(String),
}

/// The crypto provider every config here uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every `CERTIFICATE` block of a PEM file, in order (leaf first for a
/// chain). An empty result is an error: a file with none is a mistake.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let cert_err = |cause| TlsError::CertFile {
        path: path.to_owned(),
        cause,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(cert_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|cause| TlsError::KeyFile {
        path: path.to_owned(),
        cause,
    })
}

/// A server config from a PEM certificate chain (leaf first) and its PEM
/// private key. No client certificates are asked for: clients authenticate
/// with tokens, servers on the link with the link secret.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let private_key = load_key(key)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|cause| TlsError::ServerConfig {
            cert: cert.to_owned(),
            key: key.to_owned(),
            cause,
        })?;
    Ok(Arc::new(config))
}

/// A client config trusting exactly the certificates in `ca` (a CA, or the
/// peer's own self-signed certificate), and not the system's roots: the
/// relay link is a private network, and its peer is known.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|cause| TlsError::TrustAnchor {
            path: ca.to_owned(),
            cause,
        })?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against: a DNS name
/// (`relay.internal`) or an IP address (`127.0.0.1`, `::1`; the certificate
/// then needs that IP in its subject alternative names). Takes a bare host,
/// not `host:port`.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use std::fs;
    use tempfile::TempDir;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// PEM files made at test time: a CA, a leaf it signed, and a
    /// self-signed certificate, each with its key.
    struct Pki {
        dir: TempDir,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let pki = Pki { dir };

            let ca_key = KeyPair::generate().unwrap();
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca_cert = ca_params.self_signed(&ca_key).unwrap();
            pki.write("ca.pem", &ca_cert.pem());
            let issuer = Issuer::new(ca_params, ca_key);

            let leaf_key = KeyPair::generate().unwrap();
            let leaf_params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap();
            let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
            pki.write("leaf.pem", &leaf.pem());
            pki.write("chain.pem", &format!("{}{}", leaf.pem(), ca_cert.pem()));
            pki.write("leaf.key", &leaf_key.serialize_pem());

            let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            pki.write("self.pem", &other.cert.pem());
            pki.write("self.key", &other.signing_key.serialize_pem());
            pki
        }

        fn write(&self, name: &str, contents: &str) {
            fs::write(self.path(name), contents).unwrap();
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    /// One TLS round trip over loopback: the client says ping, the server
    /// answers pong. Returns the client side's error, if any.
    async fn round_trip(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> Result<(), std::io::Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ping");
            tls.write_all(b"pong").await?;
            tls.shutdown().await?;
            Ok::<_, std::io::Error>(())
        });

        let tcp = TcpStream::connect(addr).await?;
        let connector = TlsConnector::from(client);
        let mut tls = connector.connect(server_name(name).unwrap(), tcp).await?;
        tls.write_all(b"ping").await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        assert_eq!(buf, b"pong");
        server_task.await.unwrap()?;
        Ok(())
    }

    #[tokio::test]
    async fn handshake_with_a_ca_signed_chain_by_name_and_by_ip() {
        let pki = Pki::new();
        let server = server_config(&pki.path("chain.pem"), &pki.path("leaf.key")).unwrap();
        let client = client_config(&pki.path("ca.pem")).unwrap();
        round_trip(server.clone(), client.clone(), "localhost")
            .await
            .unwrap();
        round_trip(server, client, "127.0.0.1").await.unwrap();
    }

    #[tokio::test]
    async fn handshake_trusting_a_self_signed_certificate_directly() {
        let pki = Pki::new();
        let server = server_config(&pki.path("self.pem"), &pki.path("self.key")).unwrap();
        let client = client_config(&pki.path("self.pem")).unwrap();
        round_trip(server, client, "localhost").await.unwrap();
    }

    #[tokio::test]
    async fn a_client_trusting_another_ca_refuses_the_server() {
        let pki = Pki::new();
        let server = server_config(&pki.path("self.pem"), &pki.path("self.key")).unwrap();
        let client = client_config(&pki.path("ca.pem")).unwrap();
        let err = round_trip(server, client, "localhost").await.unwrap_err();
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_name_the_certificate_does_not_carry_is_refused() {
        let pki = Pki::new();
        let server = server_config(&pki.path("chain.pem"), &pki.path("leaf.key")).unwrap();
        let client = client_config(&pki.path("ca.pem")).unwrap();
        let err = round_trip(server, client, "relay.example")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let pki = Pki::new();
        let err = server_config(&pki.path("nope.pem"), &pki.path("leaf.key")).unwrap_err();
        assert!(matches!(err, TlsError::CertFile { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.pem"), "{err}");

        let err = server_config(&pki.path("leaf.pem"), &pki.path("nope.key")).unwrap_err();
        assert!(matches!(err, TlsError::KeyFile { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.key"), "{err}");

        let err = client_config(&pki.path("nope.pem")).unwrap_err();
        assert!(matches!(err, TlsError::CertFile { .. }), "{err:?}");
    }

    #[test]
    fn files_with_the_wrong_contents_are_refused() {
        let pki = Pki::new();
        // A key where a certificate should be, and the other way round.
        let err = server_config(&pki.path("leaf.key"), &pki.path("leaf.key")).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        let err = server_config(&pki.path("leaf.pem"), &pki.path("leaf.pem")).unwrap_err();
        assert!(matches!(err, TlsError::KeyFile { .. }), "{err:?}");
        // Not PEM at all.
        pki.write("junk.pem", "hello\n");
        let err = client_config(&pki.path("junk.pem")).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let pki = Pki::new();
        let err = server_config(&pki.path("leaf.pem"), &pki.path("self.key")).unwrap_err();
        assert!(matches!(err, TlsError::ServerConfig { .. }), "{err:?}");
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("relay.internal"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("not a name"),
            Err(TlsError::ServerName(_))
        ));
    }
}
