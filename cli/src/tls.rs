//! The TLS options of the commands that connect (`bench`, and `resolve` when it checks
//! connections): trust, client identity and the server name to verify.

use std::path::PathBuf;

use clap::Args;

use meshless::ChannelBuilder;

use crate::error::CliError;

/// `--tls-ca`, `--tls-cert`, `--tls-key`, `--tls-server-name`. Any of them turns TLS on.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// TLS: trust the CA certificates in this PEM file (turns TLS on; without it, the
    /// platform's trust store is used).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// TLS: present the client certificate chain in this PEM file (mTLS; needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key of --tls-cert, a PEM file.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// TLS: verify this name in every server's certificate instead of the target's host
    /// (needed for `unix:` targets).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// True when any TLS option is given.
    pub fn enabled(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_server_name.is_some()
    }

    /// Gives `builder` the TLS configuration these options describe (plaintext when none
    /// is given).
    pub fn apply(&self, builder: ChannelBuilder) -> Result<ChannelBuilder, CliError> {
        if !self.enabled() {
            return Ok(builder);
        }
        self.with_tls(builder)
    }

    #[cfg(not(feature = "tls"))]
    fn with_tls(&self, _: ChannelBuilder) -> Result<ChannelBuilder, CliError> {
        Err(CliError::Usage(
            "this meshless was built without TLS: rebuild with `--features tls` to use --tls-* options".into(),
        ))
    }

    #[cfg(feature = "tls")]
    fn with_tls(&self, builder: ChannelBuilder) -> Result<ChannelBuilder, CliError> {
        let mut tls = meshless::TlsConfig::new();
        match &self.tls_ca {
            Some(ca) => {
                if !ca.is_file() {
                    return Err(CliError::Usage(format!(
                        "--tls-ca {}: no such file (give the PEM file of the CA that signed the servers' certificates)",
                        ca.display()
                    )));
                }
                tls = tls.ca_file(ca);
            }
            None => tls = tls.system_roots(),
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            for (flag, path) in [("--tls-cert", cert), ("--tls-key", key)] {
                if !path.is_file() {
                    return Err(CliError::Usage(format!(
                        "{flag} {}: no such file",
                        path.display()
                    )));
                }
            }
            tls = tls.identity_files(cert, key);
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.server_name(name);
        }
        Ok(builder.tls(tls))
    }
}
