//! Where the client finds its server and key: defaults, then the client configuration file
//! (`--client-config`, or `$XDG_CONFIG_HOME/ferry/client.toml`, or
//! `~/.config/ferry/client.toml`), then `FERRY_SERVER` / `FERRY_API_KEY`, then the flags — the
//! same figment layering as the server's settings ([`crate::config`]).

use std::{path::PathBuf, time::Duration};

use clap::Args;
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use super::output::Failure;

/// Connection flags shared by every client command.
#[derive(Debug, Args, Clone, Default)]
pub struct Connection {
    /// Ferry server URL [env: FERRY_SERVER; config: server; default: http://127.0.0.1:8080].
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// API key, sent as `Authorization: Bearer KEY` [env: FERRY_API_KEY; config: api_key].
    #[arg(long, global = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Client configuration file (TOML with `server` and `api_key`); default
    /// $XDG_CONFIG_HOME/ferry/client.toml or ~/.config/ferry/client.toml when present.
    #[arg(long, global = true, env = "FERRY_CLIENT_CONFIG", value_name = "FILE")]
    pub client_config: Option<PathBuf>,
    /// Print one JSON document on stdout (for scripts) instead of text and progress bars.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The merged client settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSettings {
    pub server: String,
    pub api_key: Option<String>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            server: "http://127.0.0.1:8080".into(),
            api_key: None,
        }
    }
}

/// Only the flags that were given, so the others leave earlier sources alone.
#[derive(Serialize)]
struct Flags<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<&'a str>,
}

impl ClientSettings {
    pub fn load(conn: &Connection) -> Result<Self, Failure> {
        let mut figment = Figment::from(Serialized::defaults(ClientSettings::default()));
        match &conn.client_config {
            Some(path) if !path.exists() => {
                return Err(Failure::Usage(format!(
                    "client configuration file {} does not exist",
                    path.display()
                )));
            }
            Some(path) => figment = figment.merge(Toml::file(path)),
            None => {
                if let Some(path) = default_config_file() {
                    figment = figment.merge(Toml::file(path));
                }
            }
        }
        let flags = Flags {
            server: conn.server.as_deref(),
            api_key: conn.api_key.as_deref(),
        };
        let settings: ClientSettings = figment
            .merge(Env::prefixed("FERRY_").only(&["server", "api_key"]))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|err| Failure::Usage(format!("invalid client configuration: {err}")))?;
        let url = url::Url::parse(&settings.server).ok();
        if !url.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host()) {
            return Err(Failure::Usage(format!(
                "server {:?} is not an http:// or https:// URL",
                settings.server
            )));
        }
        Ok(settings)
    }

    /// The generated client for this server, sending the key on every request.
    pub fn client(&self) -> Result<ferry_client::Client, Failure> {
        use ferry_client::reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| Failure::Usage("the API key is not a valid header value".into()))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        // No overall timeout: uploads and downloads may take hours. A server that does not
        // answer the connection at all is reported quickly.
        let http = ferry_client::reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|err| Failure::Usage(format!("cannot set up the HTTP client: {err}")))?;
        Ok(ferry_client::Client::new_with_client(
            self.server.trim_end_matches('/'),
            http,
        ))
    }
}

fn default_config_file() -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(dir.join("ferry").join("client.toml")).filter(|p| p.exists())
}
