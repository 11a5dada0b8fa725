//! Exit codes scripts can rely on: 0 done, 1 any other error, 2 bad command line (clap),
//! 3 not found, 4 refused credentials, 5 gateway unreachable. An error carries its code as a
//! [`Coded`] anywhere in its cause chain; without one it exits 1.

use std::fmt;
use std::process::ExitCode;

use hyper::StatusCode;

pub const ERROR: u8 = 1;
pub const NOT_FOUND: u8 = 3;
pub const AUTH: u8 = 4;
pub const UNREACHABLE: u8 = 5;

/// An error that decides the exit code.
#[derive(Debug)]
pub struct Coded {
    pub code: u8,
    pub message: String,
    /// What caused it, shown after the message.
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

/// An error for a gateway's answer: 404 exits 3, 401 and 403 exit 4, anything else 1.
pub fn for_status(status: StatusCode, message: String) -> anyhow::Error {
    let code = match status {
        StatusCode::NOT_FOUND => NOT_FOUND,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AUTH,
        _ => ERROR,
    };
    anyhow::Error::new(Coded {
        code,
        message,
        cause: None,
    })
}

/// The exit code of a failed command.
pub fn code(err: &anyhow::Error) -> ExitCode {
    ExitCode::from(raw(err))
}

/// The exit code of an error, as a number.
pub fn raw(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|c| c.downcast_ref::<Coded>())
        .map_or(ERROR, |c| c.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_code_survives_context() {
        let err = Err::<(), _>(for_status(StatusCode::NOT_FOUND, "gone".into()))
            .context("describing f")
            .err();
        let err = err.map(|e| code(&e));
        assert_eq!(err, Some(ExitCode::from(NOT_FOUND)));
        for (status, expected) in [
            (StatusCode::UNAUTHORIZED, AUTH),
            (StatusCode::FORBIDDEN, AUTH),
            (StatusCode::BAD_REQUEST, ERROR),
        ] {
            assert_eq!(
                code(&for_status(status, String::new())),
                ExitCode::from(expected)
            );
        }
        assert_eq!(code(&anyhow::anyhow!("plain")), ExitCode::from(ERROR));
    }
}
