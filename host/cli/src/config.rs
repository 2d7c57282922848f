//! Plugin configs and limits from the command line: `--set key=value`
//! (typed by the plugin's JSON Schema), `--config FILE.toml` (with an
//! optional `[limits]` table), and the limit flags.

use anyhow::{Context, Result, anyhow, bail};
use coffer_runtime::limits::{parse_duration, parse_size};
use coffer_runtime::{CancelToken, GrantKind, GrantRules, JobOptions, Limits, LoadedPlugin};
use serde_json::{Map, Value};

use crate::{ConfigArgs, LimitArgs};

/// The value stored in manifests in place of a secret.
const REDACTED: &str = "<redacted>";

/// A plugin config and the job's limits.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// The config object passed to the plugin.
    pub config: Value,
    /// Limits.
    pub limits: Limits,
    /// Which config fields grant what (the plugin's declared grants).
    pub rules: GrantRules,
    /// Keys whose values came from a stored snapshot's config, not from
    /// this command.
    pub inherited: std::collections::HashSet<String>,
}

/// Types a `--set` value by the schema's declared type for `key`.
fn typed(key: &str, raw: &str, schema: Option<&Value>) -> Result<Value> {
    let ty = schema
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.get(key))
        .and_then(|p| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("string");
    Ok(match ty {
        "boolean" => match raw.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" | "on" => Value::Bool(true),
            "false" | "no" | "0" | "off" => Value::Bool(false),
            _ => bail!("--set {key}={raw}: `{key}` is a boolean (true or false)"),
        },
        "integer" => Value::from(raw.parse::<i64>().map_err(|_| anyhow!("--set {key}={raw}: `{key}` is an integer"))?),
        "number" => {
            let n: f64 = raw.parse().map_err(|_| anyhow!("--set {key}={raw}: `{key}` is a number"))?;
            serde_json::Number::from_f64(n)
                .map(Value::Number)
                .ok_or_else(|| anyhow!("--set {key}={raw}: not a finite number"))?
        }
        "array" => Value::Array(
            raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_string())).collect(),
        ),
        "object" => serde_json::from_str(raw).with_context(|| format!("--set {key}=...: `{key}` is a JSON object"))?,
        _ => Value::String(raw.to_string()),
    })
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

/// Drops values that were redacted when the config was stored, and the
/// redacted password of a URL (`redis://:<redacted>@host` becomes
/// `redis://host`), so a restore asks for them again.
fn without_redacted(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m
            .into_iter()
            .filter(|(_, v)| v.as_str() != Some(REDACTED))
            .map(|(k, v)| match v {
                Value::String(s) => (k, Value::String(without_url_password(&s))),
                other => (k, other),
            })
            .collect(),
        _ => Map::new(),
    }
}

fn without_url_password(s: &str) -> String {
    let marker = format!(":{REDACTED}@");
    let Some(at) = s.find(&marker) else { return s.to_string() };
    let Some(scheme_end) = s.find("://") else { return s.to_string() };
    let user = &s[scheme_end + 3..at];
    let rest = &s[at + marker.len()..];
    if user.is_empty() {
        format!("{}{rest}", &s[..scheme_end + 3])
    } else {
        format!("{}{user}@{rest}", &s[..scheme_end + 3])
    }
}

/// Fills secrets the operator named instead of typing: `KEY_file` (a file
/// whose first line is the value) and `KEY_env` (an environment variable)
/// set `KEY`, for keys that name a password (`password_file` sets
/// `password`). The plugin sees the value; the stored config keeps only
/// the file path or variable name.
///
/// A secret source that only the snapshot's stored config names (the
/// operator did not type it for this command) may not exist here: a
/// restore on another machine, a password file since removed. It is then
/// left out with a warning, since most restores need no password; one the
/// operator typed must work.
fn resolve_secrets(map: &mut Map<String, Value>, inherited: &std::collections::HashSet<String>) -> Result<()> {
    let mut found = Vec::new();
    for (k, v) in map.iter() {
        let Some(name) = v.as_str() else { continue };
        let lk = k.to_ascii_lowercase();
        for (suffix, from_file) in [("_file", true), ("_env", false)] {
            if let Some(base) = k.strip_suffix(suffix)
                && lk.contains("password")
            {
                found.push((k.clone(), base.to_string(), name.to_string(), from_file));
            }
        }
    }
    for (key, base, name, from_file) in found {
        if map.get(&base).is_some_and(|v| !v.is_null()) {
            continue;
        }
        let read = if from_file {
            std::fs::read_to_string(&name)
                .map(|text| text.lines().next().unwrap_or_default().to_string())
                .with_context(|| format!("reading {key} {name}"))
        } else {
            std::env::var(&name).map_err(|_| anyhow!("{key}: the environment variable {name} is not set"))
        };
        let value = match read {
            Ok(v) => v,
            Err(e) if inherited.contains(&key) => {
                eprintln!(
                    "warning: the snapshot's config names {key} = {name}, which cannot be used here ({e:#}); going \
                     on without it (give --set {key}=... if this job needs it)"
                );
                map.remove(&key);
                continue;
            }
            Err(e) => return Err(e),
        };
        if value.is_empty() {
            bail!("{key}: {name} is empty");
        }
        map.insert(base, Value::String(value));
    }
    Ok(())
}

/// Builds a job's config: `base` (a stored snapshot's config) under the
/// TOML file under `--set`; limits from the TOML `[limits]` table under the
/// flags.
pub fn build(
    args: &ConfigArgs,
    limit_args: &LimitArgs,
    schema: Option<&Value>,
    base: Option<Value>,
) -> Result<JobConfig> {
    let mut map = base.map(without_redacted).unwrap_or_default();
    let mut inherited: std::collections::HashSet<String> = map.keys().cloned().collect();
    let mut limits = Limits::default();
    if let Some(file) = &args.config {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading config file {}", file.display()))?;
        let table: toml::Table =
            text.parse().with_context(|| format!("config file {} is not valid TOML", file.display()))?;
        for (k, v) in table {
            if k == "limits" {
                let toml::Value::Table(t) = v else { bail!("{}: `limits` must be a table", file.display()) };
                for (lk, lv) in t {
                    let s = match &lv {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(i) => i.to_string(),
                        _ => bail!("{}: limits.{lk} must be a string like \"512MiB\" or \"30m\"", file.display()),
                    };
                    apply_limit(&mut limits, &lk, &s).with_context(|| format!("{}: limits.{lk}", file.display()))?;
                }
                continue;
            }
            inherited.remove(&k);
            map.insert(k, toml_to_json(v));
        }
    }
    for kv in &args.set {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--set {kv}: expected KEY=VALUE"))?;
        let k = k.trim();
        if k.is_empty() {
            bail!("--set {kv}: the key is empty");
        }
        inherited.remove(k);
        map.insert(k.to_string(), typed(k, v, schema)?);
    }
    resolve_secrets(&mut map, &inherited)?;
    if let Some(s) = &limit_args.memory_limit {
        apply_limit(&mut limits, "memory", s).context("--memory-limit")?;
    }
    if let Some(s) = &limit_args.time_limit {
        apply_limit(&mut limits, "time", s).context("--time-limit")?;
    }
    if let Some(s) = &limit_args.info_time_limit {
        apply_limit(&mut limits, "info_time", s).context("--info-time-limit")?;
    }
    if let Some(s) = &limit_args.output_limit {
        apply_limit(&mut limits, "output", s).context("--output-limit")?;
    }
    Ok(JobConfig { config: Value::Object(map), limits, rules: GrantRules::Inferred, inherited })
}

/// [`build`] with `plugin`'s own schema typing the `--set` values. The
/// schema comes from `info`, under the `info` time limit the flags set.
pub async fn for_plugin(
    plugin: &LoadedPlugin,
    cancel: &CancelToken,
    args: &ConfigArgs,
    limit_args: &LimitArgs,
    base: Option<Value>,
) -> Result<JobConfig> {
    let limits = build(&ConfigArgs::default(), limit_args, None, None)?.limits;
    let opts = JobOptions { cancel: cancel.clone(), limits, ..JobOptions::default() };
    let described = plugin.info(None, &opts).await?;
    let schema: Option<Value> = serde_json::from_str(&described.config_schema).ok();
    let rules = plugin.grant_rules(&described.config_schema)?;
    let mut job = build(args, limit_args, schema.as_ref(), base)?;
    job.rules = rules;
    settle_inherited_grants(&mut job);
    Ok(job)
}

/// Grants that came from a stored snapshot's config rather than this
/// command line: a directory a restore may write is never taken from
/// there (the plugin restoring may not be the one that wrote it), and a
/// CA, certificate, key or token file that is not on this machine is left
/// out with a warning (a restore elsewhere needs none of them unless it
/// talks to a server, and then they are typed again).
fn settle_inherited_grants(job: &mut JobConfig) {
    let GrantRules::Declared(declared) = &job.rules else { return };
    let Value::Object(map) = &mut job.config else { return };
    if declared.is_empty()
        && let Some(k) = map.keys().find(|k| {
            let k = k.to_ascii_lowercase().replace('-', "_");
            k == "path" || k == "url" || k.ends_with("_dir") || k.ends_with("_url")
        })
    {
        eprintln!(
            "warning: this plugin's schema declares no grant field (`x-coffer-grant`), so `{k}` grants nothing; a \
             component built against contract 0.1.0 would have been granted it by name: rebuild the plugin with \
             its grants declared"
        );
    }
    for (key, kind) in declared {
        if !job.inherited.contains(key) {
            continue;
        }
        let file = matches!(
            kind,
            GrantKind::TlsCa | GrantKind::TlsClientCert | GrantKind::TlsClientKey | GrantKind::SecretFile
        );
        if *kind == GrantKind::WriteDir {
            map.remove(key);
        } else if file
            && let Some(Value::String(path)) = map.get(key)
            && !std::path::Path::new(path).is_file()
        {
            eprintln!(
                "warning: the snapshot's config names {key} = {path}, which is not here; going on without it (give \
                 --set {key}=... if this job needs it)"
            );
            map.remove(key);
        }
    }
}

fn apply_limit(limits: &mut Limits, key: &str, value: &str) -> Result<()> {
    match key {
        "memory" => {
            let v = parse_size(value).map_err(|e| anyhow!(e))?;
            if !(1 << 20..=4 << 30).contains(&v) {
                bail!("memory limit {value} must be between 1MiB and 4GiB (a wasm32 plugin cannot use more)");
            }
            limits.memory = v;
        }
        "time" => limits.wall_time = parse_duration(value).map_err(|e| anyhow!(e))?,
        "info_time" => limits.info_time = parse_duration(value).map_err(|e| anyhow!(e))?,
        "output" => limits.output_bytes = parse_size(value).map_err(|e| anyhow!(e))?,
        other => bail!("unknown limit `{other}` (use memory, time, info_time, output)"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_follow_the_schema() {
        let schema = serde_json::json!({"properties": {"n": {"type": "integer"}, "b": {"type": "boolean"}, "l": {"type": "array"}}});
        let args = ConfigArgs { set: vec!["n=5".into(), "b=yes".into(), "l=a, b".into(), "s=5".into()], config: None };
        let c = build(&args, &LimitArgs::default(), Some(&schema), None).unwrap();
        assert_eq!(c.config, serde_json::json!({"n": 5, "b": true, "l": ["a", "b"], "s": "5"}));
        let bad = ConfigArgs { set: vec!["n=five".into()], config: None };
        assert!(build(&bad, &LimitArgs::default(), Some(&schema), None).unwrap_err().to_string().contains("integer"));
    }

    #[test]
    fn a_password_file_only_the_stored_config_names_may_be_gone() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone").display().to_string();
        let base = serde_json::json!({"url": "postgres://backup@db/", "password_file": gone});
        let c = build(&ConfigArgs::default(), &LimitArgs::default(), None, Some(base.clone())).unwrap();
        assert_eq!(c.config, serde_json::json!({"url": "postgres://backup@db/"}));
        // Typed again for this command, it must work.
        let args = ConfigArgs { set: vec![format!("password_file={gone}")], config: None };
        let e = build(&args, &LimitArgs::default(), None, Some(base)).unwrap_err();
        assert!(format!("{e:#}").contains("reading password_file"), "{e:#}");
    }

    #[test]
    fn passwords_come_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\nignored\n").unwrap();
        let args = ConfigArgs { set: vec![format!("password_file={}", f.display())], config: None };
        let c = build(&args, &LimitArgs::default(), None, None).unwrap();
        assert_eq!(c.config["password"], "s3cret");
        // PATH stands in for a variable the operator set.
        let args = ConfigArgs { set: vec!["password_env=PATH".into()], config: None };
        let path = std::env::var("PATH").unwrap();
        assert_eq!(build(&args, &LimitArgs::default(), None, None).unwrap().config["password"], path.as_str());
        let args = ConfigArgs { set: vec!["password_env=COFFER_TEST_CONFIG_UNSET".into()], config: None };
        assert!(build(&args, &LimitArgs::default(), None, None).unwrap_err().to_string().contains("not set"));
        let args = ConfigArgs { set: vec!["password_file=/nonexistent/pw".into()], config: None };
        assert!(build(&args, &LimitArgs::default(), None, None).unwrap_err().to_string().contains("password_file"));
    }

    #[test]
    fn redacted_url_passwords_are_dropped() {
        assert_eq!(without_url_password("redis://:<redacted>@127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(without_url_password("postgres://app:<redacted>@db/x"), "postgres://app@db/x");
        assert_eq!(without_url_password("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }

    #[test]
    fn redacted_values_are_not_passed_on() {
        let base = serde_json::json!({"path": "/x", "password": REDACTED});
        let c = build(&ConfigArgs::default(), &LimitArgs::default(), None, Some(base)).unwrap();
        assert_eq!(c.config, serde_json::json!({"path": "/x"}));
    }
}
