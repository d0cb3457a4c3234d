//! The TLS certificate and key of `--tls-cert` / `--tls-key`.

use std::path::Path;

/// Check the TLS files up front: Pingora's rustls listener panics at start-up
/// on unreadable or mismatched files.
pub(super) fn check_tls_files(cert: &str, key: &str) -> Result<(), String> {
    use pingora_core::tls::{self as rustls, version};

    for (what, path) in [("certificate", cert), ("private key", key)] {
        if !Path::new(path).is_file() {
            return Err(format!("TLS {what} file `{path}` does not exist"));
        }
    }
    let (certs, private_key) = rustls::load_certs_and_key_files(cert, key)
        .map_err(|e| format!("cannot read TLS files `{cert}` / `{key}`: {e}"))?
        .ok_or_else(|| format!("`{cert}` holds no PEM certificate or `{key}` holds no PEM private key"))?;
    rustls::install_default_crypto_provider();
    rustls::ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| format!("TLS certificate `{cert}` and key `{key}` are unusable: {e}"))?;
    Ok(())
}
