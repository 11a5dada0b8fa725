//! Who may do what: the scopes of API tokens, the scope each `/system` request needs, and the
//! `com.skyfri.auth` annotation that makes a function private. Pure rules; the gateway
//! enforces them.
//!
//! | scope | grants |
//! |---|---|
//! | `read` | GET on `/system/*`, except tokens and the audit log |
//! | `deploy` | `read`, plus deploy, update, remove and scale functions, and build uploads |
//! | `admin` | everything: secrets, tokens, the audit log, async-call control, every function |
//! | `invoke:NAME` | calling the private function NAME (`/function/NAME`, `/async-function/NAME`) |
//!
//! Basic auth as the admin user is `admin`. Functions are public unless annotated
//! `com.skyfri.auth: token`; a private one needs `invoke:NAME` or `admin`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::function::{validate_name, FunctionSpec};
use crate::scaling::{Place, PolicyError};

/// The annotation (or label) that makes a function private.
pub const AUTH_KEY: &str = "com.skyfri.auth";

/// One right a token carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Deploy,
    Admin,
    /// Calling one private function.
    Invoke(String),
}

impl Scope {
    /// `read`, `deploy`, `admin` or `invoke:NAME`.
    pub fn parse(s: &str) -> Result<Scope, String> {
        match s.trim() {
            "read" => Ok(Scope::Read),
            "deploy" => Ok(Scope::Deploy),
            "admin" => Ok(Scope::Admin),
            other => match other.strip_prefix("invoke:") {
                Some(name) => {
                    validate_name(name).map_err(|e| format!("scope {other:?}: function {e}"))?;
                    Ok(Scope::Invoke(name.to_string()))
                }
                None => Err(format!(
                    "scope {other:?} is unknown: use read, deploy, admin or invoke:FUNCTION"
                )),
            },
        }
    }

    /// Every scope of a list, sorted and without duplicates; at least one.
    pub fn parse_all<S: AsRef<str>>(list: &[S]) -> Result<Vec<Scope>, String> {
        let mut out = list
            .iter()
            .map(|s| Scope::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(
                "a token needs at least one scope: read, deploy, admin or invoke:FUNCTION".into(),
            );
        }
        Ok(out)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Read => f.write_str("read"),
            Scope::Deploy => f.write_str("deploy"),
            Scope::Admin => f.write_str("admin"),
            Scope::Invoke(name) => write!(f, "invoke:{name}"),
        }
    }
}

/// Whether a holder of `held` may do what needs `need`.
pub fn grants(held: &[Scope], need: &Scope) -> bool {
    let has = |s: &Scope| held.contains(s);
    has(&Scope::Admin)
        || match need {
            Scope::Read => has(&Scope::Read) || has(&Scope::Deploy),
            Scope::Deploy => has(&Scope::Deploy),
            Scope::Admin => false,
            Scope::Invoke(_) => has(need),
        }
}

/// The scope a `/system` request needs. Anything not granted to `read` or `deploy` below is
/// `admin`'s, so a new route is closed until it is placed.
pub fn system_need(method: &str, path: &str) -> Scope {
    let path = path.trim_end_matches('/');
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    let reading = matches!(method, "GET" | "HEAD");
    if under("/system/tokens") || under("/system/audit") {
        return Scope::Admin;
    }
    if reading {
        // Secret names (never values) are readable, as `faas-cli secret list` needs.
        return Scope::Read;
    }
    let deploys = match method {
        "POST" | "PUT" | "DELETE" => path == "/system/functions",
        _ => false,
    } || (method == "POST"
        && (under("/system/scale-function") || path == "/system/artefacts"));
    if deploys {
        Scope::Deploy
    } else {
        Scope::Admin
    }
}

/// Who a function's callers must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, as in OpenFaaS.
    Public,
    /// A bearer token with `invoke:NAME` (or admin).
    Token,
}

/// The access of a function: `com.skyfri.auth` in its annotations or labels (`token` or
/// `none`); public without it.
pub fn access(spec: &FunctionSpec) -> Result<Access, PolicyError> {
    let mut found: Option<(Place, &str)> = None;
    for (place, map) in [
        (Place::Annotations, &spec.annotations),
        (Place::Labels, &spec.labels),
    ] {
        let Some(value) = map.get(AUTH_KEY).map(|v| v.trim()) else {
            continue;
        };
        let err = |message: String| PolicyError {
            place,
            key: AUTH_KEY.to_string(),
            message,
        };
        if !matches!(value, "token" | "none") {
            return Err(err(format!(
                "{value:?} is not an access mode: use \"token\" (callers need a token with invoke:{}) or \"none\" (public)",
                spec.name
            )));
        }
        match found {
            Some((other, v)) if v != value => {
                return Err(err(format!(
                    "{value:?} disagrees with {other}.{AUTH_KEY} = {v:?}: keep one of them"
                )))
            }
            _ => found = Some((place, value)),
        }
    }
    Ok(match found {
        Some((_, "token")) => Access::Token,
        _ => Access::Public,
    })
}

/// Checks the access annotation, for deploys.
pub fn validate(spec: &FunctionSpec) -> Result<(), PolicyError> {
    access(spec).map(|_| ())
}

/// A token's lifetime such as `30d`, `12h`, `90m`, `3600s` or `2w`, in seconds; a unit is
/// required and the value is at least one second.
pub fn parse_lifetime(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad =
        || format!("{s:?} is not a lifetime: use a number with a unit, such as 30d, 12h or 90m");
    let unit = match s.as_bytes().last() {
        Some(b's') => 1,
        Some(b'm') => 60,
        Some(b'h') => 3600,
        Some(b'd') => 86_400,
        Some(b'w') => 7 * 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
    match n.checked_mul(unit) {
        Some(0) | None => Err(bad()),
        Some(secs) => Ok(secs),
    }
}

/// A token as `GET /system/tokens` lists it (never the token itself); times are RFC3339 UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    /// Also usable as AWS SDK credentials (SigV4): access key id = the name, secret access
    /// key = the token.
    #[serde(default)]
    pub sigv4: bool,
}

/// The answer to `POST /system/tokens`: the only place a token ever appears.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

/// An entry of `GET /system/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: i64,
    /// RFC3339 UTC.
    pub at: String,
    /// `admin`, `token:NAME`, or what a failed login claimed (`basic:USER`, `token`).
    pub who: String,
    pub action: String,
    pub target: String,
    /// The client's IP address.
    pub client: String,
    /// `ok`, or the status and error.
    pub outcome: String,
    /// Events this entry stands for (failed logins and refusals are folded per minute).
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[&str]) -> Vec<Scope> {
        Scope::parse_all(list).expect("valid scopes")
    }

    #[test]
    fn scopes_parse_and_print() {
        assert_eq!(
            scopes(&["deploy", "invoke:hello", "read", "deploy"]),
            vec![Scope::Read, Scope::Deploy, Scope::Invoke("hello".into())]
        );
        assert_eq!(Scope::Invoke("a-b".into()).to_string(), "invoke:a-b");
        for (bad, says) in [
            ("write", "unknown"),
            ("invoke:", "1 to 63"),
            ("invoke:../x", "DNS-1123"),
            ("Admin", "unknown"),
        ] {
            let err = Scope::parse(bad).err().unwrap_or_default();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(Scope::parse_all::<&str>(&[]).is_err());
    }

    #[test]
    fn what_each_scope_grants() {
        let read = scopes(&["read"]);
        let deploy = scopes(&["deploy"]);
        let admin = scopes(&["admin"]);
        let invoke = scopes(&["invoke:f"]);
        let hello = Scope::Invoke("f".into());
        let other = Scope::Invoke("g".into());
        // (held, need, granted)
        let table = [
            (&read, Scope::Read, true),
            (&read, Scope::Deploy, false),
            (&read, Scope::Admin, false),
            (&read, hello.clone(), false),
            (&deploy, Scope::Read, true),
            (&deploy, Scope::Deploy, true),
            (&deploy, Scope::Admin, false),
            (&deploy, hello.clone(), false),
            (&admin, Scope::Read, true),
            (&admin, Scope::Deploy, true),
            (&admin, Scope::Admin, true),
            (&admin, hello.clone(), true),
            (&invoke, hello.clone(), true),
            (&invoke, other, false),
            (&invoke, Scope::Read, false),
        ];
        for (held, need, granted) in table {
            assert_eq!(grants(held, &need), granted, "{held:?} -> {need}");
        }
    }

    #[test]
    fn what_each_route_needs() {
        let table = [
            ("GET", "/system/functions", Scope::Read),
            ("GET", "/system/function/f", Scope::Read),
            ("GET", "/system/info", Scope::Read),
            ("GET", "/system/logs", Scope::Read),
            ("GET", "/system/secrets", Scope::Read),
            ("GET", "/system/async/calls", Scope::Read),
            ("POST", "/system/functions", Scope::Deploy),
            ("PUT", "/system/functions", Scope::Deploy),
            ("DELETE", "/system/functions", Scope::Deploy),
            ("POST", "/system/scale-function/f", Scope::Deploy),
            ("POST", "/system/artefacts", Scope::Deploy),
            ("POST", "/system/secrets", Scope::Admin),
            ("PUT", "/system/secrets", Scope::Admin),
            ("DELETE", "/system/secrets", Scope::Admin),
            ("GET", "/system/tokens", Scope::Admin),
            ("POST", "/system/tokens", Scope::Admin),
            ("DELETE", "/system/tokens/ci", Scope::Admin),
            ("GET", "/system/audit", Scope::Admin),
            ("GET", "/system/tokensx", Scope::Read),
            ("DELETE", "/system/async/calls/x", Scope::Admin),
            ("POST", "/system/async/calls/x/redrive", Scope::Admin),
            ("PATCH", "/system/functions", Scope::Admin),
            ("POST", "/system/new-thing", Scope::Admin),
        ];
        for (method, path, need) in table {
            assert_eq!(system_need(method, path), need, "{method} {path}");
        }
    }

    #[test]
    fn access_annotation() {
        let with = |place: Place, v: &str| {
            let mut s = FunctionSpec::new("f", "img");
            match place {
                Place::Annotations => s.annotations.insert(AUTH_KEY.into(), v.into()),
                Place::Labels => s.labels.insert(AUTH_KEY.into(), v.into()),
            };
            s
        };
        assert_eq!(access(&FunctionSpec::new("f", "i")), Ok(Access::Public));
        assert_eq!(
            access(&with(Place::Annotations, "token")),
            Ok(Access::Token)
        );
        assert_eq!(access(&with(Place::Labels, " token ")), Ok(Access::Token));
        assert_eq!(
            access(&with(Place::Annotations, "none")),
            Ok(Access::Public)
        );
        let err = access(&with(Place::Annotations, "basic"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("annotations.com.skyfri.auth") && err.contains("\"basic\""),
            "{err}"
        );
        let mut both = with(Place::Annotations, "token");
        both.labels.insert(AUTH_KEY.into(), "none".into());
        assert!(access(&both).is_err(), "disagreeing places are refused");
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("30d"), Ok(30 * 86_400));
        assert_eq!(parse_lifetime("12h"), Ok(12 * 3600));
        assert_eq!(parse_lifetime("2w"), Ok(14 * 86_400));
        assert_eq!(parse_lifetime("45s"), Ok(45));
        for bad in ["30", "0d", "d", "-1d", "1.5h", "99999999999999999999w", ""] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }
}
