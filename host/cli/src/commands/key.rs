//! `coffer key list|add|remove|passwd`.

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use coffer_repo::{Id, KdfParams, Repository};

use crate::Global;
use crate::output::print_json;

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// List key files.
    List,
    /// Add a key file for a new password (COFFER_NEW_PASSWORD or a prompt).
    Add {
        /// A label to recognize the key by.
        #[arg(long, default_value = "")]
        label: String,
        /// Argon2id memory in MiB.
        #[arg(long, default_value_t = 64)]
        kdf_memory_mib: u32,
        /// Argon2id passes.
        #[arg(long, default_value_t = 3)]
        kdf_passes: u32,
    },
    /// Remove a key file (not the one in use, not the last one).
    Remove {
        /// Key id or unique prefix.
        id: String,
    },
    /// Change the password: add a key for the new one, remove the one in use.
    Passwd,
}

fn kdf(memory_mib: u32, passes: u32) -> Result<KdfParams> {
    if !(8..=4096).contains(&memory_mib) {
        bail!("--kdf-memory-mib must be between 8 and 4096");
    }
    if !(1..=64).contains(&passes) {
        bail!("--kdf-passes must be between 1 and 64");
    }
    Ok(KdfParams { m_cost_kib: memory_mib * 1024, t_cost: passes, p_cost: 1 })
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

pub async fn run(g: &Global, cmd: KeyCmd) -> Result<u8> {
    let repo = super::open_repo(g).await?;
    match cmd {
        KeyCmd::List => {
            let keys = repo.keys_list().await?;
            if g.json {
                print_json(&keys)?;
            } else {
                println!("{:<2}{:<10} {:<20} {:<20} label", "", "id", "created", "user@host");
                for k in keys {
                    println!(
                        "{:<2}{:<10} {:<20} {:<20} {}",
                        if k.current { "*" } else { "" },
                        k.id.short(),
                        k.created.format("%Y-%m-%d %H:%M:%S"),
                        format!("{}@{}", k.user, k.host),
                        k.label
                    );
                }
            }
        }
        KeyCmd::Add { label, kdf_memory_mib, kdf_passes } => {
            let params = kdf(kdf_memory_mib, kdf_passes)?;
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
        KeyCmd::Passwd => {
            let old = repo.key_id();
            let pw = crate::password::new_password(None, false)?;
            let new = repo.add_key(&pw, KdfParams::default(), "").await?;
            let reopened = Repository::open(repo.backend().clone(), &pw)
                .await
                .context("opening the repository with the new password")?;
            if reopened.key_id() != new {
                return Err(anyhow!("the new password opened another key file; the old key {} was kept", old.short()));
            }
            reopened.remove_key(&old).await.context("removing the old key file")?;
            if g.json {
                print_json(&serde_json::json!({"added": new.to_hex(), "removed": old.to_hex()}))?;
            } else {
                println!("password changed: key {} replaces {}", new.short(), old.short());
            }
        }
    }
    Ok(0)
}
