//! API tokens at rest: the SHA-256 of each token, never the token, with its name, scopes
//! and times. Tokens are 32 random bytes, so a plain hash is enough: there is nothing to
//! guess that a slow hash would protect.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};

use crate::{parse_time, time_text, Store, StoreError};

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// As given: `read`, `deploy`, `admin`, `invoke:NAME`.
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "name, hash, scopes, created_at, expires_at, last_used";

fn record(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let hash: Vec<u8> = r.get(1)?;
    let scopes: String = r.get(2)?;
    let time = |i: usize| -> rusqlite::Result<Option<DateTime<Utc>>> {
        Ok(r.get::<_, Option<String>>(i)?
            .as_deref()
            .and_then(parse_time))
    };
    Ok(TokenRecord {
        name: r.get(0)?,
        hash: hash.try_into().unwrap_or([0; 32]),
        scopes: scopes.split_whitespace().map(str::to_string).collect(),
        created_at: time(3)?.unwrap_or_default(),
        expires_at: time(4)?,
        last_used: time(5)?,
    })
}

impl Store {
    /// Stores a new token; false (and nothing changed) if one has that name.
    pub fn create_token(&self, t: &TokenRecord) -> Result<bool, StoreError> {
        skyfri_core::validate_name(&t.name).map_err(StoreError::InvalidName)?;
        self.with(|c| {
            Ok(c.execute(
                "INSERT INTO tokens (name, hash, scopes, created_at, expires_at, last_used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(name) DO NOTHING",
                params![
                    t.name,
                    t.hash.as_slice(),
                    t.scopes.join(" "),
                    time_text(t.created_at),
                    t.expires_at.map(time_text),
                    t.last_used.map(time_text),
                ],
            )? > 0)
        })
    }

    /// Every token, by name.
    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM tokens ORDER BY name"))?;
            let rows = stmt.query_map([], record)?.collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    pub fn get_token(&self, name: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM tokens WHERE name = ?1"),
                [name],
                record,
            )
            .optional()?)
        })
    }

    /// Removes a token; false if there was none.
    pub fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM tokens WHERE name = ?1", [name])? > 0))
    }

    /// Records when a token was last used (never earlier than what is stored).
    pub fn touch_token(&self, name: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE tokens SET last_used = ?2
                 WHERE name = ?1 AND (last_used IS NULL OR last_used < ?2)",
                params![name, time_text(at)],
            )?;
            Ok(())
        })
    }
}
