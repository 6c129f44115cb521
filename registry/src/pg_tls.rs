//! TLS to PostgreSQL, asked for with libpq's connection parameters:
//! - `sslmode`: `disable`, `prefer` (the default, as in libpq), `require`, `verify-ca` or
//!   `verify-full`;
//! - `sslrootcert`: the CA certificates (PEM) the server's certificate must chain to;
//! - `sslcert` and `sslkey`: a client certificate and its key (PEM), for `cert` authentication.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and no certificate files, so
//! [`split`] takes these parameters out of the connection string, leaves the rest to it, and
//! [`Connector`] does the TLS with rustls (ring provider).
//!
//! What each mode checks, as in libpq:
//! - `prefer`: TLS when the server offers it, plain otherwise; the certificate is not checked
//!   unless `sslrootcert` is given;
//! - `require`: TLS or no connection; the certificate is not checked unless `sslrootcert` is
//!   given, and then it must chain to it (libpq's `verify-ca`);
//! - `verify-ca`: TLS, and the certificate chains to `sslrootcert`;
//! - `verify-full`: that, and the certificate names the host connected to.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::Socket;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq's `allow` tries plain first; nothing here needs it.
            other => {
                return Err(format!(
                    "sslmode '{other}' is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    /// The mode tokio-postgres is given: it only decides whether TLS is tried and required.
    fn driver(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require | Self::VerifyCa | Self::VerifyFull => "require",
        }
    }
}

/// What a connection string asks of TLS.
#[derive(Debug, PartialEq, Eq)]
struct TlsParams {
    mode: SslMode,
    root_cert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// Splits a connection string (a `postgres://` URL or libpq's `key=value` form) into the
/// string tokio-postgres is given, with `sslmode` mapped onto the modes it knows and the
/// certificate files taken out, and the TLS parameters. The error names the parameter.
fn split(conn: &str) -> Result<(String, TlsParams), String> {
    // Each pair as written, then its key and value; what goes before them, and between.
    let (base, pairs, separator) =
        if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
            let (base, query) = conn.split_once('?').unwrap_or((conn, ""));
            let pairs = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    Ok((
                        pair.to_owned(),
                        percent_decode(key)?,
                        percent_decode(value)?,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            (format!("{base}?"), pairs, "&")
        } else {
            (String::new(), key_values(conn)?, " ")
        };
    let mut taken = Taken::default();
    let mut kept = Vec::new();
    for (raw, key, value) in pairs {
        if !taken.take(&key, &value)? {
            kept.push(raw);
        }
    }
    kept.push(format!("sslmode={}", taken.mode()?.driver()));
    Ok((format!("{base}{}", kept.join(separator)), taken.finish()?))
}

/// The TLS parameters found so far.
#[derive(Default)]
struct Taken {
    mode: Option<String>,
    root_cert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl Taken {
    /// Keeps `key` if it is one of the TLS parameters; false when it is not.
    fn take(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let slot = match key {
            "sslmode" => {
                self.mode = Some(value.to_owned());
                return Ok(true);
            }
            "sslrootcert" => &mut self.root_cert,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            _ => return Ok(false),
        };
        if value.is_empty() {
            return Err(format!("{key} is empty: give the path of a PEM file"));
        }
        *slot = Some(PathBuf::from(value));
        Ok(true)
    }

    fn mode(&self) -> Result<SslMode, String> {
        self.mode
            .as_deref()
            .map_or(Ok(SslMode::Prefer), SslMode::parse)
    }

    fn finish(self) -> Result<TlsParams, String> {
        let mode = self.mode()?;
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && self.root_cert.is_none() {
            let mode = self.mode.unwrap_or_default();
            return Err(format!(
                "sslmode={mode} needs sslrootcert: the path of the CA certificates (PEM) that signed the server's certificate"
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err("sslcert and sslkey go together: a client certificate and its key".into());
        }
        Ok(TlsParams {
            mode,
            root_cert: self.root_cert,
            cert: self.cert,
            key: self.key,
        })
    }
}

/// `%XX` escapes of a URL's query decoded (and `+` kept, as libpq does).
fn percent_decode(text: &str) -> Result<String, String> {
    infergate_config::percent_decode(text)
        .ok_or_else(|| format!("invalid percent-encoding in '{text}'"))
}

/// libpq's `key=value` form: pairs separated by whitespace, a value in single quotes when it
/// holds spaces, with `\'` and `\\` escaped. Each pair as written, then its key and value.
fn key_values(conn: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = conn.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return Ok(pairs);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next().is_none_or(|(_, c)| c != '=') {
            return Err(format!("'{key}' in the connection string has no '=value'"));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err(format!("unterminated quoted value of '{key}'")),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated quoted value of '{key}'")),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                value.push(c);
            }
        }
        let end = chars.peek().map_or(conn.len(), |&(i, _)| i);
        pairs.push((conn[start..end].trim_end().to_owned(), key, value));
    }
}

/// A connection string made ready for tokio-postgres: the string it is given, and the TLS
/// connector (none with `sslmode=disable`).
pub(crate) struct Target {
    driver_url: String,
    tls: Option<Connector>,
}

impl Target {
    /// [`split`], and the certificate files read; the error names the parameter or file.
    pub(crate) fn parse(conn: &str) -> Result<Self, String> {
        let (driver_url, params) = split(conn)?;
        let tls = match params.mode {
            SslMode::Disable => None,
            _ => Some(Connector::new(&params)?),
        };
        Ok(Self { driver_url, tls })
    }

    /// A new connection (blocking: not on a tokio thread, see `sync::off_runtime`).
    pub(crate) fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        match &self.tls {
            Some(tls) => postgres::Client::connect(&self.driver_url, tls.clone()),
            None => postgres::Client::connect(&self.driver_url, postgres::NoTls),
        }
    }
}

/// rustls for tokio-postgres, built from the [`TlsParams`].
#[derive(Clone)]
struct Connector {
    config: Arc<rustls::ClientConfig>,
}

impl Connector {
    /// Reads the certificate files; the error names the file and what is wrong with it.
    fn new(params: &TlsParams) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = match &params.root_cert {
            None => None,
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certs(path)? {
                    roots.add(cert).map_err(|e| {
                        format!("invalid CA certificate in {}: {e}", path.display())
                    })?;
                }
                let verifier = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| format!("cannot use {} as sslrootcert: {e}", path.display()))?;
                Some(verifier)
            }
        };
        let verifier = Arc::new(Verifier {
            chain,
            check_name: params.mode == SslMode::VerifyFull,
            provider: Arc::clone(&provider),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls protocol versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&params.cert, &params.key) {
            (Some(cert), Some(key)) => {
                let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    format!("cannot read a private key from {}: {e}", key.display())
                })?;
                builder
                    .with_client_auth_cert(certs(cert)?, private)
                    .map_err(|e| {
                        format!(
                            "{} and {} are not a certificate and its key: {e}",
                            cert.display(),
                            key.display()
                        )
                    })?
            }
            _ => builder.with_no_client_auth(),
        };
        // PostgreSQL 17 asks for this ALPN name with `sslnegotiation=direct`; older servers
        // ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

impl MakeTlsConnect<Socket> for Connector {
    type Stream = Stream;
    type TlsConnect = Connect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, Self::Error> {
        Ok(Connect {
            config: Arc::clone(&self.config),
            name: ServerName::try_from(domain)?.to_owned(),
        })
    }
}

/// One connection's handshake, to the host named.
struct Connect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for Connect {
    type Stream = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move { Ok(Stream(connector.connect(self.name, socket).await?)) })
    }
}

/// The encrypted connection.
struct Stream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for Stream {
    /// No channel binding: SCRAM authenticates without `-PLUS`, as libpq's default `prefer`
    /// falls back to when it cannot bind.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// What the server's certificate must be, by mode:
/// - `chain` absent (`prefer` and `require` without `sslrootcert`): anything; the connection
///   is encrypted, not authenticated;
/// - `chain` present: it chains to `sslrootcert`; with `check_name` (`verify-full`) it also
///   names the host. rustls checks the chain first, so a name error means the chain passed.
///
/// Either way the handshake's signatures are checked against the certificate presented.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let algorithms = &self.provider.signature_verification_algorithms;
        algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mode: SslMode) -> TlsParams {
        TlsParams {
            mode,
            root_cert: None,
            cert: None,
            key: None,
        }
    }

    /// `conn` splits into `rest` for tokio-postgres and `tls`.
    fn splits(conn: &str, rest: &str, tls: TlsParams) {
        assert_eq!(split(conn), Ok((rest.to_owned(), tls)), "{conn}");
    }

    #[test]
    fn urls_lose_the_tls_parameters_and_keep_the_rest() {
        splits(
            "postgres://u:pw@db:5432/reg?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&connect_timeout=5",
            "postgres://u:pw@db:5432/reg?application_name=x&connect_timeout=5&sslmode=require",
            TlsParams {
                root_cert: Some("/etc/ca dir/ca.pem".into()),
                ..params(SslMode::VerifyFull)
            },
        );
        // libpq's default is prefer; disable stays disable.
        let prefer = "postgresql://db/reg?sslmode=prefer";
        splits("postgresql://db/reg", prefer, params(SslMode::Prefer));
        let disable = "postgres://db/reg?sslmode=disable";
        splits(disable, disable, params(SslMode::Disable));
        splits(
            "postgres://db/reg?sslmode=require&sslcert=c.pem&sslkey=c.key",
            "postgres://db/reg?sslmode=require",
            TlsParams {
                cert: Some("c.pem".into()),
                key: Some("c.key".into()),
                ..params(SslMode::Require)
            },
        );
    }

    #[test]
    fn key_value_strings_lose_the_tls_parameters_and_keep_the_rest() {
        splits(
            "host=db  dbname = reg sslmode=verify-ca sslrootcert='/etc/my \\'ca\\'.pem' password='a b'",
            "host=db dbname = reg password='a b' sslmode=require",
            TlsParams {
                root_cert: Some("/etc/my 'ca'.pem".into()),
                ..params(SslMode::VerifyCa)
            },
        );
        let prefer = "host=db user=me sslmode=prefer";
        splits("host=db user=me", prefer, params(SslMode::Prefer));
    }

    #[test]
    fn bad_tls_parameters_are_named() {
        let err = |conn: &str| split(conn).unwrap_err();
        assert_eq!(
            err("postgres://db/reg?sslmode=allow"),
            "sslmode 'allow' is not one of disable, prefer, require, verify-ca, verify-full"
        );
        assert_eq!(
            err("host=db sslmode=verify-full"),
            "sslmode=verify-full needs sslrootcert: the path of the CA certificates (PEM) that signed the server's certificate"
        );
        assert_eq!(
            err("postgres://db/reg?sslcert=c.pem"),
            "sslcert and sslkey go together: a client certificate and its key"
        );
        assert_eq!(
            err("postgres://db/reg?sslrootcert="),
            "sslrootcert is empty: give the path of a PEM file"
        );
        assert_eq!(
            err("postgres://db/reg?sslrootcert=%zz"),
            "invalid percent-encoding in '%zz'"
        );
        assert_eq!(
            err("host=db sslrootcert='/x"),
            "unterminated quoted value of 'sslrootcert'"
        );
        assert_eq!(
            err("host=db sslmode"),
            "'sslmode' in the connection string has no '=value'"
        );
        let missing = Connector::new(&TlsParams {
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..params(SslMode::VerifyCa)
        })
        .err()
        .unwrap();
        assert!(
            missing.starts_with("cannot read certificates from /nonexistent/ca.pem"),
            "{missing}"
        );
    }

    #[test]
    fn the_registry_refuses_bad_tls_parameters_before_connecting() {
        // Port 1: nothing listens, so only the parameters can be what the error is about.
        let err = crate::pg::PgConn::open("postgres://me:secret@127.0.0.1:1/reg?sslmode=verify-ca")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("sslmode=verify-ca needs sslrootcert"), "{err}");
        assert!(err.contains("me:***@127.0.0.1:1"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    /// Against the PostgreSQL server of `scripts/with_services.sh`: its certificate names
    /// `localhost` only and is signed by `ca.pem`.
    mod server {
        use super::super::*;

        /// The server's port, from the test URL (`postgres://infergate@127.0.0.1:PORT`).
        fn port() -> String {
            let url = crate::testing::env("REGISTRY_TEST_POSTGRES");
            url.rsplit(':').next().unwrap().to_owned()
        }

        fn tls_file(name: &str) -> String {
            format!(
                "{}/{name}",
                crate::testing::env("REGISTRY_TEST_POSTGRES_TLS")
            )
        }

        /// Connects as `PgConn` does and says whether the session is encrypted.
        fn encrypted(url: &str) -> Result<bool, String> {
            let target = Target::parse(url)?;
            crate::sync::off_runtime(|| {
                let mut client = target.connect().map_err(|e| format!("{e:?}"))?;
                let row = client
                    .query_one(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .map_err(|e| e.to_string())?;
                Ok(row.get(0))
            })
        }

        fn url(host: &str, user: &str, query: &str) -> String {
            format!("postgres://{user}@{host}:{}/postgres?{query}", port())
        }

        #[test]
        #[ignore = "needs the PostgreSQL server of scripts/with_services.sh (make test)"]
        fn each_sslmode_checks_what_libpq_checks() {
            let ca = tls_file("ca.pem");
            let other = tls_file("other-ca.pem");
            let ok = |host: &str, query: &str| {
                encrypted(&url(host, "infergate", query))
                    .unwrap_or_else(|e| panic!("{host} {query}: {e}"))
            };
            // The certificate chains to the CA and names localhost.
            assert!(ok(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}")
            ));
            // 127.0.0.1 is not its name: only verify-full minds.
            assert!(ok(
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={ca}")
            ));
            assert!(ok(
                "127.0.0.1",
                &format!("sslmode=require&sslrootcert={ca}")
            ));
            // Without a CA, require and the default prefer encrypt without checking.
            assert!(ok("127.0.0.1", "sslmode=require"));
            assert!(ok("127.0.0.1", ""));
            assert!(!ok("127.0.0.1", "sslmode=disable"));

            let refused =
                |host: &str, query: String| encrypted(&url(host, "infergate", &query)).unwrap_err();
            let name = refused("127.0.0.1", format!("sslmode=verify-full&sslrootcert={ca}"));
            assert!(name.contains("NotValidForName"), "{name}");
            for mode in ["verify-ca", "require", "prefer"] {
                let issuer = refused("localhost", format!("sslmode={mode}&sslrootcert={other}"));
                assert!(issuer.contains("UnknownIssuer"), "{mode}: {issuer}");
            }
        }

        #[test]
        #[ignore = "needs the PostgreSQL server of scripts/with_services.sh (make test)"]
        fn a_client_certificate_logs_in_where_nothing_else_does() {
            let (cert, key) = (tls_file("client.pem"), tls_file("client.key"));
            let ca = tls_file("ca.pem");
            let with_cert = url(
                "localhost",
                "infergate_cert",
                &format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"),
            );
            assert_eq!(encrypted(&with_cert), Ok(true));
            let without = encrypted(&url(
                "localhost",
                "infergate_cert",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ))
            .unwrap_err();
            assert!(without.contains("certificate"), "{without}");
            let plain =
                encrypted(&url("127.0.0.1", "infergate_cert", "sslmode=disable")).unwrap_err();
            assert!(plain.contains("rejects connection"), "{plain}");
        }

        #[test]
        #[ignore = "needs the PostgreSQL server of scripts/with_services.sh (make test)"]
        fn a_password_logs_in_with_scram_over_tls_and_without() {
            // The password is 'scram s3cret@', percent-encoded in the URL's user info.
            let user = |password: &str| format!("infergate_scram:{password}");
            let ca = tls_file("ca.pem");
            let tls = format!("sslmode=verify-full&sslrootcert={ca}");
            let right = user("scram%20s3cret%40");
            assert_eq!(encrypted(&url("localhost", &right, &tls)), Ok(true));
            assert_eq!(encrypted(&url("127.0.0.1", &right, "")), Ok(true));
            assert_eq!(
                encrypted(&url("127.0.0.1", &right, "sslmode=disable")),
                Ok(false)
            );
            // No channel binding is offered, so a URL that demands it cannot log in.
            let bind = encrypted(&url(
                "localhost",
                &right,
                &format!("{tls}&channel_binding=require"),
            ))
            .unwrap_err();
            assert!(bind.contains("channel binding"), "{bind}");
            for query in [tls.as_str(), "sslmode=disable"] {
                let wrong = encrypted(&url("localhost", &user("scram"), query)).unwrap_err();
                assert!(wrong.contains("password authentication failed"), "{wrong}");
            }
        }
    }
}
