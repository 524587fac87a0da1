//! `ferry keys create|list|revoke`: API keys managed in the database directly, without a server
//! (how the first key is made). Uses the same [`KeyRing`] as `/v1/keys`.

use std::io::Write;

use anyhow::{Context, anyhow};

use crate::{
    cli::KeysCommand,
    config::Settings,
    ids::KeyId,
    service::keys::{KeyRequest, KeyRing},
    storage::Db,
    tenancy::{Scopes, Tenant},
    time::{now_ms, to_rfc3339},
};

/// Keys listed by `ferry keys list` (all of them, in pages of this many).
const LIST_PAGE: u64 = 200;

pub async fn run(action: KeysCommand, settings: &Settings) -> anyhow::Result<()> {
    let db = Db::connect(&settings.database_url()).await?;
    db.migrate().await?;
    // Opening the server is not this command's business.
    let keys = KeyRing::new(db, false);
    let failed = |e: crate::service::ServiceError| anyhow!("{}", e.detail);
    match action {
        KeysCommand::Create {
            tenant,
            name,
            scopes,
            expires_in,
        } => {
            let tenant = Tenant::parse(&tenant).map_err(|msg| anyhow!(msg))?;
            let scopes = if scopes.is_empty() {
                Scopes::default_set()
            } else {
                Scopes::parse_all(&scopes).map_err(|msg| anyhow!(msg))?
            };
            let expires_at_ms = expires_in
                .map(|d| i64::try_from(d.as_millis()).map(|ms| now_ms().saturating_add(ms)))
                .transpose()
                .context("--expires-in is too long")?;
            let new = keys
                .create(KeyRequest {
                    tenant,
                    name,
                    scopes,
                    expires_at_ms,
                })
                .await
                .map_err(failed)?;
            eprintln!(
                "ferry: created key {} for tenant {} with scopes {}{}; it is shown once, below",
                KeyId(new.row.id),
                new.row.tenant,
                new.row.scopes,
                new.row
                    .expires_at_ms
                    .map(|at| format!(", expiring {}", to_rfc3339(at)))
                    .unwrap_or_default()
            );
            println!("{}", new.secret);
        }
        KeysCommand::List { tenant } => {
            let tenant = tenant
                .map(|t| Tenant::parse(&t).map_err(|msg| anyhow!(msg)))
                .transpose()?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<36}  {:<16}  {:<12}  {:<8}  {:<24}  {:<25}  NAME",
                "ID", "TENANT", "PREFIX", "STATE", "LAST USED", "SCOPES"
            )?;
            let mut after = None;
            loop {
                let (rows, more) = keys
                    .list(tenant.as_ref(), after, LIST_PAGE)
                    .await
                    .map_err(failed)?;
                for row in &rows {
                    let state = KeyRing::state(row).as_str();
                    writeln!(
                        out,
                        "{:<36}  {:<16}  {:<12}  {:<8}  {:<24}  {:<25}  {}",
                        KeyId(row.id).to_string(),
                        row.tenant,
                        row.prefix,
                        state,
                        row.last_used_at_ms
                            .map(to_rfc3339)
                            .unwrap_or("never".into()),
                        row.scopes,
                        row.name
                    )?;
                }
                match rows.last() {
                    Some(last) if more => after = Some(last.id),
                    _ => break,
                }
            }
        }
        KeysCommand::Revoke { id } => {
            let key =
                KeyId::parse(&id).ok_or_else(|| anyhow!("{id:?} is not an API key id (key_…)"))?;
            keys.revoke(None, key, None).await.map_err(failed)?;
            eprintln!("ferry: key {key} is revoked");
        }
    }
    Ok(())
}
