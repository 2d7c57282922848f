//! Passwords: `--password-file` / `COFFER_PASSWORD_FILE`, `COFFER_PASSWORD`,
//! or a prompt on a terminal. Buffers are zeroized when dropped.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

/// Reads the repository password.
pub fn repository_password(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(f) = file {
        return from_file(f);
    }
    if let Ok(p) = std::env::var("COFFER_PASSWORD") {
        return Ok(Zeroizing::new(p.into_bytes()));
    }
    prompt("repository password: ")
        .context("no password: set COFFER_PASSWORD_FILE (or --password-file) or COFFER_PASSWORD, or run on a terminal")
}

/// Reads a new password (for `init`, `key add`, `key passwd`):
/// `COFFER_NEW_PASSWORD_FILE`, `COFFER_NEW_PASSWORD`, or a prompt typed twice.
/// `init` falls back to the repository password settings.
pub fn new_password(fallback_file: Option<&Path>, allow_repo_password: bool) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(f) = std::env::var_os("COFFER_NEW_PASSWORD_FILE") {
        return from_file(Path::new(&f));
    }
    if let Ok(p) = std::env::var("COFFER_NEW_PASSWORD") {
        return check_new(Zeroizing::new(p.into_bytes()));
    }
    if allow_repo_password {
        if let Some(f) = fallback_file {
            return check_new(from_file(f)?);
        }
        if let Ok(p) = std::env::var("COFFER_PASSWORD") {
            return check_new(Zeroizing::new(p.into_bytes()));
        }
    }
    let a = prompt("new password: ")
        .context("no new password: set COFFER_NEW_PASSWORD_FILE or COFFER_NEW_PASSWORD, or run on a terminal")?;
    let b = prompt("repeat new password: ")?;
    if *a != *b {
        bail!("the passwords differ; nothing was changed");
    }
    check_new(a)
}

fn check_new(p: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>> {
    if p.is_empty() {
        bail!("the password is empty; choose a non-empty password");
    }
    Ok(p)
}

fn from_file(f: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let data = Zeroizing::new(std::fs::read(f).with_context(|| format!("reading password file {}", f.display()))?);
    let line = data.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        bail!("password file {} is empty", f.display());
    }
    Ok(Zeroizing::new(line.to_vec()))
}

fn prompt(label: &str) -> Result<Zeroizing<Vec<u8>>> {
    // The prompt reads the controlling terminal, so stdin may carry other
    // input (shares for `key combine`).
    if !std::io::stdin().is_terminal() && std::fs::File::open("/dev/tty").is_err() {
        bail!("cannot prompt for a password: there is no terminal");
    }
    let p = rpassword::prompt_password(label).context("reading the password")?;
    Ok(Zeroizing::new(p.into_bytes()))
}
