//! The one classification of database errors. Every store call's `?` converts a sea-orm or sqlx
//! error into [`Error`] through [`db`] or [`sqlx`]; nothing else in the server decides what a
//! database error means.
//!
//! - the database or the path to it is not there (connection, pool, I/O, TLS, shutdown,
//!   too many connections, disk full) → [`Error::Unavailable`]: worth retrying later;
//! - a deadlock or serialization failure (SQLSTATE 40P01, 40001; SQLite busy/locked) →
//!   [`Error::Aborted`]: the store retries those itself a bounded number of times;
//! - a unique violation → [`Error::AlreadyExists`];
//! - a value the column cannot hold (SQLSTATE class 22: too long, bad encoding, NUL; check and
//!   not-null violations) → [`Error::InvalidArgument`]. The edges refuse such input first,
//!   naming the field; this is the backstop;
//! - anything else → [`Error::Internal`], with the database's text logged by the edge mapping
//!   and never shown to the caller.

use crate::domain::Error;
use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr};

/// What a database error means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The database or the path to it is not there.
    Unavailable,
    /// Deadlock or serialization failure: the transaction may simply be run again.
    Retry,
    /// A unique constraint.
    Unique,
    /// A value the schema cannot hold.
    BadValue,
    /// Anything else: a bug or a broken schema.
    Other,
}

/// Classifies a Postgres SQLSTATE.
pub fn classify_sqlstate(code: &str) -> Class {
    match code {
        "40P01" | "40001" => Class::Retry,
        "23505" => Class::Unique,
        "23502" | "23514" => Class::BadValue,
        c if c.starts_with("22") => Class::BadValue,
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("58") => {
            Class::Unavailable
        }
        "57P01" | "57P02" | "57P03" | "57014" => Class::Unavailable,
        _ => Class::Other,
    }
}

/// Classifies an SQLite result code (as sqlx reports it: the extended code in decimal).
pub fn classify_sqlite(code: &str) -> Class {
    let Ok(n) = code.parse::<u32>() else {
        return Class::Other;
    };
    match n & 0xff {
        // SQLITE_BUSY, SQLITE_LOCKED (and their extended codes)
        5 | 6 => Class::Retry,
        // SQLITE_CONSTRAINT: unique / primary key, else check / not null
        19 if n == 2067 || n == 1555 => Class::Unique,
        19 => Class::BadValue,
        // SQLITE_TOOBIG, SQLITE_MISMATCH, SQLITE_RANGE
        18 | 20 | 25 => Class::BadValue,
        // SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN
        8 | 10 | 13 | 14 => Class::Unavailable,
        _ => Class::Other,
    }
}

/// The class of a sqlx error.
pub fn class_of_sqlx(e: &sqlx::Error) -> Class {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            if d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                classify_sqlstate(&code)
            } else {
                classify_sqlite(&code)
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Class::Unavailable,
        sqlx::Error::Encode(_) => Class::BadValue,
        _ => Class::Other,
    }
}

/// The class of a sea-orm error.
pub fn class_of(e: &DbErr) -> Class {
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Class::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            class_of_sqlx(s)
        }
        _ => Class::Other,
    }
}

fn to_error(class: Class, text: String) -> Error {
    match class {
        Class::Unavailable => Error::Unavailable {
            dependency: "database",
            message: text,
        },
        Class::Retry => Error::Aborted(format!(
            "the database aborted the transaction (a concurrent change); try again: {text}"
        )),
        Class::Unique => Error::AlreadyExists(format!("already stored: {text}")),
        Class::BadValue => Error::malformed(format!("a value cannot be stored as given: {text}")),
        Class::Other => Error::Internal(format!("database: {text}")),
    }
}

/// A sea-orm error, classified.
pub fn db(e: DbErr) -> Error {
    to_error(class_of(&e), e.to_string())
}

/// A sqlx error, classified.
pub fn sqlx(e: sqlx::Error) -> Error {
    to_error(class_of_sqlx(&e), e.to_string())
}

/// `?` on a sea-orm result classifies its error ([`db`]).
impl From<DbErr> for Error {
    fn from(e: DbErr) -> Self {
        db(e)
    }
}

/// `?` on a sqlx result classifies its error ([`sqlx`]).
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        sqlx(e)
    }
}

/// Runs `attempt` again while it fails with [`Error::Aborted`] (a deadlock or serialization
/// failure), up to `ATTEMPTS` times with a short jittered pause; the last failure is returned as
/// it is (ABORTED, never UNAVAILABLE).
pub async fn retry_aborted<T, F, Fut>(mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    const ATTEMPTS: u32 = 5;
    let mut delays = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(2))
            .with_max_delay(std::time::Duration::from_millis(50))
            .with_max_times(ATTEMPTS as usize - 1)
            .with_jitter(),
    );
    loop {
        match attempt().await {
            Err(Error::Aborted(m)) => match delays.next() {
                Some(d) => {
                    tracing::debug!(error = %m, "transaction aborted by the database; running it again");
                    tokio::time::sleep(d).await;
                }
                None => return Err(Error::Aborted(m)),
            },
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_and_sqlite_codes_are_classified() {
        for (code, class) in [
            ("40P01", Class::Retry),
            ("40001", Class::Retry),
            ("23505", Class::Unique),
            ("22001", Class::BadValue),
            ("22021", Class::BadValue),
            ("22P05", Class::BadValue),
            ("23514", Class::BadValue),
            ("08006", Class::Unavailable),
            ("53300", Class::Unavailable),
            ("57P01", Class::Unavailable),
            ("42P01", Class::Other),
            ("42703", Class::Other),
        ] {
            assert_eq!(classify_sqlstate(code), class, "{code}");
        }
        for (code, class) in [
            ("5", Class::Retry),
            ("517", Class::Retry),
            ("2067", Class::Unique),
            ("1555", Class::Unique),
            ("275", Class::BadValue),
            ("1299", Class::BadValue),
            ("18", Class::BadValue),
            ("13", Class::Unavailable),
            ("1", Class::Other),
        ] {
            assert_eq!(classify_sqlite(code), class, "{code}");
        }
    }

    #[test]
    fn connection_problems_are_unavailable_and_the_rest_is_not() {
        assert_eq!(
            class_of_sqlx(&sqlx::Error::PoolTimedOut),
            Class::Unavailable
        );
        assert_eq!(
            class_of_sqlx(&sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused
            ))),
            Class::Unavailable
        );
        assert_eq!(class_of_sqlx(&sqlx::Error::RowNotFound), Class::Other);
        assert!(matches!(db(DbErr::Custom("x".into())), Error::Internal(_)));
        assert!(matches!(
            db(DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout)),
            Error::Unavailable { .. }
        ));
    }

    #[tokio::test]
    async fn aborted_transactions_are_run_again_a_bounded_number_of_times() {
        let mut n = 0;
        let r: Result<(), Error> = retry_aborted(|| {
            n += 1;
            async { Err(Error::Aborted("deadlock".into())) }
        })
        .await;
        assert!(matches!(r, Err(Error::Aborted(_))));
        assert_eq!(n, 5);
        let mut n = 0;
        let r = retry_aborted(|| {
            n += 1;
            let k = n;
            async move {
                if k < 3 {
                    Err(Error::Aborted("deadlock".into()))
                } else {
                    Ok(k)
                }
            }
        })
        .await;
        assert_eq!(r.ok(), Some(3));
        let mut n = 0;
        let r: Result<(), Error> = retry_aborted(|| {
            n += 1;
            async { Err(Error::malformed("bad")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(n, 1, "only aborted transactions are retried");
    }
}
