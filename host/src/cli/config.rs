//! `vista serve --config FILE` and `vista config check FILE`: a TOML file
//! with the same keys as the `serve` options.
//!
//! Its own module because the file is read before the command line is
//! parsed: its keys become the options' environment variables, so the file,
//! the environment and the command line are one set of options with one
//! order of precedence. The option definitions are the binary's own: it
//! passes the function that makes its command line.

use std::path::PathBuf;

use anyhow::Context;

/// `--config FILE` (or `--config=FILE`, or `VISTA_CONFIG`) of a `serve`
/// command line, looked up before the command line is parsed.
pub fn config_file_argument() -> Option<PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("serve") {
        return None;
    }
    args.iter()
        .enumerate()
        .find_map(|(i, arg)| match arg.strip_prefix("--config") {
            Some("") => args.get(i + 1).map(PathBuf::from),
            Some(rest) => rest.strip_prefix('=').map(PathBuf::from),
            None => None,
        })
        .or_else(|| std::env::var_os("VISTA_CONFIG").map(PathBuf::from))
}

/// Sets the environment variable of every `serve` option the file names
/// and the environment does not already set. Unknown keys are errors.
/// `command` makes the `vista` command line; its `serve` options are the
/// keys.
pub fn apply_config_file(
    file: &std::path::Path,
    command: impl Fn() -> clap::Command,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", file.display()))?;
    let command = command();
    let serve = command
        .find_subcommand("serve")
        .expect("the serve subcommand exists");
    for (key, value) in table {
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| anyhow::anyhow!("{}: unknown key {key:?}", file.display()))?;
        let env = arg.get_env().ok_or_else(|| {
            anyhow::anyhow!("{}: {key:?} cannot be set from a file", file.display())
        })?;
        if std::env::var_os(env).is_some() {
            continue;
        }
        let delimiter = arg.get_value_delimiter().unwrap_or(',');
        let scalar = |value: &toml::Value| match value {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            // `[[source]]`: `name` and `url`, as `--source NAME=URL`.
            toml::Value::Table(t) if key == "source" => {
                match (
                    t.get("name").and_then(|v| v.as_str()),
                    t.get("url").and_then(|v| v.as_str()),
                ) {
                    (Some(name), Some(url)) => Ok(format!("{name}={url}")),
                    _ => Err(anyhow::anyhow!(
                        "{}: each [[source]] needs a name and a url",
                        file.display()
                    )),
                }
            }
            other => Err(anyhow::anyhow!(
                "{}: {key:?} must be a string, number or boolean, not {}",
                file.display(),
                other.type_str()
            )),
        };
        let text = match &value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(&delimiter.to_string()),
            other => scalar(other)?,
        };
        // Single-threaded at this point: nothing else reads the environment.
        std::env::set_var(env, text);
    }
    Ok(())
}

/// `vista config check FILE`; `command` as for [`apply_config_file`]. It
/// is made again after the file is applied: an option reads its
/// environment variable when it is made.
pub fn check_config(
    file: &std::path::Path,
    command: impl Fn() -> clap::Command,
) -> anyhow::Result<()> {
    apply_config_file(file, &command)?;
    let matches = command()
        .try_get_matches_from(["vista", "serve"])
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let serve = matches.subcommand_matches("serve").expect("serve");
    let mut settings = serde_json::Map::new();
    for arg in command()
        .find_subcommand("serve")
        .expect("serve")
        .get_arguments()
    {
        let id = arg.get_id().as_str();
        let Some(values) = serve.get_raw(id) else {
            continue;
        };
        let values: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
        let secret = ["secret", "token", "key"]
            .iter()
            .any(|word| id.contains(word))
            && !id.ends_with("_ttl_secs")
            && id != "jwt_public_key";
        let shown: Vec<String> = values
            .iter()
            .map(|v| if secret { mask(v) } else { v.clone() })
            .collect();
        let name = arg.get_long().unwrap_or(id).to_owned();
        settings.insert(
            name,
            if shown.len() == 1 {
                serde_json::Value::String(shown[0].clone())
            } else {
                serde_json::json!(shown)
            },
        );
    }
    println!("{}", serde_json::to_string_pretty(&settings)?);
    Ok(())
}

/// A secret as its first two characters and stars.
fn mask(secret: &str) -> String {
    let keep: String = secret.chars().take(2).collect();
    format!("{keep}***")
}
