//! `coffer key list|add|remove|passwd|cache|split|combine|rotate`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use coffer_repo::shares::{self, Share};
use coffer_repo::{DynBackend, Id, KdfParams, KeyCache, PruneOptions, Repository};
use zeroize::Zeroizing;

use super::UsageError;
use crate::Global;
use crate::output::{print_json, size};

/// Argon2id cost of a new key file.
#[derive(Args, Debug, Clone)]
pub struct KdfArgs {
    /// Argon2id memory in MiB (8 to 4096).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub kdf_memory_mib: u32,
    /// Argon2id passes (1 to 64).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub kdf_passes: u32,
    /// Argon2id lanes (1 to 64).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub kdf_lanes: u32,
}

impl KdfArgs {
    /// The parameters, refused when outside safe bounds.
    pub fn params(&self) -> Result<KdfParams> {
        if !(8..=4096).contains(&self.kdf_memory_mib) {
            bail!(UsageError("--kdf-memory-mib must be between 8 and 4096".into()));
        }
        if !(1..=64).contains(&self.kdf_passes) {
            bail!(UsageError("--kdf-passes must be between 1 and 64".into()));
        }
        if !(1..=64).contains(&self.kdf_lanes) {
            bail!(UsageError("--kdf-lanes must be between 1 and 64".into()));
        }
        Ok(KdfParams { m_cost_kib: self.kdf_memory_mib * 1024, t_cost: self.kdf_passes, p_cost: self.kdf_lanes })
    }
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// List key files and key epochs (with the data each epoch still protects).
    List,
    /// Add a key file for a new password (COFFER_NEW_PASSWORD or a prompt).
    Add {
        /// A label to recognize the key by.
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Remove a key file (not the one in use, not the last one).
    Remove {
        /// Key id or unique prefix.
        id: String,
    },
    /// Change the password: add a key for the new one, remove the one in use.
    Passwd {
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Write a key cache file: it opens the repository with `--key-file FILE`
    /// (or COFFER_KEY_FILE) without a password and without Argon2id, for
    /// commands run very often, such as PostgreSQL's archive_command. Whoever
    /// can read the file has the repository's key, exactly as with a
    /// password file beside it; `coffer key remove ID` revokes it. Run it as
    /// the user who will use the file (e.g. `sudo -u postgres`).
    Cache {
        /// Where to write it (mode 0600; an existing file is never
        /// overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A label to recognize the key by (default: `key cache HOST:FILE`).
        #[arg(long)]
        label: Option<String>,
    },
    /// Split the repository's master key into N Shamir shares, any K of which
    /// recover it (`key combine`, or `--shares-from` on any command).
    Split {
        /// Shares to make (N, at most 255).
        #[arg(long)]
        shares: u8,
        /// Shares needed to recover the key (K, at least 2).
        #[arg(long)]
        threshold: u8,
        /// Write each share to its own file here (mode 0600) instead of stdout.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Recover the master key from K shares and add a key file for a new
    /// password (COFFER_NEW_PASSWORD or a prompt). Needs no password.
    Combine {
        /// Files with shares, one per line; none reads stdin.
        files: Vec<PathBuf>,
        /// A label for the new key file.
        #[arg(long, default_value = "recovered from shares")]
        label: String,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Start a new key epoch: new data is sealed under a fresh data key;
    /// older data stays readable until `prune --reencrypt` rewrites it.
    Rotate {
        /// Re-encrypt older data right away and retire the old keys
        /// (what `coffer prune --reencrypt` does).
        #[arg(long)]
        reencrypt: bool,
    },
}

async fn resolve_key(repo: &Repository, prefix: &str) -> Result<Id> {
    let keys = repo.keys_list().await?;
    let p = prefix.to_ascii_lowercase();
    let m: Vec<_> = keys.iter().filter(|k| k.id.to_hex().starts_with(&p)).collect();
    match m.len() {
        0 => bail!("no key file {prefix} (see `coffer key list`)"),
        1 => Ok(m[0].id),
        _ => bail!("{prefix} matches several key files; give more of the id"),
    }
}

/// Reads shares from files (or `-` / no files: stdin), one per line; blank
/// lines and `#` comments are skipped. Each share is named by where it came
/// from, for error messages.
pub fn read_shares(sources: &[PathBuf]) -> Result<Vec<(String, Share)>> {
    let mut lines: Vec<(String, Zeroizing<String>)> = Vec::new();
    let mut take = |name: &str, text: &str| {
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            lines.push((format!("{name} line {}", i + 1), Zeroizing::new(t.to_string())));
        }
    };
    if sources.is_empty() || sources.iter().any(|s| s == Path::new("-")) {
        // Reserved up front so that growing never leaves copies behind.
        let mut text = Zeroizing::new(String::with_capacity(64 * 1024));
        std::io::stdin().lock().read_to_string(&mut text).context("reading shares from stdin")?;
        take("stdin", &text);
    }
    for f in sources.iter().filter(|s| *s != Path::new("-")) {
        let text =
            Zeroizing::new(std::fs::read_to_string(f).with_context(|| format!("reading shares from {}", f.display()))?);
        take(&f.display().to_string(), &text);
    }
    if lines.is_empty() {
        bail!(UsageError("no shares were given: pass share files, or one share per line on stdin".into()));
    }
    lines
        .into_iter()
        .map(|(name, text)| match Share::parse(&text) {
            Ok(s) => Ok((name, s)),
            Err(e) => Err(anyhow!("the share in {name} is not valid: {e}")),
        })
        .collect()
}

/// Recovers the master secret from shares and opens the repository with it.
pub async fn open_with_shares(backend: DynBackend, shares: &[(String, Share)]) -> Result<Repository> {
    let config = Repository::read_config(&backend).await?;
    let secret = shares::combine(shares, &config.id).map_err(|e| anyhow!("cannot recover the key: {e}"))?;
    Ok(Repository::open_with_secret(backend, secret).await?)
}

/// Reads a key cache file (refusing one that other users can read or
/// write) and opens the repository with it.
pub async fn open_with_key_cache(backend: DynBackend, path: &Path) -> Result<Repository> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let mut f = std::fs::File::open(path).with_context(|| format!("reading the key cache file {shown}"))?;
    let md = f.metadata().with_context(|| format!("reading the key cache file {shown}"))?;
    if !md.is_file() {
        bail!("the key cache file {shown} is not a regular file");
    }
    if md.mode() & 0o077 != 0 {
        bail!(
            "the key cache file {shown} can be read or written by other users (mode {:04o}); it holds the \
             repository's key: `chmod 600 {shown}`",
            md.mode() & 0o7777
        );
    }
    if md.len() > coffer_repo::repofile::keycache::MAX_KEY_CACHE_LEN {
        bail!("{shown} is not a key cache file (it is {} bytes)", md.len());
    }
    // Reserved up front so that growing never leaves copies behind.
    let mut bytes = Zeroizing::new(Vec::with_capacity(coffer_repo::repofile::keycache::MAX_KEY_CACHE_LEN as usize + 1));
    (&mut f)
        .take(coffer_repo::repofile::keycache::MAX_KEY_CACHE_LEN + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading the key cache file {shown}"))?;
    let cache = KeyCache::parse(&bytes).map_err(|e| anyhow!("{shown}: {e}"))?;
    Repository::open_with_key_cache(backend, &cache).await.with_context(|| format!("key cache file {shown}"))
}

/// `key cache`: the key file goes into the repository first, then the
/// operator's file (create-only, 0600); if the file cannot be written the
/// key file is removed again.
async fn write_key_cache(g: &Global, repo: &Repository, out: &Path, label: Option<String>) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if out.symlink_metadata().is_ok() {
        bail!("{} exists; a key cache file is never overwritten (remove it, or choose another name)", out.display());
    }
    let out = std::path::absolute(out).with_context(|| format!("{}", out.display()))?;
    let host = std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    let label = label.unwrap_or_else(|| format!("key cache {host}:{}", out.display()));
    let (id, cache) = repo.add_key_cache(&label).await?;
    let written = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&out) {
        Ok(mut f) => f.write_all(&cache.encode()).and_then(|_| f.sync_all()).inspect_err(|_| {
            // Ours (created above): a partial key cache is no use to anyone.
            let _ = std::fs::remove_file(&out);
        }),
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        repo.remove_key(&id).await.context("removing the key file of the key cache that could not be written")?;
        return Err(anyhow!(e).context(format!("writing the key cache file {}", out.display())));
    }
    if g.json {
        print_json(&serde_json::json!({"added": id.to_hex(), "file": out.display().to_string()}))?;
    } else {
        println!("wrote key cache {} for key {}", out.display(), id.short());
        eprintln!(
            "whoever can read {} can open the repository, as with a password file; `coffer key remove {}` revokes it",
            out.display(),
            id.short()
        );
    }
    Ok(())
}

fn write_share_file(dir: &Path, name: &str, line: &str) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {} (an existing share file is never overwritten)", path.display()))?;
    f.write_all(line.as_bytes()).and_then(|_| f.write_all(b"\n")).and_then(|_| f.sync_all())?;
    Ok(path)
}

async fn split(g: &Global, repo: &Repository, count: u8, threshold: u8, out_dir: Option<PathBuf>) -> Result<u8> {
    let id = repo.config().id;
    let parts = shares::split(repo.master_secret(), &id, threshold, count).map_err(|e| anyhow!(UsageError(e)))?;
    let Some(dir) = out_dir else {
        // Printing the shares is this command's purpose: they go to stdout,
        // in JSON too when asked.
        if g.json {
            // Built by hand in one zeroized buffer: share codes are base32
            // and dashes, so nothing needs escaping.
            let mut out = zeroize::Zeroizing::new(String::with_capacity(128 + parts.len() * 128));
            out.push_str(&format!(
                "{{\n  \"repository\": \"{}\",\n  \"threshold\": {threshold},\n  \"shares\": [",
                id.to_hex()
            ));
            for (i, s) in parts.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&format!("    {{ \"index\": {}, \"share\": \"", s.index));
                out.push_str(s.code().as_str());
                out.push_str("\" }");
            }
            out.push_str("\n  ]\n}\n");
            print!("{}", out.as_str());
        } else {
            eprintln!(
                "{count} shares of repository {}; any {threshold} recover its key. Give each to a different custodian.",
                id.short()
            );
            for s in &parts {
                println!("{}", s.line().as_str());
            }
        }
        return Ok(0);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for s in &parts {
        let name = format!("coffer-share-{}-{}-of-{}.txt", &id.to_hex()[..8], s.index, s.count);
        match write_share_file(&dir, &name, &s.line()) {
            Ok(p) => written.push(p),
            Err(e) => {
                // All or nothing: a partial set of one split is useless.
                for p in &written {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        }
    }
    if g.json {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        print_json(&serde_json::json!({"repository": id.to_hex(), "threshold": threshold, "files": files}))?;
    } else {
        println!("wrote {count} shares of repository {} (any {threshold} recover its key):", id.short());
        for p in &written {
            println!("  {}", p.display());
        }
    }
    Ok(0)
}

async fn list(g: &Global, repo: &Repository) -> Result<()> {
    let keys = repo.keys_list().await?;
    let epochs = repo.epochs().await?;
    if g.json {
        return print_json(&serde_json::json!({"keys": keys, "epochs": epochs}));
    }
    println!("{:<2}{:<10} {:<9} {:<20} {:<20} label", "", "key", "kind", "created", "user@host");
    for k in keys {
        println!(
            "{:<2}{:<10} {:<9} {:<20} {:<20} {}",
            if k.current { "*" } else { "" },
            k.id.short(),
            k.kind,
            k.created.format("%Y-%m-%d %H:%M:%S"),
            format!("{}@{}", k.user, k.host),
            k.label
        );
    }
    println!();
    println!("{:<2}{:<6} {:<20} {:>7} {:>12}", "", "epoch", "created", "packs", "protects");
    for e in epochs {
        let created = match (e.epoch, e.created) {
            (_, Some(c)) => c.format("%Y-%m-%d %H:%M:%S").to_string(),
            (0, None) => "(metadata key)".into(),
            (_, None) if e.damaged.is_some() => "KEY FILE DAMAGED".into(),
            (_, None) => "KEY MISSING".into(),
        };
        println!(
            "{:<2}{:<6} {:<20} {:>7} {:>12}",
            if e.current { "*" } else { "" },
            e.epoch,
            created,
            e.packs,
            size(e.bytes)
        );
    }
    Ok(())
}

pub async fn run(g: &Global, cmd: KeyCmd) -> Result<u8> {
    if let KeyCmd::Combine { files, label, kdf } = cmd {
        let params = kdf.params()?;
        let url = super::repo_url(g)?;
        let backend = coffer_repo::backend_for(&url, &super::repo_options(g)?)?;
        let shares = read_shares(&files)?;
        let repo = open_with_shares(backend, &shares).await.with_context(|| format!("repository {url}"))?;
        let pw = crate::password::new_password(None, false)?;
        let id = repo.add_key(&pw, params, &label).await?;
        if g.json {
            print_json(&serde_json::json!({"added": id.to_hex()}))?;
        } else {
            println!(
                "recovered the key of repository {}; added key {} for the new password",
                repo.config().id.short(),
                id.short()
            );
        }
        return Ok(0);
    }
    let repo = super::open_repo(g).await?;
    match cmd {
        KeyCmd::Combine { .. } => unreachable!("handled above"),
        KeyCmd::List => list(g, &repo).await?,
        KeyCmd::Add { label, kdf } => {
            let params = kdf.params()?;
            let pw = crate::password::new_password(None, false)?;
            let id = repo.add_key(&pw, params, &label).await?;
            if g.json {
                print_json(&serde_json::json!({"added": id.to_hex()}))?;
            } else {
                println!("added key {}", id.short());
            }
        }
        KeyCmd::Remove { id } => {
            let id = resolve_key(&repo, &id).await?;
            repo.remove_key(&id).await?;
            if g.json {
                print_json(&serde_json::json!({"removed": id.to_hex()}))?;
            } else {
                println!("removed key {}", id.short());
            }
        }
        KeyCmd::Passwd { kdf } => {
            let params = kdf.params()?;
            let Some(old) = repo.key_id() else {
                bail!(UsageError(
                    "the repository was opened with shares, not with a key file: use `coffer key combine` or `key add`"
                        .into()
                ));
            };
            if g.key_file.is_some() {
                bail!(UsageError(
                    "the repository was opened with a key cache, which has no password to change: open it with \
                     the password (`--password-file`), or use `coffer key add` and `coffer key remove`"
                        .into()
                ));
            }
            let pw = crate::password::new_password(None, false)?;
            let new = repo.add_key(&pw, params, "").await?;
            let reopened = Repository::open(repo.backend().clone(), &pw)
                .await
                .context("opening the repository with the new password")?;
            if reopened.key_id() != Some(new) {
                return Err(anyhow!("the new password opened another key file; the old key {} was kept", old.short()));
            }
            reopened.remove_key(&old).await.context("removing the old key file")?;
            if g.json {
                print_json(&serde_json::json!({"added": new.to_hex(), "removed": old.to_hex()}))?;
            } else {
                println!("password changed: key {} replaces {}", new.short(), old.short());
            }
        }
        KeyCmd::Cache { out, label } => write_key_cache(g, &repo, &out, label).await?,
        KeyCmd::Split { shares, threshold, out_dir } => return split(g, &repo, shares, threshold, out_dir).await,
        KeyCmd::Rotate { reencrypt } => {
            let epoch = repo.rotate_key().await?;
            let report = if reencrypt {
                Some(repo.prune(&PruneOptions { reencrypt: true, ..PruneOptions::default() }).await?)
            } else {
                None
            };
            let older: Vec<_> = repo.epochs().await?.into_iter().filter(|e| e.epoch != epoch && e.packs > 0).collect();
            if g.json {
                print_json(&serde_json::json!({"epoch": epoch, "reencrypt": report, "older_epochs": older}))?;
            } else {
                println!("started key epoch {epoch}: new data is sealed under its key");
                if let Some(r) = &report {
                    super::maintain::print_prune(r, false);
                }
                let (packs, bytes) = older.iter().fold((0, 0), |(p, b), e| (p + e.packs, b + e.bytes));
                if packs > 0 {
                    println!(
                        "{packs} packs ({}) are still sealed under older epochs; `coffer prune --reencrypt` rewrites them",
                        size(bytes)
                    );
                }
            }
        }
    }
    Ok(0)
}
