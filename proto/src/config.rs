//! The embedded configuration file: a `[settings]` table of flat keys, then one
//! `[[solution]]` table per solution. Parsing validates everything and returns
//! every problem with its key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::error::{ConfigError, ConfigErrors};
use crate::settings::{KEYS, Scope, Settings, check_label, unknown_key};
use crate::solution::{Backend, Probe, ProcessSpec, SolutionSpec, Upstream};

/// Keys of a `[[solution]]` table besides per-solution settings.
const SOLUTION_KEYS: &[&str] = &["name", "description", "command", "upstream", "probe", "port", "cwd", "env"];

/// A whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Global settings.
    pub settings: Settings,
    /// Solutions, in file order.
    pub solutions: Vec<SolutionSpec>,
}

/// The folder a config file is in. `--config wakegate.toml` has an empty
/// parent, which is the current folder: an empty working directory would make
/// every solution start fail with ENOENT.
fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

impl Config {
    /// Reads and validates a file. Relative `cwd`s are against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![ConfigError::new("", format!("cannot read {}: {e}", path.display()))]))?;
        // Valid TOML, but never meant: an editor or `cat >` between truncating
        // the file and writing it (a live reload would remove every solution),
        // or the wrong file.
        if text.trim().is_empty() {
            return Err(ConfigErrors(vec![ConfigError::new("", "the file is empty (a write in progress?): nothing to serve")]));
        }
        Config::parse(&text, folder_of(path))
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![ConfigError::new("", format!("TOML syntax: {}", e.to_string().trim()))]))?;
        let mut errors = Vec::new();
        for key in table.keys() {
            if key != "settings" && key != "solution" {
                errors.push(ConfigError::new(key.clone(), "unknown table; expected [settings] or [[solution]]"));
            }
        }
        let settings = parse_settings(table.get("settings"), &mut errors);
        let mut solutions = Vec::new();
        match table.get("solution") {
            None => {}
            Some(Value::Array(items)) => {
                let mut names = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    if let Some(spec) = parse_solution(i, item, &settings, base_dir, &mut errors) {
                        if !names.insert(spec.name.clone()) {
                            errors.push(ConfigError::new(format!("solution.{}.name", spec.name), "duplicate solution name"));
                        }
                        solutions.push(spec);
                    }
                }
            }
            Some(_) => errors.push(ConfigError::new("solution", "must be an array of tables: write [[solution]]")),
        }
        if errors.is_empty() { Ok(Config { settings, solutions }) } else { Err(ConfigErrors(errors)) }
    }
}

/// Renders a TOML scalar the way a ConfigMap would hold it.
fn flat(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        Value::Array(items) => items.iter().map(flat).collect::<Result<Vec<_>, _>>().map(|v| v.join(",")),
        _ => Err("expected a string, number or boolean".into()),
    }
}

fn parse_settings(value: Option<&Value>, errors: &mut Vec<ConfigError>) -> Settings {
    let mut settings = Settings::default();
    let Some(value) = value else { return settings };
    let Some(table) = value.as_table() else {
        errors.push(ConfigError::new("settings", "must be a table: write [settings]"));
        return settings;
    };
    for (key, v) in table {
        let full = format!("settings.{key}");
        match flat(v) {
            Ok(s) => {
                if let Err(reason) = settings.set(key, &s) {
                    errors.push(ConfigError::new(full, reason));
                }
            }
            Err(reason) => errors.push(ConfigError::new(full, reason)),
        }
    }
    settings
}

fn parse_solution(index: usize, item: &Value, settings: &Settings, base_dir: &Path, errors: &mut Vec<ConfigError>) -> Option<SolutionSpec> {
    let Some(t) = item.as_table() else {
        errors.push(ConfigError::new(format!("solution[{index}]"), "must be a table"));
        return None;
    };
    let name = match t.get("name").map(Value::as_str) {
        Some(Some(n)) => n.to_string(),
        Some(None) => {
            errors.push(ConfigError::new(format!("solution[{index}].name"), "must be a string (its subdomain)"));
            return None;
        }
        None => {
            errors.push(ConfigError::new(format!("solution[{index}].name"), "missing: every solution needs a name (its subdomain)"));
            return None;
        }
    };
    let at = |key: &str| format!("solution.{name}.{key}");
    let start = errors.len();
    if let Err(reason) = check_label(&name) {
        errors.push(ConfigError::new(at("name"), format!("{reason} (the name is the subdomain)")));
    }

    let mut effective = settings.solution.clone();
    let mut overrides = Vec::new();
    for (key, v) in t {
        if SOLUTION_KEYS.contains(&key.as_str()) {
            continue;
        }
        let is_solution_key = KEYS.iter().any(|k| k.name == key && k.scope == Scope::Solution);
        if !is_solution_key {
            let global = KEYS.iter().any(|k| k.name == key) || crate::settings::TLS_KEYS.iter().any(|k| k.name == key);
            let reason = if global { "a global setting: put it in [settings]".to_string() } else { unknown_key(key) };
            errors.push(ConfigError::new(at(key), reason));
            continue;
        }
        match flat(v).and_then(|s| effective.set(key, &s).map(|_| s)) {
            Ok(s) => overrides.push((key.clone(), s)),
            Err(reason) => errors.push(ConfigError::new(at(key), reason)),
        }
    }

    let description = match t.get("description") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(ConfigError::new(at("description"), "must be a string"));
            None
        }
    };

    let backend = match (t.get("command"), t.get("upstream")) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(at("upstream"), "give either command or upstream, not both"));
            None
        }
        (None, None) => {
            errors.push(ConfigError::new(at("command"), "missing: give a command to run, or an upstream URL"));
            None
        }
        (None, Some(u)) => {
            for key in ["probe", "port", "cwd", "env"] {
                if t.contains_key(key) {
                    errors.push(ConfigError::new(at(key), "only for solutions with a command"));
                }
            }
            match u.as_str().map(Upstream::parse) {
                Some(Ok(u)) => Some(Backend::Upstream(u)),
                Some(Err(reason)) => {
                    errors.push(ConfigError::new(at("upstream"), reason));
                    None
                }
                None => {
                    errors.push(ConfigError::new(at("upstream"), "must be a string like http://127.0.0.1:9000"));
                    None
                }
            }
        }
        (Some(cmd), None) => parse_process(cmd, t, base_dir, &at, errors).map(Backend::Process),
    }?;
    if errors.len() > start {
        return None;
    }
    Some(SolutionSpec { name, description, backend, settings: effective, overrides })
}

/// The argv of a command written as one string: `sh -c`, as Docker's shell
/// form and Procfiles run one, so `cd dir && …`, `VAR=1 cmd` and `a; b` mean
/// what they mean to sh. One plain command (words of ordinary characters, no
/// assignment first) is `exec`'d, so that it is sh's own process: its exit
/// status or signal is then reported as its own.
fn shell(s: &str) -> Vec<String> {
    let ordinary = |c: char| c.is_ascii_alphanumeric() || " \t-_./:,+@%={}".contains(c);
    let plain = s.chars().all(ordinary) && s.split_whitespace().next().is_some_and(|w| !w.contains('='));
    let script = if plain { format!("exec {s}") } else { s.to_string() };
    vec!["/bin/sh".into(), "-c".into(), script]
}

fn parse_process(
    cmd: &Value,
    t: &Table,
    base_dir: &Path,
    at: &dyn Fn(&str) -> String,
    errors: &mut Vec<ConfigError>,
) -> Option<ProcessSpec> {
    let start = errors.len();
    let argv = match cmd {
        Value::String(s) if !s.trim().is_empty() => shell(s),
        Value::Array(items) if !items.is_empty() => {
            let argv: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(str::to_string)).collect();
            argv.unwrap_or_else(|| {
                errors.push(ConfigError::new(at("command"), "every argument must be a string"));
                Vec::new()
            })
        }
        _ => {
            errors.push(ConfigError::new(at("command"), "must be a non-empty string or array of strings"));
            Vec::new()
        }
    };
    let probe = match t.get("probe") {
        None => Probe::Http { path: "/".into() },
        Some(Value::String(s)) if s == "tcp" => Probe::Tcp,
        Some(Value::String(s)) if s.starts_with('/') && !s.contains(char::is_whitespace) => Probe::Http { path: s.clone() },
        Some(_) => {
            errors.push(ConfigError::new(at("probe"), "must be \"tcp\" or an HTTP path starting with '/', e.g. \"/healthz\""));
            Probe::Tcp
        }
    };
    let port = match t.get("port") {
        None => None,
        Some(Value::Integer(0)) => None,
        Some(Value::Integer(p)) if (1..=65535).contains(p) => u16::try_from(*p).ok(),
        Some(_) => {
            errors.push(ConfigError::new(at("port"), "must be a port number from 1 to 65535 (or 0: pick a free one)"));
            None
        }
    };
    let cwd = match t.get("cwd") {
        None => base_dir.to_path_buf(),
        Some(Value::String(s)) => base_dir.join(s),
        Some(_) => {
            errors.push(ConfigError::new(at("cwd"), "must be a string (a folder)"));
            PathBuf::new()
        }
    };
    let mut env = Vec::new();
    match t.get("env") {
        None => {}
        Some(Value::Table(vars)) => {
            for (k, v) in vars {
                let valid_name = !k.is_empty() && !k.bytes().any(|b| b == b'=' || b == 0 || b.is_ascii_whitespace());
                match flat(v) {
                    // The port wakegate picks is the one it probes and forwards to.
                    _ if k == "PORT" => errors.push(ConfigError::new(
                        at("env.PORT"),
                        "is set by wakegate (the port it probes and forwards to); use `port = N` to fix it",
                    )),
                    _ if !valid_name => {
                        errors.push(ConfigError::new(at(&format!("env.{k}")), "not a variable name (empty, or with '=', a space or NUL)"))
                    }
                    Ok(s) if s.contains('\0') => errors.push(ConfigError::new(at(&format!("env.{k}")), "contains a NUL byte")),
                    Ok(s) => env.push((k.clone(), s)),
                    Err(reason) => errors.push(ConfigError::new(at(&format!("env.{k}")), reason)),
                }
            }
        }
        Some(_) => errors.push(ConfigError::new(at("env"), "must be a table, e.g. env = { MODEL = \"small\" }")),
    }
    (errors.len() == start).then_some(ProcessSpec { argv, cwd, env, port, probe })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GOOD: &str = r#"
[settings]
base-domain = "aim.test"
idle-timeout = "10m"
max-held-requests = 50

[[solution]]
name = "nlp"
command = "python3 nlp.py --port {port}"
probe = "/healthz"
idle-timeout = "2s"

[[solution]]
name = "ext"
upstream = "http://127.0.0.1:9000"
"#;

    #[test]
    fn a_bare_file_name_is_in_the_current_folder() {
        assert_eq!(folder_of(Path::new("wakegate.toml")), Path::new("."));
        assert_eq!(folder_of(Path::new("examples/wakegate.toml")), Path::new("examples"));
        assert_eq!(folder_of(Path::new("/etc/wakegate.toml")), Path::new("/etc"));
    }

    #[test]
    fn a_string_command_means_what_it_means_to_sh() {
        let script = |s: &str| shell(s).pop().unwrap_or_default();
        assert_eq!(script("python3 app.py --port={port} -w 2"), "exec python3 app.py --port={port} -w 2", "one plain command");
        for s in [
            "cd /srv/app && python3 app.py",
            "DELAY=0 python3 app.py",
            "echo x; exit 3",
            "a | b",
            "python3 app.py > log 2>&1",
            "run \"$HOME\"",
        ] {
            assert_eq!(script(s), s, "as sh reads it");
        }
    }

    #[test]
    fn parses_a_good_file() {
        let c = Config::parse(GOOD, Path::new("/etc/wg")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.settings.base_domain, "aim.test");
        assert_eq!(c.solutions.len(), 2);
        let nlp = &c.solutions[0];
        assert_eq!(nlp.settings.idle_timeout, Duration::from_secs(2));
        assert_eq!(nlp.settings.max_held_requests.get(), 50, "inherits the global default");
        let Backend::Process(p) = &nlp.backend else { panic!("process") };
        assert_eq!(p.argv, ["/bin/sh", "-c", "exec python3 nlp.py --port {port}"]);
        assert_eq!(p.cwd, Path::new("/etc/wg"));
        assert_eq!(c.solutions[1].settings.idle_timeout, Duration::from_secs(600));
    }

    #[test]
    fn reports_every_bad_key() {
        let bad = r#"
[settings]
idle-timeout = "forever"
listen = 8080

[[solution]]
name = "Bad_Name"
command = []

[[solution]]
name = "ok"
upstream = "ftp://x"
hold-timeout = "0"
base-domain = "x.test"
"#;
        let e = Config::parse(bad, Path::new(".")).unwrap_err();
        assert_eq!(
            e.keys(),
            [
                "settings.idle-timeout",
                "settings.listen",
                "solution.Bad_Name.name",
                "solution.Bad_Name.command",
                "solution.ok.base-domain",
                "solution.ok.hold-timeout",
                "solution.ok.upstream",
            ]
        );
    }

    #[test]
    fn says_what_is_wrong_where_it_is() {
        let bad = "[[solution]]\nname = 5\nupstream = 'http://x'\n\
                   [[solution]]\nname = 'a'\nupstream = 'http://a b:80'\ntls-source = 'off'\n\
                   [[solution]]\nname = 'b'\nupstream = 'http://x#frag'\n";
        let e = Config::parse(bad, Path::new(".")).unwrap_err();
        let reason = |key: &str| e.0.iter().find(|c| c.key == key).map(|c| c.reason.clone()).unwrap_or_default();
        assert!(reason("solution[0].name").contains("must be a string"), "{e}");
        assert!(reason("solution.a.tls-source").contains("a global setting"), "{e}");
        assert!(reason("solution.a.upstream").contains("space"), "{e}");
        assert!(reason("solution.b.upstream").contains("fragment"), "{e}");
    }

    #[test]
    fn syntax_errors_say_where() {
        let e = Config::parse("[settings\n", Path::new(".")).unwrap_err();
        assert!(e.0[0].reason.contains("line 1"), "{e}");
    }

    #[test]
    fn duplicate_names() {
        let e = Config::parse("[[solution]]\nname='a'\nupstream='http://x'\n[[solution]]\nname='a'\nupstream='http://y'\n", Path::new("."))
            .unwrap_err();
        assert_eq!(e.keys(), ["solution.a.name"]);
    }
}
