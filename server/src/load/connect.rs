//! How `lambdarec load` reaches the server: plaintext or TLS (`https://` targets, a CA file, an
//! optional client certificate for mutual TLS, an optional name to verify), and the bearer token
//! sent with every call.

use std::path::PathBuf;
use std::time::Duration;

use lambdarec_proto::v1::recommender_client::RecommenderClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::LoadError;

/// The client side of TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificate(s) the server's certificate must chain to; None: the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and its key, for servers that ask for one (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must hold; None: the target's host.
    pub domain: Option<String>,
}

/// Sends `authorization: Bearer <token>` with every call (nothing without a token).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Checks the token can travel as metadata (printable ASCII, no spaces).
    pub fn new(token: Option<&str>) -> Result<Self, LoadError> {
        let Some(token) = token else {
            return Ok(Bearer(None));
        };
        let printable = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic());
        let value = printable
            .then(|| MetadataValue::try_from(format!("Bearer {token}")).ok())
            .flatten()
            .ok_or_else(|| {
                LoadError::Options("--token must be printable ASCII without spaces".into())
            })?;
        Ok(Bearer(Some(value)))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The client type of a load run.
pub type Client = RecommenderClient<InterceptedService<Channel, Bearer>>;

fn read(flag: &str, path: &PathBuf) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path)
        .map_err(|e| LoadError::Options(format!("cannot read {flag} {}: {e}", path.display())))
}

/// The endpoint of `target` (`host:port`, `http://…` or `https://…`): TLS when the target is
/// `https://` or `tls` is given (a bare `host:port` then becomes `https://`).
pub fn endpoint(target: &str, tls: Option<&ClientTls>) -> Result<(String, Endpoint), LoadError> {
    let url = match (target.contains("://"), tls.is_some()) {
        (true, _) => target.to_string(),
        (false, false) => format!("http://{target}"),
        (false, true) => format!("https://{target}"),
    };
    if url.starts_with("http://") && tls.is_some() {
        return Err(LoadError::Options(format!(
            "--tls-ca, --tls-cert and --tls-domain need an https:// target, got {url}"
        )));
    }
    let connect_err = |source| LoadError::Connect {
        target: url.clone(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(connect_err)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let default = ClientTls::default();
        let tls = tls.unwrap_or(&default);
        let mut config = ClientTlsConfig::new();
        config = match &tls.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &tls.identity {
            let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
            config = config.identity(identity);
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(config).map_err(connect_err)?;
    }
    Ok((url, endpoint))
}

/// Opens `connections` connections to `target`, each a client sending `token`.
pub async fn connect(
    target: &str,
    tls: Option<&ClientTls>,
    token: Option<&str>,
    connections: usize,
) -> Result<(String, Vec<Client>), LoadError> {
    let bearer = Bearer::new(token)?;
    let (url, endpoint) = endpoint(target, tls)?;
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| LoadError::Connect {
                target: url.clone(),
                source,
            })?;
        let client = RecommenderClient::with_interceptor(channel, bearer.clone());
        clients.push(client.max_decoding_message_size(64 << 20));
    }
    Ok((url, clients))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tokens_and_plaintext_targets_with_tls_flags_are_refused() {
        assert!(Bearer::new(None).unwrap().0.is_none());
        assert!(Bearer::new(Some("abc-DEF_1.2")).unwrap().0.is_some());
        for bad in ["", "a b", "é", "a\nb"] {
            let e = Bearer::new(Some(bad)).unwrap_err();
            assert!(e.to_string().contains("--token"), "{bad:?}: {e}");
        }
        let tls = ClientTls::default();
        let e = endpoint("http://127.0.0.1:1", Some(&tls)).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        let (url, _) = endpoint("127.0.0.1:1", None).unwrap();
        assert_eq!(url, "http://127.0.0.1:1");
        let missing = ClientTls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..ClientTls::default()
        };
        let e = endpoint("127.0.0.1:1", Some(&missing)).unwrap_err();
        assert!(
            e.to_string().contains("--tls-ca /nonexistent/ca.pem"),
            "{e}"
        );
    }
}
