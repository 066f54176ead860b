//! `blkmirror keygen DIR`: creates a TLS identity and prints its fingerprint, the one line a
//! peer pins with `--peer` or `--allow-peer`. `keygen --show DIR` prints the fingerprint of
//! the identity already in DIR (read only; its key must match its certificate) and creates
//! nothing.

use std::io::Write;

use anyhow::Context;

use super::args::KeygenArgs;
use super::{out, CliError};
use crate::transport::tls::{self, TlsError};

/// Runs `keygen`. The identity exists once this returns, even if nobody read the fingerprint.
pub fn run(args: KeygenArgs) -> Result<i32, CliError> {
    let fingerprint = if args.show {
        show(&args.dir)?
    } else {
        tls::keygen(&args.dir).context("keygen")?
    };
    let mut stdout = out::stdout();
    out::finished(writeln!(stdout, "{fingerprint}").and_then(|()| stdout.flush()))
        .context("cannot write the fingerprint to stdout")?;
    Ok(0)
}

/// The fingerprint of the identity in `dir`; a missing one says how to make it.
fn show(dir: &std::path::Path) -> Result<String, CliError> {
    match tls::load_identity(dir) {
        Ok(identity) => Ok(identity.fingerprint()),
        Err(e) if missing(&e) && nothing_in(dir) => Err(CliError::Runtime(anyhow::anyhow!(
            "keygen --show: {e} (no identity in {}: create one with `blkmirror keygen {}`)",
            dir.display(),
            dir.display()
        ))),
        Err(e) => Err(CliError::Runtime(
            anyhow::Error::new(e).context("keygen --show"),
        )),
    }
}

/// Neither file of an identity is in `dir`.
fn nothing_in(dir: &std::path::Path) -> bool {
    ["cert.pem", "key.pem"]
        .iter()
        .all(|name| std::fs::symlink_metadata(dir.join(name)).is_err())
}

fn missing(error: &TlsError) -> bool {
    matches!(error, TlsError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}
