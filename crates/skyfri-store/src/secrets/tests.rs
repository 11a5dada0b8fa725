//! Secrets at rest: round trip, nothing in the clear on disk, wrong keys and altered records.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use tempfile::TempDir;

use crate::{Store, StoreError};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const VALUE: &[u8] = b"hunter2-correct-horse-battery-staple";

fn setup() -> Result<(TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("skyfri.db");
    Ok((dir, db))
}

fn mode(p: &Path) -> Result<u32> {
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
}

/// Every file of the database, WAL included: the value may sit in either.
fn db_bytes(db: &Path) -> Result<Vec<u8>> {
    let mut all = std::fs::read(db)?;
    for suffix in ["-wal", "-shm"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", db.display())) {
            all.extend(b);
        }
    }
    Ok(all)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn round_trip_and_survive_reopen() -> Result {
    let (_dir, db) = setup()?;
    {
        let s = Store::open(&db)?;
        assert!(s.create_secret("api-key", VALUE)?);
        assert!(
            !s.create_secret("api-key", b"other")?,
            "create is create-only"
        );
        assert!(!s.update_secret("missing", b"x")?, "update is update-only");
        s.put_secret("db.password", b"")?;
        assert_eq!(s.get_secret("api-key")?.as_deref(), Some(VALUE));
        assert_eq!(s.get_secret("db.password")?.as_deref(), Some(&b""[..]));
        assert_eq!(s.get_secret("missing")?, None);
    }
    let s = Store::open(&db)?;
    assert_eq!(s.list_secrets()?, ["api-key", "db.password"]);
    assert_eq!(s.get_secret("api-key")?.as_deref(), Some(VALUE));
    assert!(s.update_secret("api-key", b"rotated")?);
    assert_eq!(s.get_secret("api-key")?.as_deref(), Some(&b"rotated"[..]));
    assert!(s.remove_secret("api-key")?);
    assert!(!s.remove_secret("api-key")?);
    assert_eq!(s.list_secrets()?, ["db.password"]);
    Ok(())
}

#[test]
fn nothing_in_the_clear_and_owner_only_files() -> Result {
    let (dir, db) = setup()?;
    let s = Store::open(&db)?;
    s.put_secret("api-key", VALUE)?;
    s.put_secret("api-key", VALUE)?;
    assert!(!contains(&db_bytes(&db)?, VALUE));
    assert!(
        contains(&db_bytes(&db)?, b"api-key"),
        "names are kept in the clear"
    );
    let key = dir.path().join("secret.key");
    assert_eq!(std::fs::read(&key)?.len(), 32);
    for file in [db.clone(), key, dir.path().join("skyfri.db-wal")] {
        assert_eq!(mode(&file)?, 0o600, "{}", file.display());
    }
    Ok(())
}

#[test]
fn each_write_has_its_own_nonce() -> Result {
    let (_dir, db) = setup()?;
    let s = Store::open(&db)?;
    s.put_secret("a", VALUE)?;
    s.put_secret("b", VALUE)?;
    let raw = Connection::open(&db)?;
    let rows: Vec<(Vec<u8>, Vec<u8>)> = raw
        .prepare("SELECT nonce, ciphertext FROM secrets")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0.len(), 12);
    assert_ne!(rows[0].0, rows[1].0);
    assert_ne!(rows[0].1, rows[1].1);
    assert_eq!(rows[0].1.len(), VALUE.len() + 16, "ciphertext and tag");
    Ok(())
}

#[test]
fn loose_modes_are_tightened() -> Result {
    let (dir, db) = setup()?;
    drop(Store::open(&db)?);
    let key = dir.path().join("secret.key");
    for f in [&db, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))?;
    }
    drop(Store::open(&db)?);
    assert_eq!(mode(&db)?, 0o600);
    assert_eq!(mode(&key)?, 0o600);
    Ok(())
}

#[test]
fn a_wrong_key_is_refused_at_open() -> Result {
    let (dir, db) = setup()?;
    Store::open(&db)?.put_secret("api-key", VALUE)?;
    let key = dir.path().join("secret.key");
    std::fs::write(&key, [7u8; 32])?;
    let err = Store::open(&db).err().ok_or("opened with the wrong key")?;
    assert!(matches!(err, StoreError::SecretKey { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&key.display().to_string()), "{msg}");
    assert!(
        msg.contains("is not the key the stored secrets were encrypted with"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn a_wrong_key_does_not_decrypt() -> Result {
    // Past the check at open (a record written under another key): the read fails.
    let (dir, db) = setup()?;
    let other = dir.path().join("other");
    std::fs::create_dir(&other)?;
    let other_db = other.join("skyfri.db");
    Store::open(&other_db)?.put_secret("api-key", VALUE)?;
    let s = Store::open(&db)?;
    s.put_secret("api-key", b"placeholder")?;
    let (nonce, ct): (Vec<u8>, Vec<u8>) = Connection::open(&other_db)?.query_row(
        "SELECT nonce, ciphertext FROM secrets WHERE name = 'api-key'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Connection::open(&db)?.execute(
        "UPDATE secrets SET nonce = ?1, ciphertext = ?2 WHERE name = 'api-key'",
        (nonce, ct),
    )?;
    let err = s
        .get_secret("api-key")
        .err()
        .ok_or("decrypted with the wrong key")?;
    assert!(
        err.to_string()
            .contains("secret \"api-key\" cannot be decrypted"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_missing_key_is_refused_while_secrets_need_it() -> Result {
    let (dir, db) = setup()?;
    let key = dir.path().join("secret.key");
    let s = Store::open(&db)?;
    s.put_secret("api-key", VALUE)?;
    drop(s);
    std::fs::remove_file(&key)?;
    let err = Store::open(&db).err().ok_or("opened without the key")?;
    assert!(err.to_string().contains("is missing"), "{err}");
    assert!(!key.exists(), "no new key replaces a lost one");

    // Once no secret needs the lost key, a new one is made.
    Connection::open(&db)?.execute("DELETE FROM secrets", [])?;
    let s = Store::open(&db)?;
    assert_eq!(mode(&key)?, 0o600);
    s.put_secret("api-key", VALUE)?;
    drop(s);
    assert_eq!(
        Store::open(&db)?.get_secret("api-key")?.as_deref(),
        Some(VALUE)
    );
    Ok(())
}

#[test]
fn a_short_key_file_is_refused() -> Result {
    let (dir, db) = setup()?;
    std::fs::write(dir.path().join("secret.key"), b"short")?;
    let err = Store::open(&db).err().ok_or("opened with a 5-byte key")?;
    assert!(
        err.to_string()
            .contains("must hold exactly 32 bytes, not 5"),
        "{err}"
    );
    Ok(())
}

#[test]
fn altered_or_swapped_records_do_not_decrypt() -> Result {
    let (_dir, db) = setup()?;
    let s = Store::open(&db)?;
    s.put_secret("a", VALUE)?;
    s.put_secret("b", b"another value")?;
    let raw = Connection::open(&db)?;

    // A flipped bit in the ciphertext.
    let mut ct: Vec<u8> =
        raw.query_row("SELECT ciphertext FROM secrets WHERE name = 'a'", [], |r| {
            r.get(0)
        })?;
    ct[0] ^= 1;
    raw.execute("UPDATE secrets SET ciphertext = ?1 WHERE name = 'a'", [&ct])?;
    let err = s.get_secret("a").err().ok_or("altered record decrypted")?;
    assert!(matches!(err, StoreError::SecretAltered { .. }), "{err:?}");
    assert!(err.to_string().contains("skyfri secret update a"), "{err}");

    // b's whole record moved under a's name: the name is authenticated.
    raw.execute(
        "UPDATE secrets SET (nonce, ciphertext) = (SELECT nonce, ciphertext FROM secrets WHERE name = 'b') WHERE name = 'a'",
        [],
    )?;
    assert!(s.get_secret("a").is_err(), "swapped record decrypted");
    assert_eq!(s.get_secret("b")?.as_deref(), Some(&b"another value"[..]));
    Ok(())
}

#[test]
fn invalid_names_are_not_stored() -> Result {
    let (_dir, db) = setup()?;
    let s = Store::open(&db)?;
    for bad in ["../x", "A", "", "a/b"] {
        assert!(matches!(
            s.put_secret(bad, VALUE),
            Err(StoreError::InvalidName(_))
        ));
    }
    assert!(s.list_secrets()?.is_empty());
    Ok(())
}

fn token(name: &str, hash: u8) -> crate::TokenRecord {
    crate::TokenRecord {
        name: name.into(),
        hash: [hash; 32],
        scopes: vec!["invoke:f".into()],
        created_at: chrono::Utc::now(),
        expires_at: None,
        last_used: None,
        sigv4: false,
    }
}

#[test]
fn sigv4_token_secrets_are_sealed_bound_to_their_name_and_need_the_key() -> Result {
    let (dir, db) = setup()?;
    {
        let s = Store::open(&db)?;
        assert!(s.create_token(&token("sdk", 1), Some(VALUE))?);
        assert!(s.create_token(&token("plain", 2), None)?);
        assert!(!contains(&db_bytes(&db)?, VALUE));
        let listed: Vec<_> = s.list_tokens()?.into_iter().map(|t| t.sigv4).collect();
        assert_eq!(listed, [false, true], "plain, sdk");
        let secrets: Vec<_> = s
            .token_sigv4_secrets()?
            .into_iter()
            .map(|(name, secret)| (name, secret.ok()))
            .collect();
        assert_eq!(secrets, [("sdk".to_string(), Some(VALUE.to_vec()))]);
        // A sealed secret moved to another token's name does not open.
        let raw = Connection::open(&db)?;
        raw.execute(
            "UPDATE tokens SET sigv4_nonce = (SELECT sigv4_nonce FROM tokens WHERE name = 'sdk'),
                               sigv4_secret = (SELECT sigv4_secret FROM tokens WHERE name = 'sdk')
             WHERE name = 'plain'",
            [],
        )?;
        let opened: Vec<_> = s
            .token_sigv4_secrets()?
            .into_iter()
            .map(|(name, secret)| (name, secret.map_err(|e| e.to_string())))
            .collect();
        assert!(
            matches!(&opened[..], [(p, Err(e)), (s, Ok(_))] if p == "plain" && s == "sdk" && e.contains("token \"plain\"")),
            "{opened:?}"
        );
        raw.execute(
            "UPDATE tokens SET sigv4_nonce = NULL, sigv4_secret = NULL WHERE name = 'plain'",
            [],
        )?;
    }
    // The key is needed as long as a token's secret is sealed under it.
    std::fs::write(dir.path().join("secret.key"), [7u8; 32])?;
    let err = Store::open(&db).err().ok_or("opened with the wrong key")?;
    assert!(matches!(err, StoreError::SecretKey { .. }), "{err:?}");
    Ok(())
}
