//! Validation of client input shared by the services' domain types: the error that names
//! the broken field (answered as a 422 `urn:shop:problem:validation` naming it), and the
//! rule every free-text field follows.

use crate::http::ApiError;

/// A rule broken by client input, naming the field so the API can report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::validation(e.field, e.message)
    }
}

/// A free-text field: trimmed, 1..=`max_chars` characters, no control characters.
pub fn text(field: &'static str, raw: &str, max_chars: usize) -> Result<String, ValidationError> {
    let value = raw.trim();
    let n = value.chars().count();
    if n == 0 {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if n > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    if has_bidi_controls(value) {
        return Err(ValidationError::new(
            field,
            "must not contain bidirectional control characters",
        ));
    }
    Ok(value.to_owned())
}

/// Whether `s` holds characters that reorder how text is shown (U+202E and its kin): a
/// name or an address with one can display as something else than it is.
pub fn has_bidi_controls(s: &str) -> bool {
    s.chars().any(|c| {
        matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_bounded_and_printable() {
        assert_eq!(text("name", "  Ann  ", 3).unwrap(), "Ann");
        assert_eq!(
            text("name", "   ", 3).unwrap_err().message,
            "must not be empty"
        );
        assert_eq!(
            text("name", "Anna", 3).unwrap_err().message,
            "must be at most 3 characters"
        );
        assert_eq!(text("name", "é€😀", 3).unwrap(), "é€😀");
        assert!(text("name", "a\u{7}b", 3).is_err());
        assert_eq!(text("bio", "", 3).unwrap_err().field, "bio");
        assert!(text("name", "abc\u{202E}txt.exe", 30).is_err());
        assert!(text("name", "\u{2067}x", 30).is_err());
    }
}
