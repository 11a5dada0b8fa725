//! The store as the runtime's source of secret values: the provider reads a function's
//! secrets through this when it starts a replica.

use std::sync::Arc;

use skyfri_runtime::SecretSource;
use skyfri_store::Store;

/// Decrypts secrets from the store for the provider.
pub struct StoreSecrets(pub Arc<Store>);

impl SecretSource for StoreSecrets {
    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.get_secret(name).map_err(|e| e.to_string())
    }
}
