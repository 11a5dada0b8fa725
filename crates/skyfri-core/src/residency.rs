//! Finding the places data goes in what functions were given: URL-like values in their
//! environment (database, queue and API endpoints), with credentials masked.

/// Schemes of data stores and brokers; other URLs (http, https, ...) are still reported, as
/// endpoints.
const STORES: &[&str] = &[
    "postgres",
    "postgresql",
    "mysql",
    "mariadb",
    "redis",
    "rediss",
    "mongodb",
    "mongodb+srv",
    "nats",
    "tls",
    "amqp",
    "amqps",
    "kafka",
    "memcached",
    "clickhouse",
    "sqlserver",
    "s3",
];

/// What the mask replaces a password or key with.
pub const MASK: &str = "****";

/// A URL found in a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundUrl {
    pub scheme: String,
    /// The URL with any password, and the values of query parameters that look like
    /// credentials, replaced by [`MASK`].
    pub masked: String,
    /// A data store or broker (by scheme), rather than another kind of endpoint.
    pub store: bool,
}

/// Every `scheme://...` in `value` (values may hold several, separated by commas, spaces or
/// semicolons), masked.
pub fn find_urls(value: &str) -> Vec<FoundUrl> {
    value
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter_map(parse)
        .collect()
}

fn parse(token: &str) -> Option<FoundUrl> {
    let (scheme, rest) = token.split_once("://")?;
    let valid = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid || rest.is_empty() {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{MASK}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    Some(FoundUrl {
        store: STORES.contains(&scheme.as_str()),
        masked: format!("{scheme}://{authority}{}", mask_query(tail)),
        scheme,
    })
}

/// Masks the values of query parameters named like credentials (`password=`, `sslkey=`,
/// `token=`, `secret=`, ...).
fn mask_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if is_credential(k) => format!("{k}={MASK}"),
            _ => p.to_string(),
        })
        .collect();
    format!("{path}?{}", params.join("&"))
}

fn is_credential(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "pass",
        "secret",
        "token",
        "key",
        "auth",
        "pwd",
        "credential",
    ]
    .iter()
    .any(|w| k.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(value: &str) -> Vec<String> {
        find_urls(value).into_iter().map(|u| u.masked).collect()
    }

    #[test]
    fn passwords_are_masked_and_hosts_kept() {
        let found = find_urls("postgres://orders:s3cr3t@db.internal:5432/orders?sslmode=require");
        assert_eq!(
            found,
            vec![FoundUrl {
                scheme: "postgres".into(),
                masked: "postgres://orders:****@db.internal:5432/orders?sslmode=require".into(),
                store: true,
            }]
        );
        assert_eq!(
            masked("redis://:pw@cache:6379/0"),
            ["redis://:****@cache:6379/0"]
        );
        assert_eq!(masked("nats://app@nats:4222"), ["nats://app@nats:4222"]);
        assert_eq!(
            masked("mysql://u:p@a:b@h/db"),
            ["mysql://u:****@h/db"],
            "an @ in the password"
        );
        assert_eq!(
            masked("https://api.example.com/v1?api_key=abc&x=1#frag"),
            ["https://api.example.com/v1?api_key=****&x=1#frag"]
        );
        assert!(!find_urls("https://api.example.com")[0].store);
    }

    #[test]
    fn several_urls_and_non_urls() {
        assert_eq!(
            masked("amqp://a:b@q1, amqp://a:b@q2;kafka://k:9092"),
            ["amqp://a:****@q1", "amqp://a:****@q2", "kafka://k:9092"]
        );
        assert!(find_urls("plain value").is_empty());
        assert!(find_urls("://nohost").is_empty());
        assert!(find_urls("1a://x").is_empty());
        assert!(find_urls("postgres://").is_empty());
        assert!(find_urls("").is_empty());
    }
}
