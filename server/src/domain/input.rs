//! What the stores can hold: checks every edge runs before anything is written, so that input
//! the database would refuse is answered INVALID_ARGUMENT / 400 naming the field and the limit,
//! never an outage. Pure functions.

use crate::domain::{Error, Result};

/// Text no store can hold: a NUL character (Postgres refuses it in `text` and `jsonb`), or
/// more than `max` characters (the column's width). `field` names it in the answer.
pub fn storable(field: &str, value: &str, max: usize) -> Result<()> {
    no_nul(field, value)?;
    // Bytes first: most values are far below the limit and never need counting.
    if value.len() > max {
        let n = value.chars().count();
        if n > max {
            return Err(Error::InvalidArgument(format!(
                "{field} is {n} characters long; at most {max} are accepted"
            )));
        }
    }
    Ok(())
}

/// Refuses a NUL character in `value`.
pub fn no_nul(field: &str, value: &str) -> Result<()> {
    if value.as_bytes().contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "{field} contains a NUL character (U+0000), which cannot be stored"
        )));
    }
    Ok(())
}

/// `storable` for an optional value.
pub fn storable_opt(field: &str, value: Option<&String>, max: usize) -> Result<()> {
    value.map_or(Ok(()), |v| storable(field, v, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_length_are_refused_naming_the_field() {
        assert!(storable("repository", "a/b", 3).is_ok());
        let Err(Error::InvalidArgument(m)) = storable("repository", "a/bc", 3) else {
            panic!("too long");
        };
        assert_eq!(m, "repository is 4 characters long; at most 3 are accepted");
        // Characters, not bytes.
        assert!(storable("name", "ééé", 3).is_ok());
        let Err(Error::InvalidArgument(m)) = storable("prompt", "a\0b", 100) else {
            panic!("nul");
        };
        assert!(m.starts_with("prompt contains a NUL"), "{m}");
        assert!(storable_opt("x", None, 1).is_ok());
    }
}
