//! The command line: arguments, output format and exit codes.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use client_ip::config::FilterConfig;

use crate::load::{load_all, load_file, Deployment, Found, Plugin, Root};
use crate::{check, explain, resolve};

/// Exit codes: 0 fine, 1 an error (a refused configuration, bad input), 2 a
/// warning under `check --strict`.
const EXIT_ERROR: i32 = 1;
const EXIT_WARNING: i32 = 2;

#[derive(Parser)]
#[command(
    name = "client-ip",
    version,
    about = "Check, explain and try a client-ip configuration with the filter's own code",
    long_about = "Check, explain and try a client-ip configuration with the filter's own code.\n\nFILE is plugin JSON (a file named *.json, the HTTP filter's pluginConfig) or Istio WasmPlugin YAML (several documents per file; spec.pluginConfig is read, other kinds are skipped in a directory).\n\nExit status: 0 fine, 1 an error, 2 a warning under check --strict."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Parse each configuration as the filter does, and warn about risky trust.
    Check {
        /// Plugin JSON, WasmPlugin YAML, or a directory of *.yaml, *.yml and *.json files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Exit 2 when there is a warning (and no error).
        #[arg(long)]
        strict: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Where the filter runs, for plugin JSON (a WasmPlugin's selector or targetRefs say it otherwise).
        #[arg(long, value_enum)]
        deployment: Option<Deployment>,
    },
    /// Say who can choose the client under a configuration, what the application receives and what is counted.
    Explain {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Where the filter runs, for plugin JSON.
        #[arg(long, value_enum)]
        deployment: Option<Deployment>,
    },
    /// Decide one request with the filter's code: the walk, the client, the access decision, the headers after.
    Resolve {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The downstream peer: ADDR, ADDR:PORT, [V6]:PORT, or unknown.
        #[arg(long, value_name = "ADDR[:PORT]")]
        peer: String,
        /// The peer's mTLS identity (its URI SAN; Istio's principal form gets spiffe://).
        #[arg(long, value_name = "ID")]
        identity: Option<String>,
        /// A request header, `Name: value`; repeat for more, in order.
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The WasmPlugin (name or namespace/name) when the file holds several client_ip ones.
        #[arg(long, value_name = "NAME")]
        plugin: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return match error.use_stderr() {
                true => EXIT_ERROR,
                false => 0,
            };
        }
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("client-ip: error: {message}");
            EXIT_ERROR
        }
    }
}

fn run(command: Command) -> Result<i32, String> {
    match command {
        Command::Check {
            files,
            strict,
            format,
            deployment,
        } => {
            let found = load_all(&files, deployment);
            let report = check::report(&found);
            match format {
                Format::Text => {
                    for line in &report.lines {
                        println!("{line}");
                    }
                }
                Format::Json => println!("{}", report.json),
            }
            Ok(if report.errors > 0 {
                EXIT_ERROR
            } else if strict && report.warnings > 0 {
                EXIT_WARNING
            } else {
                0
            })
        }
        Command::Explain { file, deployment } => {
            let plugins = http_plugins(&file, deployment)?;
            let mut first = true;
            for plugin in plugins {
                let config = parse(&plugin)?;
                if !first {
                    println!();
                }
                first = false;
                print!("{}", explain::explain(&plugin, &config));
            }
            Ok(0)
        }
        Command::Resolve {
            file,
            peer,
            identity,
            headers,
            plugin,
            format,
        } => {
            let peer = resolve::parse_peer(&peer)?;
            let headers = resolve::Headers::parse(&headers)?;
            let identity = identity.as_deref().map(resolve::identity_uri);
            let plugin = one_plugin(http_plugins(&file, None)?, plugin.as_deref(), &file)?;
            let config = parse(&plugin)?;
            let outcome = resolve::run(&config, peer, identity.as_deref(), &headers);
            match format {
                Format::Text => print!("{}", resolve::text(&outcome, &config, peer)),
                Format::Json => println!("{}", resolve::json(&outcome, peer)),
            }
            Ok(0)
        }
    }
}

/// The HTTP filter's configurations in one file; an error when there is none.
fn http_plugins(file: &Path, deployment: Option<Deployment>) -> Result<Vec<Plugin>, String> {
    if file.is_dir() {
        return Err(format!("{}: a directory; name one file", file.display()));
    }
    let mut plugins = Vec::new();
    for found in load_file(file, deployment, false) {
        match found {
            Found::Plugin(plugin) if plugin.root == Root::Http => plugins.push(*plugin),
            Found::Plugin(_) | Found::Skipped { .. } => {}
            Found::Error { file, error } => return Err(format!("{file}: {error}")),
        }
    }
    if plugins.is_empty() {
        return Err(format!(
            "{}: no client_ip WasmPlugin in it (only the peer filter's, whose configuration is empty)",
            file.display()
        ));
    }
    Ok(plugins)
}

fn one_plugin(plugins: Vec<Plugin>, wanted: Option<&str>, file: &Path) -> Result<Plugin, String> {
    let names: Vec<String> = plugins.iter().filter_map(|p| p.manifest.clone()).collect();
    let mut matching: Vec<Plugin> = plugins
        .into_iter()
        .filter(|p| match (wanted, &p.manifest) {
            (None, _) => true,
            (Some(want), Some(manifest)) => {
                let name = manifest.trim_start_matches("WasmPlugin ");
                name == want || name.rsplit('/').next() == Some(want)
            }
            (Some(_), None) => false,
        })
        .collect();
    match matching.len() {
        1 => Ok(matching.remove(0)),
        0 => Err(format!(
            "{}: no client_ip WasmPlugin named {:?} (there are: {})",
            file.display(),
            wanted.unwrap_or_default(),
            names.join(", ")
        )),
        n => Err(format!(
            "{}: {n} client_ip WasmPlugins ({}); choose one with --plugin NAME",
            file.display(),
            names.join(", ")
        )),
    }
}

/// The filter's parser; its error is the line Envoy logs.
fn parse(plugin: &Plugin) -> Result<FilterConfig, String> {
    FilterConfig::from_json(&plugin.json)
        .map_err(|error| format!("{}: invalid plugin configuration: {error}", plugin.label()))
}
