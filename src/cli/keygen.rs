//! `blkmirror keygen DIR`: creates a TLS identity and prints its fingerprint, the one line a
//! peer pins with `--peer` or `--allow-peer`.

use std::io::Write;

use anyhow::Context;

use super::args::KeygenArgs;
use super::{out, CliError};
use crate::transport::tls;

/// Runs `keygen`. The identity exists once this returns, even if nobody read the fingerprint.
pub fn run(args: KeygenArgs) -> Result<i32, CliError> {
    let fingerprint = tls::keygen(&args.dir).context("keygen")?;
    let mut stdout = out::stdout();
    out::finished(writeln!(stdout, "{fingerprint}").and_then(|()| stdout.flush()))
        .context("cannot write the fingerprint to stdout")?;
    Ok(0)
}
