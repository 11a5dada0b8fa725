//! API tokens: making them, and the in-memory view of the stored ones that every
//! authenticated request is checked against without touching the store.
//!
//! A token is `sky_` and 32 random bytes in URL-safe base64 (43 characters). Only its
//! SHA-256 is kept, in the store and here. A presented token is hashed and looked up by that
//! hash: what a lookup's timing could tell is how the hash of a guess compares with stored
//! hashes, which says nothing about any token (finding a token from its hash is a preimage
//! search), so the lookup needs no constant-time scan. The view is reloaded from the store on
//! every create and revoke (and at start, by `restore`).
//!
//! A token made for AWS SDK callers (`sigv4`) also has its signing secret here (the token
//! itself, decrypted from the store at reload), found by the token's name, which is the
//! SigV4 access key id (see `crate::lambda::sigv4`).
//!
//! The time of last use is kept here and written to the store at most once a minute per
//! token, off the request path; listings overlay the in-memory time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use skyfri_core::auth::Scope;
use skyfri_store::{Store, StoreError, TokenRecord};

/// What every skyfri token starts with (and what the gateway never forwards to functions).
pub const PREFIX: &str = "sky_";
/// How often a token's last use is written to the store, at most.
const TOUCH_EVERY_SECS: i64 = 60;

/// SHA-256 of a presented token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new token and its hash.
pub fn generate() -> Result<(String, [u8; 32]), StoreError> {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| StoreError::Random(e.to_string()))?;
    let token = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let h = hash(&token);
    Ok((token, h))
}

/// A stored token as requests see it.
#[derive(Debug)]
pub struct Token {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Unix seconds of the last use; 0 for none since the gateway started.
    last_used: AtomicI64,
    /// Unix seconds of the last use written to the store.
    saved: AtomicI64,
}

impl Token {
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Notes a use; writes it to the store (in the background) when the stored time is old.
    pub fn used(&self, store: &Arc<Store>) {
        let now = Utc::now().timestamp();
        self.last_used.store(now, Ordering::Relaxed);
        let saved = self.saved.load(Ordering::Relaxed);
        if now - saved < TOUCH_EVERY_SECS
            || self
                .saved
                .compare_exchange(saved, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (store, name) = (Arc::clone(store), self.name.clone());
        let at = DateTime::from_timestamp(now, 0).unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.touch_token(&name, at) {
                tracing::warn!(token = %name, error = %e, "could not record the token's last use");
            }
        });
    }

    fn last_used(&self) -> Option<DateTime<Utc>> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            t => DateTime::from_timestamp(t, 0),
        }
    }
}

/// A SigV4 signing secret, kept out of `Debug` output.
pub struct SigningSecret(Vec<u8>);

impl SigningSecret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

/// A token with a SigV4 secret, and the secret.
pub type SigV4Credential = (Arc<Token>, Arc<SigningSecret>);

/// The stored tokens by hash, and those with a SigV4 secret by name.
#[derive(Default)]
pub struct Tokens {
    by_hash: RwLock<HashMap<[u8; 32], Arc<Token>>>,
    by_access_key: RwLock<HashMap<String, SigV4Credential>>,
}

impl Tokens {
    /// Reads the tokens from the store again, keeping the last-use times noted so far. A
    /// stored token whose scopes no longer parse is left out (it grants nothing).
    pub fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let records = store.list_tokens()?;
        let mut secrets: HashMap<String, Vec<u8>> = HashMap::new();
        for (name, secret) in store.token_sigv4_secrets()? {
            match secret {
                Ok(s) => {
                    secrets.insert(name, s);
                }
                Err(e) => {
                    tracing::error!(token = %name, error = %e, "token's SigV4 secret does not open; the token works as a bearer token only")
                }
            }
        }
        let (Ok(mut map), Ok(mut by_key)) = (self.by_hash.write(), self.by_access_key.write())
        else {
            return Err(StoreError::Poisoned);
        };
        by_key.clear();
        let old: HashMap<String, Arc<Token>> =
            map.drain().map(|(_, t)| (t.name.clone(), t)).collect();
        for r in records {
            let scopes = match Scope::parse_all(&r.scopes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(token = %r.name, error = %e, "stored token has bad scopes; it is ignored");
                    continue;
                }
            };
            let stored_use = r.last_used.map_or(0, |t| t.timestamp());
            let noted = old
                .get(&r.name)
                .map_or(0, |t| t.last_used.load(Ordering::Relaxed));
            let token = Arc::new(Token {
                name: r.name,
                scopes,
                expires_at: r.expires_at,
                last_used: AtomicI64::new(noted.max(stored_use)),
                saved: AtomicI64::new(stored_use),
            });
            if let Some(secret) = secrets.remove(&token.name) {
                by_key.insert(
                    token.name.clone(),
                    (Arc::clone(&token), Arc::new(SigningSecret(secret))),
                );
            }
            map.insert(r.hash, token);
        }
        Ok(())
    }

    /// The token whose name is a SigV4 access key id, and its signing secret; `None` when
    /// there is no such token or it was made without a SigV4 secret.
    pub fn by_access_key(&self, key_id: &str) -> Option<SigV4Credential> {
        self.by_access_key.read().ok()?.get(key_id).cloned()
    }

    /// The token a presented one is, if any (expired ones too: the caller says why).
    pub fn find(&self, presented: &str) -> Option<Arc<Token>> {
        self.find_hash(&hash(presented))
    }

    /// The token whose hash is `h` (a dashboard session keeps only the hash).
    pub fn find_hash(&self, h: &[u8; 32]) -> Option<Arc<Token>> {
        self.by_hash.read().ok()?.get(h).cloned()
    }

    /// A stored record with the last use noted in memory.
    pub fn overlay(&self, mut r: TokenRecord) -> TokenRecord {
        let noted = self
            .by_hash
            .read()
            .ok()
            .and_then(|m| m.get(&r.hash).and_then(|t| t.last_used()));
        if noted > r.last_used {
            r.last_used = noted;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_found_by_hash() -> Result<(), StoreError> {
        let (a, ha) = generate()?;
        let (b, _) = generate()?;
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 43, "{a}");
        assert_eq!(hash(&a), ha);

        let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
        let store = Store::open(&dir.path().join("skyfri.db"))?;
        store.create_token(
            &TokenRecord {
                name: "ci".into(),
                hash: ha,
                scopes: vec!["read".into()],
                created_at: Utc::now(),
                expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
                last_used: None,
                sigv4: false,
            },
            None,
        )?;
        store.create_token(
            &TokenRecord {
                name: "sdk".into(),
                hash: hash(&b),
                scopes: vec!["invoke:f".into()],
                created_at: Utc::now(),
                expires_at: None,
                last_used: None,
                sigv4: false,
            },
            Some(b.as_bytes()),
        )?;
        let tokens = Tokens::default();
        tokens.reload(&store)?;
        let found = tokens
            .find(&a)
            .map(|t| (t.name.clone(), t.expired(Utc::now())));
        assert_eq!(found, Some(("ci".to_string(), true)));
        assert!(
            tokens.by_access_key("ci").is_none(),
            "made without a SigV4 secret"
        );
        let sdk = tokens.by_access_key("sdk");
        assert!(sdk.is_some_and(|(t, s)| t.name == "sdk" && s.bytes() == b.as_bytes()));
        store.revoke_token("ci")?;
        store.revoke_token("sdk")?;
        tokens.reload(&store)?;
        assert!(tokens.find(&a).is_none(), "a revoked token is gone at once");
        assert!(tokens.by_access_key("sdk").is_none());
        Ok(())
    }
}
