//! Pure rules of the products service: validated values (an invalid one cannot be built, so
//! the store and handlers never re-check), page limits and cursors. No I/O here.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use shop_platform::validation;
pub use shop_platform::validation::ValidationError;

pub const SKU_MAX_CHARS: usize = 64;
pub const NAME_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 2000;
pub const PRICE_MAX_CENTS: i64 = 100_000_000;
pub const INITIAL_STOCK_MAX: i64 = 1_000_000;
/// The one currency of the catalogue.
pub const CURRENCY: &str = "EUR";

pub const PAGE_DEFAULT: i64 = 20;
pub const PAGE_MAX: i64 = 100;
/// Most ids one `/internal/products` call may ask for.
pub const BATCH_MAX: usize = 100;

/// A stock keeping unit: 1..=64 characters of `[A-Za-z0-9_-]`, kept as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Sku, ValidationError> {
        let err = |m: &str| ValidationError::new("sku", m);
        if raw.is_empty() {
            return Err(err("must not be empty"));
        }
        if raw.chars().count() > SKU_MAX_CHARS {
            return Err(err("must be at most 64 characters"));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err("may contain only letters, digits, '-' and '_'"));
        }
        Ok(Sku(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A product name: trimmed, 1..=200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(raw: &str) -> Result<ProductName, ValidationError> {
        validation::text("name", raw, NAME_MAX_CHARS).map(ProductName)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A description: trimmed, at most 2000 characters; line breaks and tabs allowed, other
/// control characters not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    pub fn parse(raw: &str) -> Result<Description, ValidationError> {
        let text = raw.trim();
        if text.chars().count() > DESCRIPTION_MAX_CHARS {
            return Err(ValidationError::new(
                "description",
                "must be at most 2000 characters",
            ));
        }
        if text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(ValidationError::new(
                "description",
                "must not contain control characters other than line breaks and tabs",
            ));
        }
        if validation::has_bidi_controls(text) {
            return Err(ValidationError::new(
                "description",
                "must not contain bidirectional control characters",
            ));
        }
        Ok(Description(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A price in cents, 0..=100 000 000 (one million in the currency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price(i64);

impl Price {
    pub fn parse(cents: i64) -> Result<Price, ValidationError> {
        if !(0..=PRICE_MAX_CENTS).contains(&cents) {
            return Err(ValidationError::new(
                "price_cents",
                "must be between 0 and 100000000",
            ));
        }
        Ok(Price(cents))
    }

    pub fn cents(self) -> i64 {
        self.0
    }
}

/// Units in stock when a product is created, 0..=1 000 000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialStock(i64);

impl InitialStock {
    pub fn parse(units: i64) -> Result<InitialStock, ValidationError> {
        if !(0..=INITIAL_STOCK_MAX).contains(&units) {
            return Err(ValidationError::new(
                "initial_stock",
                "must be between 0 and 1000000",
            ));
        }
        Ok(InitialStock(units))
    }

    pub fn units(self) -> i64 {
        self.0
    }
}

/// A product to create, every field valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    pub sku: Sku,
    pub name: ProductName,
    pub description: Description,
    pub price: Price,
    pub initial_stock: InitialStock,
}

/// A change to a product: at least one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductChanges {
    pub name: Option<ProductName>,
    pub description: Option<Description>,
    pub price: Option<Price>,
}

impl ProductChanges {
    pub fn parse(
        name: Option<&str>,
        description: Option<&str>,
        price_cents: Option<i64>,
    ) -> Result<ProductChanges, ValidationError> {
        if name.is_none() && description.is_none() && price_cents.is_none() {
            return Err(ValidationError::new(
                "body",
                "give at least one of name, description, price_cents",
            ));
        }
        Ok(ProductChanges {
            name: name.map(ProductName::parse).transpose()?,
            description: description.map(Description::parse).transpose()?,
            price: price_cents.map(Price::parse).transpose()?,
        })
    }
}

/// The `limit` of a page: default 20, 1..=100.
pub fn page_limit(raw: Option<&str>) -> Result<i64, ValidationError> {
    let Some(raw) = raw else {
        return Ok(PAGE_DEFAULT);
    };
    match raw.trim().parse::<i64>() {
        Ok(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
        _ => Err(ValidationError::new(
            "limit",
            "must be an integer between 1 and 100",
        )),
    }
}

/// Where the next page starts: after the product with this id. Opaque to clients (base64url
/// of the id's bytes), so its format may change without breaking them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub Uuid);

impl Cursor {
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    pub fn decode(raw: &str) -> Result<Cursor, ValidationError> {
        let err = || ValidationError::new("cursor", "is not a cursor this API returned");
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).map_err(|_| err())?;
        let id = Uuid::from_slice(&bytes).map_err(|_| err())?;
        Ok(Cursor(id))
    }
}

/// The ids of `ids=<uuid>,<uuid>,...`: at most 100, each a UUID; duplicates dropped, order
/// kept. Missing or empty means none.
pub fn id_list(raw: Option<&str>) -> Result<Vec<Uuid>, ValidationError> {
    let mut ids: Vec<Uuid> = Vec::new();
    for part in raw
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let id = part
            .parse()
            .map_err(|_| ValidationError::new("ids", format!("{part:?} is not a UUID")))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
        if ids.len() > BATCH_MAX {
            return Err(ValidationError::new("ids", "at most 100 ids per request"));
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_rules() {
        for ok in ["A", "ABC-123_x", &"a".repeat(64)] {
            assert_eq!(Sku::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", " A", "A B", "a/b", "é", &"a".repeat(65)] {
            assert_eq!(Sku::parse(bad).unwrap_err().field, "sku", "{bad:?}");
        }
    }

    #[test]
    fn name_rules() {
        assert_eq!(ProductName::parse("  Mug ").unwrap().as_str(), "Mug");
        assert!(ProductName::parse(&"ü".repeat(200)).is_ok());
        for bad in ["", "   ", "a\u{0}b", &"n".repeat(201)] {
            assert_eq!(ProductName::parse(bad).unwrap_err().field, "name");
        }
    }

    #[test]
    fn description_rules() {
        assert_eq!(Description::parse("").unwrap().as_str(), "");
        assert!(Description::parse("line 1\nline 2\tend").is_ok());
        assert!(Description::parse(&"d".repeat(2000)).is_ok());
        for bad in [&"d".repeat(2001), "bell\u{7}"] {
            assert_eq!(Description::parse(bad).unwrap_err().field, "description");
        }
    }

    #[test]
    fn price_and_stock_bounds() {
        assert!(Price::parse(0).is_ok());
        assert!(Price::parse(100_000_000).is_ok());
        assert_eq!(Price::parse(-1).unwrap_err().field, "price_cents");
        assert_eq!(Price::parse(100_000_001).unwrap_err().field, "price_cents");
        assert!(InitialStock::parse(0).is_ok());
        assert!(InitialStock::parse(1_000_000).is_ok());
        assert_eq!(InitialStock::parse(-1).unwrap_err().field, "initial_stock");
        assert_eq!(
            InitialStock::parse(1_000_001).unwrap_err().field,
            "initial_stock"
        );
    }

    #[test]
    fn changes_need_one_field_and_valid_ones() {
        assert_eq!(
            ProductChanges::parse(None, None, None).unwrap_err().field,
            "body"
        );
        let c = ProductChanges::parse(None, None, Some(5)).unwrap();
        assert_eq!(c.price, Some(Price(5)));
        assert_eq!(
            ProductChanges::parse(Some(""), None, None)
                .unwrap_err()
                .field,
            "name"
        );
        assert_eq!(
            ProductChanges::parse(None, None, Some(-5))
                .unwrap_err()
                .field,
            "price_cents"
        );
    }

    #[test]
    fn limits() {
        assert_eq!(page_limit(None), Ok(20));
        assert_eq!(page_limit(Some("1")), Ok(1));
        assert_eq!(page_limit(Some("100")), Ok(100));
        for bad in ["0", "101", "-1", "ten", ""] {
            assert_eq!(page_limit(Some(bad)).unwrap_err().field, "limit");
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor(Uuid::now_v7());
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        assert_eq!(c.encode().len(), 22);
        for bad in ["", "nope!", "AAAA", &c.0.to_string()] {
            assert_eq!(Cursor::decode(bad).unwrap_err().field, "cursor", "{bad}");
        }
    }

    #[test]
    fn id_lists() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert_eq!(id_list(None), Ok(vec![]));
        assert_eq!(id_list(Some("")), Ok(vec![]));
        assert_eq!(id_list(Some(&format!("{a}, {b},{a}"))), Ok(vec![a, b]));
        assert_eq!(id_list(Some("x")).unwrap_err().field, "ids");
        let many: Vec<String> = (0..101).map(|_| Uuid::now_v7().to_string()).collect();
        assert_eq!(id_list(Some(&many.join(","))).unwrap_err().field, "ids");
        let hundred = many[..100].join(",");
        assert_eq!(id_list(Some(&hundred)).unwrap().len(), 100);
    }
}
