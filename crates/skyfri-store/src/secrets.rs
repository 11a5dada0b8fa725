//! Secret values at rest.
//!
//! Each value is sealed with AES-256-GCM under the install's key and a fresh random 96-bit
//! nonce per write; the nonce is stored beside the ciphertext (which carries the 16-byte tag).
//! The secret's name is the associated data, so a ciphertext copied to another name does not
//! open. Names are only ever stored in the clear.
//!
//! The key is 32 bytes from the OS's randomness in `secret.key` beside the database (mode
//! 0600), made at the first open. Losing it loses every secret: back it up with the database.
//! A check value sealed under the key, kept in `secret_key_check`, lets `Store::open` refuse a
//! key the stored secrets were not written with, so a read that fails later means the record
//! itself was altered.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce};
use rand::rngs::OsRng;
use rand::TryRngCore;
use rusqlite::{params, Connection, OptionalExtension};
use skyfri_core::validate_secret_name;

use crate::{restrict, Store, StoreError};

/// The key file's name, beside the database.
pub(crate) const KEY_FILE: &str = "secret.key";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// Associated data of the check value; never a secret's, since a space is not valid in a name.
const CHECK_AAD: &[u8] = b"skyfri key check";

/// The install's secret key, ready to seal and open values.
pub(crate) struct SecretKey {
    cipher: Aes256Gcm,
    path: PathBuf,
}

pub(crate) struct Sealed {
    pub(crate) nonce: [u8; NONCE_LEN],
    pub(crate) ciphertext: Vec<u8>,
}

impl SecretKey {
    /// Loads the key at `path` and checks it against the stored secrets. Makes a new key when
    /// there is none and no secret needs the old one.
    pub(crate) fn open(conn: &Connection, path: &Path) -> Result<SecretKey, StoreError> {
        // Secrets, and the tokens whose SigV4 signing secret is sealed under the key.
        let stored: u64 = conn.query_row(
            "SELECT (SELECT count(*) FROM secrets)
                  + (SELECT count(*) FROM tokens WHERE sigv4_secret IS NOT NULL)",
            [],
            |r| r.get(0),
        )?;
        let key = match read_key(path)? {
            Some(key) => key,
            None if stored > 0 => {
                return Err(StoreError::SecretKey {
                    path: path.to_path_buf(),
                    reason: format!(
                        "is missing, and the database holds {stored} secret(s) encrypted with it; put the key file back (without it they cannot be read)"
                    ),
                })
            }
            None => create_key(path)?,
        };
        let key = SecretKey {
            cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(key)),
            path: path.to_path_buf(),
        };
        let check: Option<(Vec<u8>, Vec<u8>)> = conn
            .query_row(
                "SELECT nonce, ciphertext FROM secret_key_check WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let matches = check.is_some_and(|(nonce, ct)| key.unseal(CHECK_AAD, &nonce, &ct).is_some());
        if !matches {
            if stored > 0 {
                return Err(StoreError::SecretKey {
                    path: key.path,
                    reason: "is not the key the stored secrets were encrypted with; put the original key file back (without it they cannot be read)".into(),
                });
            }
            // No secret depends on the old check value: this key is the install's key now.
            let sealed = key.seal(CHECK_AAD, &[])?;
            conn.execute(
                "INSERT OR REPLACE INTO secret_key_check (id, nonce, ciphertext) VALUES (1, ?1, ?2)",
                params![sealed.nonce, sealed.ciphertext],
            )?;
        }
        Ok(key)
    }

    pub(crate) fn seal(&self, aad: &[u8], msg: &[u8]) -> Result<Sealed, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| StoreError::Random(e.to_string()))?;
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg, aad })
            .map_err(|_| StoreError::Seal)?;
        Ok(Sealed { nonce, ciphertext })
    }

    /// The plaintext, or `None` when the record does not authenticate under this key.
    pub(crate) fn unseal(&self, aad: &[u8], nonce: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

/// The key file's 32 bytes, `None` if there is no file. Tightens a too-open mode to 0600.
fn read_key(path: &Path) -> Result<Option<[u8; KEY_LEN]>, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    restrict(path)?;
    let len = file.metadata().map_err(io)?.len();
    let mut bytes = Vec::with_capacity(KEY_LEN);
    file.take(KEY_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| StoreError::SecretKey {
        path: path.to_path_buf(),
        reason: format!(
            "must hold exactly {KEY_LEN} bytes, not {len}; put the original key file back (or, if no secret was ever stored, delete it to have a new one made)"
        ),
    })?;
    Ok(Some(key))
}

/// Writes a new random key. The key appears whole or not at all (written aside, then
/// hard-linked into place), and never replaces one another process made meanwhile.
fn create_key(path: &Path) -> Result<[u8; KEY_LEN], StoreError> {
    let mut key = [0u8; KEY_LEN];
    OsRng
        .try_fill_bytes(&mut key)
        .map_err(|e| StoreError::Random(e.to_string()))?;
    let tmp = path.with_file_name(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    let io = |source| StoreError::Io {
        path: tmp.clone(),
        source,
    };
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(&key)?;
            f.sync_all()
        });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => read_key(path)?.ok_or_else(|| io(e)),
        Err(e) => Err(io(e)),
    }
}

impl Store {
    /// Creates or replaces a secret.
    pub fn put_secret(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let sealed = self.seal_secret(name, value)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO secrets (name, nonce, ciphertext) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext",
                params![name, sealed.nonce, sealed.ciphertext],
            )?;
            Ok(())
        })
    }

    /// Creates a secret; false (and nothing changed) if it already exists.
    pub fn create_secret(&self, name: &str, value: &[u8]) -> Result<bool, StoreError> {
        let sealed = self.seal_secret(name, value)?;
        self.with(|c| {
            Ok(c.execute(
                "INSERT INTO secrets (name, nonce, ciphertext) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO NOTHING",
                params![name, sealed.nonce, sealed.ciphertext],
            )? > 0)
        })
    }

    /// Replaces an existing secret's value; false if there is no such secret.
    pub fn update_secret(&self, name: &str, value: &[u8]) -> Result<bool, StoreError> {
        let sealed = self.seal_secret(name, value)?;
        self.with(|c| {
            Ok(c.execute(
                "UPDATE secrets SET nonce = ?2, ciphertext = ?3 WHERE name = ?1",
                params![name, sealed.nonce, sealed.ciphertext],
            )? > 0)
        })
    }

    /// The decrypted value, `None` if there is no such secret.
    pub fn get_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self.with(|c| {
            Ok(c.query_row(
                "SELECT nonce, ciphertext FROM secrets WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })?;
        row.map(|(nonce, ciphertext)| {
            self.secret_key
                .unseal(name.as_bytes(), &nonce, &ciphertext)
                .ok_or_else(|| StoreError::SecretAltered {
                    name: name.to_string(),
                })
        })
        .transpose()
    }

    /// Secret names, sorted; never values.
    pub fn list_secrets(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT name FROM secrets ORDER BY name")?;
            let names = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(names)
        })
    }

    /// Removes a secret; false if there was none.
    pub fn remove_secret(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM secrets WHERE name = ?1", [name])? > 0))
    }

    /// The name becomes a file name in replicas, so only valid names are stored.
    fn seal_secret(&self, name: &str, value: &[u8]) -> Result<Sealed, StoreError> {
        validate_secret_name(name).map_err(StoreError::InvalidName)?;
        self.secret_key.seal(name.as_bytes(), value)
    }
}

#[cfg(test)]
mod tests;
