//! `/v1/keys`: a tenant's admins make, list, read and revoke the tenant's API keys (a revoked key
//! stays, to be listed; revoking is a change of state, not a deletion). Keys of
//! other tenants are not reachable here (`ferry keys` on the command line manages every
//! tenant's, for bootstrap).

use actix_web::{HttpRequest, HttpResponse, http::header, web};

use super::{
    jobs::json_request,
    paging::{Page, PageQuery, next_cursor},
    problem::ApiError,
    uploads::closing,
    wire::keys::{KeyIn, KeyList, KeyOut},
};
use crate::{
    error_code::ErrorCode,
    ids::KeyId,
    service::{ServiceError, Services, keys::KeyRequest},
    tenancy::{Caller, Scope, Scopes},
    time::parse_rfc3339,
};

fn parse_key_id(text: &str) -> Result<KeyId, ApiError> {
    KeyId::parse(text).ok_or_else(|| {
        ApiError::new(
            ErrorCode::KeyNotFound,
            format!("{text:?} is not an API key id (key_…)"),
        )
    })
}

/// The scopes a request names, checked (absent: the default set; empty stays empty, which
/// creation refuses).
/// Operator scopes are refused ([`Scope::OPERATOR`]): `kinds:write` moves every tenant's tags and
/// `metrics:read` counts every tenant's jobs, so only an operator grants them, on the command
/// line (`ferry keys create --scope …`), never a tenant's admin over the API.
fn scopes_of(names: Option<&[String]>) -> Result<Scopes, ServiceError> {
    let scopes = match names {
        None => Scopes::default_set(),
        Some(names) => {
            Scopes::parse_all(names).map_err(|msg| ServiceError::invalid("scopes", msg))?
        }
    };
    if let Some(scope) = Scope::OPERATOR.into_iter().find(|s| scopes.contains(*s)) {
        let what = match scope {
            Scope::KindsWrite => "moves every tenant's tags",
            _ => "reads every tenant's counts",
        };
        let name = scope.as_str();
        return Err(ServiceError::invalid(
            "scopes",
            format!(
                "{name} {what}: an operator grants it with `ferry keys create --scope {name}`, \
                 not the API"
            ),
        ));
    }
    Ok(scopes)
}

pub async fn create(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let created = async {
        let key_in: KeyIn = json_request(
            &services,
            &req,
            body,
            "the key request",
            "send the key as application/json: {\"name\": \"…\", \"scopes\": [\"jobs:read\"]}",
        )
        .await?;
        let expires_at_ms = match &key_in.expires_at {
            None => None,
            Some(text) => Some(parse_rfc3339(text).ok_or_else(|| {
                ServiceError::invalid("expires_at", "expires_at must be an RFC 3339 time")
            })?),
        };
        let new = services
            .keys
            .create(KeyRequest {
                tenant: caller.tenant.clone(),
                name: key_in.name,
                scopes: scopes_of(key_in.scopes.as_deref())?,
                expires_at_ms,
            })
            .await?;
        let out = KeyOut {
            key: Some(new.secret),
            ..KeyOut::of(&new.row)
        };
        Ok::<_, ApiError>(
            HttpResponse::Created()
                .insert_header((header::LOCATION, format!("/v1/keys/{}", out.id)))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .json(out),
        )
    }
    .await;
    Ok(created.unwrap_or_else(closing))
}

pub async fn list(
    services: web::Data<Services>,
    caller: Caller,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = Page::parse(query.limit, query.next.as_deref(), |c| {
        KeyId::parse(c).map(|id| id.0)
    })?;
    let (rows, more) = services
        .keys
        .list(Some(&caller.tenant), page.after, page.limit)
        .await?;
    let next = next_cursor(&rows, more, |row| KeyId(row.id).to_string());
    Ok(HttpResponse::Ok().json(KeyList {
        items: rows.iter().map(KeyOut::of).collect(),
        next,
    }))
}

pub async fn get(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = services
        .keys
        .get(Some(&caller.tenant), parse_key_id(&id)?)
        .await?;
    Ok(HttpResponse::Ok().json(KeyOut::of(&row)))
}

/// Revokes the key: every replica refuses it within a second. It stays listed, as `revoked`.
pub async fn revoke(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = services
        .keys
        .revoke(Some(&caller.tenant), parse_key_id(&id)?, caller.key_id)
        .await?;
    Ok(HttpResponse::Ok().json(KeyOut::of(&row)))
}
