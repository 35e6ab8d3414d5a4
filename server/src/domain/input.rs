//! What the stores can hold, and what a typed value may carry: checks every edge runs before
//! anything is written, so that input the database would refuse is answered INVALID_ARGUMENT /
//! 400 naming the field and the limit, never an outage, and a value typed in chat cannot break
//! out of the template it is substituted into. Pure functions.
//!
//! Argo substitutes a parameter's value into the template's text as it is (escaped for JSON,
//! never for a shell), so what a value may hold is decided here, before a run starts:
//! - no value holds `{{` (Argo's template and expression syntax: no chat value needs it), nor a
//!   control character other than newline and tab;
//! - a value the template puts into a shell or an expression ([`Rule::Shell`]: the argo-adapter's
//!   lint found it in `script.source`, after `sh -c`, in `when` or in `{{= … }}`) holds no shell
//!   metacharacter, unless the option declares a `pattern`: then the pattern alone decides (the
//!   template's author vouches for what it lets through).

use crate::domain::{Error, Result};

/// Why a value was refused, as the audit trail and the metrics name it (never the value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A required option is missing.
    Required,
    /// The command declares no such option.
    Unknown,
    /// Not of the option's type (a whole number, a user id, ...).
    Type,
    /// Outside the option's `min_value`/`max_value`.
    Range,
    /// Outside the option's length bounds (or `input.max_value_length`).
    Length,
    /// Not one of the option's choices.
    Choice,
    /// Holds `{{`.
    TemplateSyntax,
    /// Holds a control character.
    ControlCharacter,
    /// Does not match the option's `pattern`.
    Pattern,
    /// Holds a shell metacharacter where the template interpolates it into a shell.
    Shell,
}

impl Rule {
    /// The rule's name in audit entries and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Required => "required",
            Rule::Unknown => "unknown_option",
            Rule::Type => "type",
            Rule::Range => "range",
            Rule::Length => "length",
            Rule::Choice => "choice",
            Rule::TemplateSyntax => "template_syntax",
            Rule::ControlCharacter => "control_character",
            Rule::Pattern => "pattern",
            Rule::Shell => "shell",
        }
    }
}

/// One refused value: the option (or parameter), the rule, and the sentence the member reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The option or parameter.
    pub option: String,
    /// The rule it broke.
    pub rule: Rule,
    /// What the member reads: names the option and says what is allowed.
    pub message: String,
}

/// Every value refused in one request (INVALID_ARGUMENT / 400); shown as their messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusals(pub Vec<Refusal>);

impl std::fmt::Display for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for r in &self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            f.write_str(&r.message)?;
        }
        Ok(())
    }
}

/// What a shell gives meaning to inside or outside quotes: a value the template interpolates
/// into one must hold none of these.
pub const SHELL_METACHARACTERS: [char; 14] = [
    '\'', '"', ';', '|', '&', '$', '`', '<', '>', '(', ')', '\\', '\n', '\r',
];

/// The rules every typed value follows, whatever its option: no `{{`, no control character but
/// newline and tab. The rule broken and what is wrong (without the value).
pub fn safe_text(value: &str) -> std::result::Result<(), (Rule, String)> {
    if value.contains("{{") {
        return Err((
            Rule::TemplateSyntax,
            "must not contain `{{` (Argo's template syntax)".into(),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return Err((
            Rule::ControlCharacter,
            format!(
                "must not contain control characters (found U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// The restriction on a value the template puts into a shell or an expression.
pub fn shell_safe(value: &str) -> std::result::Result<(), (Rule, String)> {
    if value.contains(SHELL_METACHARACTERS) {
        return Err((
            Rule::Shell,
            "must not contain quotes, `;`, `|`, `&`, `$`, backticks, `<`, `>`, parentheses, \
             backslashes or line breaks: the template passes it to a shell"
                .into(),
        ));
    }
    Ok(())
}

/// Text no store can hold: a NUL character (Postgres refuses it in `text` and `jsonb`), or
/// more than `max` characters (the column's width). `field` names it in the answer.
pub fn storable(field: &str, value: &str, max: usize) -> Result<()> {
    no_nul(field, value)?;
    // Bytes first: most values are far below the limit and never need counting.
    if value.len() > max {
        let n = value.chars().count();
        if n > max {
            return Err(Error::invalid(
                field,
                format!("{field} is {n} characters long; at most {max} are accepted"),
            ));
        }
    }
    Ok(())
}

/// Refuses a NUL character in `value`.
pub fn no_nul(field: &str, value: &str) -> Result<()> {
    if value.as_bytes().contains(&0) {
        return Err(Error::invalid(
            field,
            format!("{field} contains a NUL character (U+0000), which cannot be stored"),
        ));
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
    fn every_value_is_refused_argo_syntax_and_control_characters() {
        assert!(safe_text("hello world\n\tsecond line { } }}").is_ok());
        for (v, rule) in [
            ("{{workflow.name}}", Rule::TemplateSyntax),
            ("a {{=sprig.trim('x')}}", Rule::TemplateSyntax),
            ("bell\u{7}", Rule::ControlCharacter),
            ("nul\0", Rule::ControlCharacter),
            ("esc\u{1b}[2J", Rule::ControlCharacter),
            ("cr\r", Rule::ControlCharacter),
            ("next-line\u{85}", Rule::ControlCharacter),
        ] {
            assert_eq!(safe_text(v).map_err(|e| e.0), Err(rule), "{v:?}");
        }
        let (_, m) = safe_text("x\u{1b}").expect_err("escape");
        assert_eq!(m, "must not contain control characters (found U+001B)");
    }

    #[test]
    fn a_shell_value_takes_no_metacharacter() {
        assert!(shell_safe("release-1.2.3 to prod, now").is_ok());
        for v in [
            "hello'; ls -la /; echo '",
            "$(id)",
            "`id`",
            "a; b",
            "a && b",
            "a | b",
            "a > /etc/x",
            "a\nb",
            "\"quoted\"",
            "back\\slash",
            "(sub)",
        ] {
            assert_eq!(shell_safe(v).map_err(|e| e.0), Err(Rule::Shell), "{v:?}");
        }
    }

    #[test]
    fn nul_and_length_are_refused_naming_the_field() {
        assert!(storable("repository", "a/b", 3).is_ok());
        let Err(Error::InvalidArgument { message: m, .. }) = storable("repository", "a/bc", 3)
        else {
            panic!("too long");
        };
        assert_eq!(m, "repository is 4 characters long; at most 3 are accepted");
        // Characters, not bytes.
        assert!(storable("name", "ééé", 3).is_ok());
        let Err(Error::InvalidArgument { message: m, .. }) = storable("prompt", "a\0b", 100) else {
            panic!("nul");
        };
        assert!(m.starts_with("prompt contains a NUL"), "{m}");
        assert!(storable_opt("x", None, 1).is_ok());
    }
}
