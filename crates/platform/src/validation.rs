//! Validation of client input shared by the services' domain types: the error that names
//! the broken field (answered as a 422 `urn:shop:problem:validation` naming it), and the
//! rule every free-text field follows, in Rust ([`text`]) and in the OpenAPI documents
//! ([`TextRule`]).

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

/// A free-text field: no control characters (a tab or line break at either end included:
/// the published [`TEXT_PATTERN`] says so too), then trimmed to 1..=`max_chars` characters.
pub fn text(field: &'static str, raw: &str, max_chars: usize) -> Result<String, ValidationError> {
    if raw.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    if has_bidi_controls(raw) {
        return Err(ValidationError::new(
            field,
            "must not contain bidirectional control characters",
        ));
    }
    // What JavaScript's (and JSON Schema's) `\s` is: Unicode's white space and U+FEFF.
    let value = raw.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
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
    Ok(value.to_owned())
}

/// The OpenAPI `format` that marks a field as following [`text`]'s rule:
/// `#[schema(format = "text", min_length = 1, max_length = N)]`. [`TextRule`] turns it into
/// [`TEXT_PATTERN`] in the published document, so the rule is written here only.
pub const TEXT_FORMAT: &str = "text";

/// [`text`]'s rule as a JSON Schema pattern: at least one non-space character, none of the
/// control characters (C0, DEL, C1) and none of [`has_bidi_controls`]'s. (The non-space one
/// is a class of its own: `\S` would let one control character through.)
pub const TEXT_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]*[^\s\u0000-\u001f\u007f-\u009f\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069][^\u0000-\u001f\u007f-\u009f\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]*$";

/// Gives every string schema of [`TEXT_FORMAT`] the [`TEXT_PATTERN`] (in place of the
/// format, which is ours and not JSON Schema's). Listed in each service's `modifiers(...)`.
pub struct TextRule;

impl utoipa::Modify for TextRule {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for schema in components.schemas.values_mut() {
            mark_text(schema);
        }
    }
}

fn mark_text(schema: &mut utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>) {
    use utoipa::openapi::{
        RefOr,
        schema::{ArrayItems, Schema, SchemaFormat},
    };
    let RefOr::T(schema) = schema else { return };
    match schema {
        Schema::Object(o) => {
            if matches!(&o.format, Some(SchemaFormat::Custom(f)) if f == TEXT_FORMAT) {
                o.format = None;
                o.pattern = Some(TEXT_PATTERN.to_owned());
            }
            o.properties.values_mut().for_each(mark_text);
        }
        Schema::Array(a) => {
            if let ArrayItems::RefOrSchema(items) = &mut a.items {
                mark_text(items);
            }
        }
        Schema::AllOf(s) => s.items.iter_mut().for_each(mark_text),
        Schema::OneOf(s) => s.items.iter_mut().for_each(mark_text),
        Schema::AnyOf(s) => s.items.iter_mut().for_each(mark_text),
        _ => {}
    }
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

    /// A field marked `format = "text"` is published with the pattern, and the pattern
    /// accepts exactly what `text` accepts (within its length), as a client's JSON Schema
    /// validator reads it.
    #[test]
    fn the_published_pattern_is_the_text_rule() {
        use utoipa::{Modify as _, OpenApi as _, ToSchema};
        #[derive(ToSchema)]
        #[allow(dead_code)]
        struct Named {
            #[schema(format = "text")]
            name: String,
        }
        #[derive(utoipa::OpenApi)]
        #[openapi(components(schemas(Named)))]
        struct Doc;
        let mut doc = Doc::openapi();
        TextRule.modify(&mut doc);
        let doc = serde_json::to_value(&doc).unwrap();
        let name = &doc["components"]["schemas"]["Named"]["properties"]["name"];
        assert_eq!(name["pattern"], TEXT_PATTERN);
        assert!(name.get("format").is_none(), "{name}");

        let schema = jsonschema::validator_for(name).unwrap();
        for sample in [
            "Ann",
            "  Ann  ",
            "é€😀",
            "",
            "   ",
            "\u{3000}",
            "a\u{7}b",
            "a\tb",
            "a\nb",
            "\u{85}x",
            "x\u{9f}",
            "\u{a0}",
            "\u{2028}x",
            "\u{feff}",
            "\u{feff}x",
            "\u{3000}a\u{3000}",
            "abc\u{202E}txt",
            "\u{2067}x",
            "\u{200e}",
            "a\u{7f}",
        ] {
            assert_eq!(
                schema.is_valid(&serde_json::json!(sample)),
                text("f", sample, 100).is_ok(),
                "{sample:?}"
            );
        }
    }

    proptest::proptest! {
        /// Over strings of letters, spaces of every kind and control characters, the
        /// pattern and `text` agree.
        #[test]
        fn the_pattern_and_the_rule_agree(
            sample in "[a\\- \t\n\u{0}\u{7}\u{85}\u{a0}\u{2028}\u{202e}\u{feff}\u{3000}]{0,6}"
        ) {
            let schema = jsonschema::validator_for(&serde_json::json!({"type": "string", "pattern": TEXT_PATTERN})).unwrap();
            proptest::prop_assert_eq!(
                schema.is_valid(&serde_json::json!(sample)),
                text("f", &sample, 100).is_ok()
            );
        }
    }
}
