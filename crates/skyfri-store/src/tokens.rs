//! API tokens at rest: the SHA-256 of each token, never the token, with its name, scopes
//! and times. Tokens are 32 random bytes, so a plain hash is enough: there is nothing to
//! guess that a slow hash would protect.
//!
//! A token made for AWS SDK callers (SigV4) is also kept sealed with AES-256-GCM under
//! `secret.key`, as secrets are: SigV4 is an HMAC, so checking a signature takes the secret
//! itself, not a hash of it. The associated data is `skyfri sigv4 NAME` (a space never appears
//! in a secret's name), so a sealed token copied to another name or into `secrets` does not
//! open.

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
    /// A SigV4 signing secret is kept for it (read from the store; `create_token` takes the
    /// secret itself).
    pub sigv4: bool,
}

const COLUMNS: &str =
    "name, hash, scopes, created_at, expires_at, last_used, sigv4_secret IS NOT NULL";

/// A token's name and its SigV4 secret, or why that does not open.
pub type TokenSecret = (String, Result<Vec<u8>, StoreError>);

/// What a token's sealed SigV4 secret is bound to.
fn sigv4_aad(name: &str) -> Vec<u8> {
    format!("skyfri sigv4 {name}").into_bytes()
}

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
        sigv4: r.get(6)?,
    })
}

impl Store {
    /// Stores a new token, with its SigV4 signing secret sealed when one is given; false
    /// (and nothing changed) if one has that name.
    pub fn create_token(
        &self,
        t: &TokenRecord,
        sigv4_secret: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        skyfri_core::validate_name(&t.name).map_err(StoreError::InvalidName)?;
        let sealed = sigv4_secret
            .map(|s| self.secret_key.seal(&sigv4_aad(&t.name), s))
            .transpose()?;
        let (nonce, secret) = match &sealed {
            Some(s) => (Some(s.nonce.as_slice()), Some(s.ciphertext.as_slice())),
            None => (None, None),
        };
        self.with(|c| {
            Ok(c.execute(
                "INSERT INTO tokens (name, hash, scopes, created_at, expires_at, last_used,
                                     sigv4_nonce, sigv4_secret)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(name) DO NOTHING",
                params![
                    t.name,
                    t.hash.as_slice(),
                    t.scopes.join(" "),
                    time_text(t.created_at),
                    t.expires_at.map(time_text),
                    t.last_used.map(time_text),
                    nonce,
                    secret,
                ],
            )? > 0)
        })
    }

    /// The SigV4 signing secret of every token that has one, by token name, decrypted; a
    /// record that does not open (altered) is an error of its own, so the others still work.
    pub fn token_sigv4_secrets(&self) -> Result<Vec<TokenSecret>, StoreError> {
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, sigv4_nonce, sigv4_secret FROM tokens
                 WHERE sigv4_secret IS NOT NULL ORDER BY name",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })?;
        Ok(rows
            .into_iter()
            .map(|(name, nonce, sealed)| {
                let secret = self
                    .secret_key
                    .unseal(&sigv4_aad(&name), &nonce, &sealed)
                    .ok_or_else(|| StoreError::TokenAltered { name: name.clone() });
                (name, secret)
            })
            .collect())
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
