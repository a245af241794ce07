//! Account operations shared by the CLI, the admin API and SCIM. They work on the
//! store directly (so the CLI needs no running gateway); every change lands in the
//! change feed, which running gateways apply within a fraction of a second.

use crate::secrets;
use crate::{now, IdentityError};
use portcullis_store::identity::{new_id, ApiTokenRow, NewUser, UserRow};
use portcullis_store::Store;

/// Create the first signing key, or rotate when the current one is too old.
/// Returns the new key's id when it made one (for the audit log).
pub async fn ensure_signing_key(
    store: &Store,
    rotation_days: u64,
) -> Result<Option<String>, IdentityError> {
    let keys = store.signing_keys().await?;
    let active = keys
        .iter()
        .filter(|k| k.retired_at.is_none())
        .max_by_key(|k| k.created_at);
    let due = match active {
        None => true,
        Some(k) => rotation_days > 0 && now() - k.created_at > rotation_days as i64 * 86_400,
    };
    let rotated = if due {
        Some(rotate_signing_key(store).await?)
    } else {
        None
    };
    // Retired keys stay published a day, longer than any access token lives.
    store.drop_retired_keys(now() - 86_400).await?;
    Ok(rotated)
}

pub async fn rotate_signing_key(store: &Store) -> Result<String, IdentityError> {
    let k = crate::keys::generate_key(now()).map_err(IdentityError::Key)?;
    store.rotate_signing_key(&k).await?;
    tracing::info!(kid = %k.kid, "new token signing key");
    Ok(k.kid)
}

/// Create or update a local (password) user.
pub async fn upsert_local_user(
    store: &Store,
    username: &str,
    password: &str,
    admin: bool,
) -> Result<UserRow, IdentityError> {
    if username.trim().is_empty() || username.len() > 128 {
        return Err(IdentityError::Invalid(
            "username must be 1-128 characters".into(),
        ));
    }
    if password.chars().count() < 12 {
        return Err(IdentityError::Invalid(
            "password must have at least 12 characters".into(),
        ));
    }
    let pw = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || secrets::hash_password(&pw))
        .await
        .map_err(|e| IdentityError::Invalid(e.to_string()))?
        .map_err(IdentityError::Invalid)?;
    if let Some(u) = store.user_by_username(username).await? {
        if u.idp.as_deref() != Some("local") {
            return Err(IdentityError::Invalid(format!(
                "{username:?} exists and is not a local user"
            )));
        }
        let patch = portcullis_store::identity::UserPatch {
            password_hash: Some(hash),
            is_admin: Some(admin),
            active: Some(true),
            ..Default::default()
        };
        return store
            .update_user(&u.id, &patch)
            .await?
            .ok_or_else(|| IdentityError::Invalid("user vanished".into()));
    }
    Ok(store
        .create_user(&NewUser {
            kind: "user".into(),
            username: username.into(),
            idp: Some("local".into()),
            password_hash: Some(hash),
            is_admin: admin,
            ..Default::default()
        })
        .await?)
}

/// Check a local user's password; `None` when the user is unknown, disabled or
/// the password is wrong (the caller cannot tell which).
pub async fn check_local_password(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<Option<UserRow>, IdentityError> {
    Ok(
        match check_local_password_detail(store, username, password).await? {
            PasswordCheck::Ok(u) => Some(*u),
            _ => None,
        },
    )
}

/// How a password check ended, for the audit log (never for the person
/// signing in, who must not learn which usernames exist).
#[derive(Debug)]
pub enum PasswordCheck {
    Ok(Box<UserRow>),
    /// No user has this username.
    UnknownUser,
    /// The user signs in through an IdP or is a service account.
    NotLocal,
    /// The user exists and is disabled (whatever the password).
    Disabled,
    WrongPassword,
}

impl PasswordCheck {
    /// `bad_password`, `unknown_user`, `not_local`, `account_disabled`, or `ok`.
    pub fn reason(&self) -> &'static str {
        match self {
            PasswordCheck::Ok(_) => "ok",
            PasswordCheck::UnknownUser => "unknown_user",
            PasswordCheck::NotLocal => "not_local",
            PasswordCheck::Disabled => "account_disabled",
            PasswordCheck::WrongPassword => "bad_password",
        }
    }
}

/// As [`check_local_password`], saying why a check failed. Every path hashes,
/// so timing does not reveal which.
pub async fn check_local_password_detail(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<PasswordCheck, IdentityError> {
    let user = store.user_by_username(username).await?;
    let phc = user
        .as_ref()
        .filter(|u| u.active && u.idp.as_deref() == Some("local"))
        .and_then(|u| u.password_hash.clone())
        // Hash anyway so timing does not reveal whether the user exists.
        .unwrap_or_else(|| "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$7V4GNpV0D1ydeKMxw5Zd0Pku2bdT3f1nRUuTj3Lwp3M".into());
    let pw = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || secrets::verify_password(&pw, &phc))
        .await
        .unwrap_or(false);
    Ok(match user {
        None => PasswordCheck::UnknownUser,
        Some(u) if u.kind != "user" || u.idp.as_deref() != Some("local") => PasswordCheck::NotLocal,
        Some(u) if !u.active => PasswordCheck::Disabled,
        Some(u) if ok => PasswordCheck::Ok(Box::new(u)),
        Some(_) => PasswordCheck::WrongPassword,
    })
}

pub async fn create_service_account(
    store: &Store,
    name: &str,
    owner_id: Option<&str>,
) -> Result<UserRow, IdentityError> {
    if store.user_by_username(name).await?.is_some() {
        return Err(IdentityError::Invalid(format!("{name:?} already exists")));
    }
    Ok(store
        .create_user(&NewUser {
            kind: "service".into(),
            username: name.into(),
            idp: Some("local".into()),
            owner_id: owner_id.map(String::from),
            ..Default::default()
        })
        .await?)
}

/// Valid scope strings for API tokens.
pub fn check_scopes(scopes: &[String]) -> Result<(), IdentityError> {
    if scopes.is_empty() {
        return Err(IdentityError::Invalid(
            "a token needs at least one scope".into(),
        ));
    }
    for s in scopes {
        let ok = s == "admin"
            || s == "scim"
            || s == "vs:*"
            || s.strip_prefix("vs:").is_some_and(|v| !v.is_empty());
        if !ok {
            return Err(IdentityError::Invalid(format!(
                "unknown scope {s:?}: use vs:<virtual server>, vs:*, admin or scim"
            )));
        }
    }
    Ok(())
}

/// Issue a token for a user or service account. Returns the row and the secret,
/// which is shown once and never stored.
pub async fn create_api_token(
    store: &Store,
    user: &UserRow,
    name: &str,
    scopes: &[String],
    ttl_days: Option<u64>,
    max_ttl_days: u64,
) -> Result<(ApiTokenRow, String), IdentityError> {
    check_scopes(scopes)?;
    if !user.active {
        return Err(IdentityError::Invalid(format!(
            "{:?} is disabled",
            user.username
        )));
    }
    let days = ttl_days.unwrap_or(max_ttl_days.min(90));
    if days == 0 || days > max_ttl_days {
        return Err(IdentityError::Invalid(format!(
            "expiry must be between 1 and {max_ttl_days} days"
        )));
    }
    let prefix = if user.kind == "service" {
        secrets::SERVICE_PREFIX
    } else {
        secrets::PAT_PREFIX
    };
    let secret = secrets::random_token(prefix);
    let ts = now();
    let row = ApiTokenRow {
        id: new_id(),
        user_id: user.id.clone(),
        name: name.to_owned(),
        secret_hash: secrets::digest_hex(&secret),
        scopes: serde_json::to_string(scopes).unwrap_or_else(|_| "[]".into()),
        expires_at: Some(ts + days as i64 * 86_400),
        created_at: ts,
        revoked_at: None,
    };
    store.insert_api_token(&row).await?;
    Ok((row, secret))
}
