//! The user's config file: the server URL and API token that `run`, `status`, `report`
//! and `suites` use when neither `--server`/`--token` nor `ISOTEST_SERVER`/`ISOTEST_TOKEN`
//! give them, so that a user does not repeat them:
//!
//! ```toml
//! # $XDG_CONFIG_HOME/isotest/config.toml (else ~/.config/isotest/config.toml)
//! server = "https://isotest.example.com"
//! token = "itk_…"
//! ```
//!
//! `ISOTEST_CONFIG` names another file. The file's token is sent only to the file's
//! server: a `--server` naming another one never receives it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::exit::Failure;

/// The fields of the config file; every one optional, no other allowed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The isotest server (producer) URL.
    pub server: Option<String>,
    /// The API token for that server.
    pub token: Option<String>,
}

/// A server to talk to, and the token to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub url: String,
    pub token: Option<String>,
}

/// Where the config file is: `ISOTEST_CONFIG`, else `$XDG_CONFIG_HOME/isotest/config.toml`,
/// else `$HOME/.config/isotest/config.toml`; `None` without any of them.
pub fn path_from(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(path) = set("ISOTEST_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let base = set("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("isotest").join("config.toml"))
}

/// Parses the text of the config file at `path`.
///
/// # Errors
///
/// Returns one line naming the file, the line and the field when the text is not a
/// valid config.
pub fn parse(path: &Path, text: &str) -> Result<UserConfig, String> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let mut line = format!("config file {}", path.display());
        if let Some(span) = e.span() {
            let start = span.start.min(text.len());
            let number = text[..start].matches('\n').count() + 1;
            line.push_str(&format!(", line {number}"));
            // The field is the key of that line, when the line has one.
            let text_line = text.lines().nth(number - 1).unwrap_or_default();
            if let Some((key, _)) = text_line.split_once('=') {
                let key = key.trim().trim_matches('"');
                if !key.is_empty() && !e.message().contains(&format!("`{key}`")) {
                    line.push_str(&format!(", field `{key}`"));
                }
            }
        }
        line.push_str(&format!(": {}", e.message().trim_end()));
        line
    })
}

/// Reads the config file; a file that does not exist is an empty config.
///
/// # Errors
///
/// Returns [`Failure::BadInput`] when the file cannot be read or is not a valid config.
pub fn load() -> Result<UserConfig, Failure> {
    let Some(path) = path_from(|name| std::env::var(name).ok()) else {
        return Ok(UserConfig::default());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UserConfig::default()),
        Err(e) => {
            return Err(Failure::BadInput(format!(
                "config file {}: cannot be read: {e}",
                path.display()
            )));
        }
    };
    let config = parse(&path, &text).map_err(Failure::BadInput)?;
    if config.token.is_some() && readable_by_others(&path) {
        eprintln!(
            "isotest: warning: config file {} holds a token and others can read it; `chmod 600` it",
            path.display()
        );
    }
    Ok(config)
}

fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
}

impl UserConfig {
    /// The server and token to use: `server` and `token` as given by flag or
    /// environment first, then this file's. The file's token goes only to the file's
    /// server.
    pub fn resolve(&self, server: Option<&str>, token: Option<&str>) -> Option<Server> {
        let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
        let url = server.or(self.server.as_deref())?.to_owned();
        let token = token.map(str::to_owned).or_else(|| {
            self.server
                .as_deref()
                .filter(|own| same(own, &url))
                .and(self.token.clone())
        });
        Some(Server { url, token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_found_where_xdg_says() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        type Vars = &'static [(&'static str, &'static str)];
        let cases: [(Vars, Option<&str>); 5] = [
            (
                &[("ISOTEST_CONFIG", "/etc/i.toml"), ("HOME", "/h")],
                Some("/etc/i.toml"),
            ),
            (
                &[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")],
                Some("/x/isotest/config.toml"),
            ),
            (
                &[("XDG_CONFIG_HOME", ""), ("HOME", "/h")],
                Some("/h/.config/isotest/config.toml"),
            ),
            (&[("HOME", "/h")], Some("/h/.config/isotest/config.toml")),
            (&[], None),
        ];
        for (vars, expected) in cases {
            assert_eq!(
                path_from(env(vars)),
                expected.map(PathBuf::from),
                "{vars:?}"
            );
        }
    }

    #[test]
    fn flags_and_environment_come_before_the_file_whose_token_stays_with_its_server() {
        let file = UserConfig {
            server: Some("https://ci.example/".into()),
            token: Some("itk_file".into()),
        };
        let server = |url: &str, token: Option<&str>| {
            Some(Server {
                url: url.into(),
                token: token.map(Into::into),
            })
        };
        assert_eq!(
            file.resolve(None, None),
            server("https://ci.example/", Some("itk_file"))
        );
        assert_eq!(
            file.resolve(Some("https://ci.example"), None),
            server("https://ci.example", Some("itk_file"))
        );
        assert_eq!(
            file.resolve(None, Some("itk_flag")),
            server("https://ci.example/", Some("itk_flag"))
        );
        assert_eq!(
            file.resolve(Some("http://other:8080"), None),
            server("http://other:8080", None),
            "another server never gets the file's token"
        );
        assert_eq!(UserConfig::default().resolve(None, Some("t")), None);
    }

    #[test]
    fn a_malformed_file_is_one_line_naming_file_line_and_field() {
        let path = Path::new("/home/u/.config/isotest/config.toml");
        let cases = [
            ("server = 3\n", "malformed_type"),
            ("server = \"http://h\"\nsrever = \"x\"\n", "unknown_field"),
            ("server = \"http://h\n", "bad_toml"),
        ];
        for (text, name) in cases {
            let line = parse(path, text).expect_err(name);
            assert!(!line.contains('\n'), "{line}");
            insta::assert_snapshot!(name, line);
        }
        assert_eq!(
            parse(path, "server = \"http://h\"\n"),
            Ok(UserConfig {
                server: Some("http://h".into()),
                token: None
            })
        );
    }
}
