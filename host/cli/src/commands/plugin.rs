//! `coffer plugin list|inspect`. Everything a plugin says about itself is
//! printed escaped (`ls -q` style): inspecting an untrusted plugin must not
//! let it write to the terminal. `info` runs under its own short limit.

use anyhow::Result;
use clap::Subcommand;
use coffer_runtime::{GrantRules, GrantSet, JobOptions, Purpose, printable};

use crate::output::print_json;
use crate::{ConfigArgs, Global, LimitArgs};

#[derive(Subcommand, Debug)]
pub enum PluginCmd {
    /// List the built-in plugins.
    List,
    /// Show a plugin's name, version, config schema and, with a config, what it needs.
    Inspect {
        /// A built-in name or a path to a `.wasm` file.
        plugin: String,
        #[command(flatten)]
        cfg: ConfigArgs,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

pub async fn run(g: &Global, cmd: PluginCmd) -> Result<u8> {
    let rt = crate::plugins::runtime()?;
    match cmd {
        PluginCmd::List => {
            let mut all = Vec::new();
            for (name, _) in crate::plugins::BUILTIN {
                let p = crate::plugins::load(&rt, name)?;
                all.push(p.info(None, &JobOptions::default()).await?);
            }
            if g.json {
                print_json(&all)?;
            } else {
                for d in all {
                    println!("{:<10} {:<8} {}", d.name, printable(&d.version), printable(&d.description));
                }
            }
        }
        PluginCmd::Inspect { plugin, cfg, limits } => {
            let p = crate::plugins::load(&rt, &plugin)?;
            let job = crate::config::for_plugin(&p, &Default::default(), &cfg, &limits, None).await?;
            let opts = JobOptions { limits: job.limits, ..JobOptions::default() };
            let described = if cfg.set.is_empty() && cfg.config.is_none() {
                p.info(None, &opts).await?
            } else {
                p.info(Some(&job.config), &opts).await?
            };
            let fields: Vec<serde_json::Value> = match &job.rules {
                GrantRules::Inferred => Vec::new(),
                GrantRules::Declared(d) => d
                    .iter()
                    .map(|(f, k)| serde_json::json!({"field": f, "grant": k.as_str(), "meaning": k.meaning()}))
                    .collect(),
            };
            // With a config: what it would be granted (for a backup).
            let granted = if cfg.set.is_empty() && cfg.config.is_none() {
                None
            } else {
                let mut probe = job.config.clone();
                Some(GrantSet::for_job(&mut probe, &job.rules, Purpose::Read)?)
            };
            let granted_lines: Vec<String> = granted
                .iter()
                .flat_map(|g| {
                    g.permissions().iter().map(|p| p.display_name()).chain(g.describe_secrets()).collect::<Vec<_>>()
                })
                .collect();
            if g.json {
                let mut v = serde_json::to_value(&described)?;
                v["grant_fields"] = serde_json::Value::Array(fields);
                v["grants_inferred"] = serde_json::Value::Bool(job.rules == GrantRules::Inferred);
                if granted.is_some() {
                    v["granted"] = serde_json::json!(granted_lines);
                }
                print_json(&v)?;
            } else {
                println!("name:        {}", printable(&described.name));
                println!("version:     {}", printable(&described.version));
                println!("description: {}", printable(&described.description));
                println!(
                    "digest:      {}{}",
                    described.digest,
                    if p.is_builtin() { " (built into this coffer)" } else { "" }
                );
                println!(
                    "contract:    coffer:plugin@{}{}",
                    described.contract,
                    if described.contract == "0.1.0" { " (no streams)" } else { "" }
                );
                let mut modes = Vec::new();
                if described.restore_directory {
                    modes.push("directory (--target DIR)");
                }
                if described.restore_live {
                    modes.push("live server (--set url=...)");
                }
                println!("restores:    {}", if modes.is_empty() { "none".to_string() } else { modes.join(", ") });
                if !described.source.is_empty() {
                    println!("source:      {}", printable(&described.source));
                }
                if !described.capabilities.is_empty() {
                    println!("needs:");
                    for c in &described.capabilities {
                        println!("  {}", printable(c));
                    }
                }
                match &job.rules {
                    GrantRules::Inferred => println!(
                        "grants:      inferred from key names (a 0.1.0 component): path, paths, *_dir, *_path \
                         read-only; url, addr, address, *_url, *_addr connect"
                    ),
                    GrantRules::Declared(d) if d.is_empty() => println!("grants:      none (no field is a grant)"),
                    GrantRules::Declared(d) => {
                        println!("grants (what a value typed into each field lets the plugin use):");
                        let w = d.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
                        for (f, k) in d {
                            println!("  {:<w$}  {:<15}  {}", printable(f), k.as_str(), k.meaning());
                        }
                    }
                }
                if let Some(_g) = &granted {
                    println!("granted by this config:");
                    if granted_lines.is_empty() {
                        println!("  nothing");
                    }
                    for l in &granted_lines {
                        println!("  {}", printable(l));
                    }
                }
                println!("config schema:");
                let pretty = serde_json::from_str::<serde_json::Value>(&described.config_schema)
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .unwrap_or(described.config_schema.clone());
                for line in pretty.lines() {
                    println!("  {}", printable(line));
                }
            }
        }
    }
    Ok(0)
}
