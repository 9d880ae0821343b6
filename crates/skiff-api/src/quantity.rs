//! Kubernetes resource quantities (`128Mi`, `500m`, `1.5`, `2e3`).
//!
//! The grammar is Kubernetes' (`k8s.io/apimachinery/pkg/api/resource`): a decimal number with
//! an optional binary-SI suffix (`Ki`…`Ei`), decimal-SI suffix (`n`, `u`, `m`, `k`, `M`…`E`) or
//! decimal exponent (`e3`, `E-2`). Values are kept exact as `digits × 10^scale × 2^pow2` and
//! converted to the unit a consumer needs (bytes, millicores) rounding up, as Kubernetes does.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

/// A quantity as written in a manifest: a string, or a bare YAML/JSON number.
///
/// Parsing happens during validation, so a bad quantity is reported with its path together
/// with every other problem of the document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, ToSchema)]
#[schema(value_type = String, example = "128Mi")]
pub struct QuantityString(pub String);

impl Serialize for QuantityString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for QuantityString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = QuantityString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as \"128Mi\" or \"500m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(QuantityString(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(QuantityString(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(QuantityString(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(QuantityString(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A parsed, non-negative quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    digits: u128,
    scale: i32,
    pow2: u32,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the quantity grammar.
    #[error("`{0}` is not a quantity (examples: 128Mi, 1Gi, 500m, 0.5, 2)")]
    Syntax(String),
    /// A negative value where only non-negative ones make sense.
    #[error("`{0}` is negative")]
    Negative(String),
    /// Too large to represent.
    #[error("`{0}` is too large")]
    TooLarge(String),
}

const MAX_DIGITS: usize = 30;

impl Quantity {
    /// Parses a quantity; negative values are refused.
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        let s = input.trim();
        let syntax = || QuantityError::Syntax(input.to_owned());
        let (negative, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let number_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, suffix) = body.split_at(number_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(syntax());
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        let all_digits = format!("{int_part}{frac_part}");
        let trimmed = all_digits.trim_start_matches('0');
        if trimmed.len() > MAX_DIGITS {
            return Err(QuantityError::TooLarge(input.to_owned()));
        }
        let digits: u128 = if trimmed.is_empty() {
            0
        } else {
            trimmed.parse().map_err(|_| syntax())?
        };
        let mut scale = -(frac_part.len() as i32);
        let mut pow2 = 0u32;
        match suffix {
            "" => {}
            "Ki" => pow2 = 10,
            "Mi" => pow2 = 20,
            "Gi" => pow2 = 30,
            "Ti" => pow2 = 40,
            "Pi" => pow2 = 50,
            "Ei" => pow2 = 60,
            "n" => scale -= 9,
            "u" => scale -= 6,
            "m" => scale -= 3,
            "k" => scale += 3,
            "M" => scale += 6,
            "G" => scale += 9,
            "T" => scale += 12,
            "P" => scale += 15,
            "E" => scale += 18,
            other => {
                let exp = other
                    .strip_prefix('e')
                    .or_else(|| other.strip_prefix('E'))
                    .ok_or_else(syntax)?;
                let exp_digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if exp_digits.is_empty()
                    || exp_digits.len() > 3
                    || !exp_digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(syntax());
                }
                let e: i32 = exp.parse().map_err(|_| syntax())?;
                scale += e;
            }
        }
        if negative && digits != 0 {
            return Err(QuantityError::Negative(input.to_owned()));
        }
        if scale > 40 {
            return Err(QuantityError::TooLarge(input.to_owned()));
        }
        Ok(Quantity {
            digits,
            scale,
            pow2,
        })
    }

    /// The value multiplied by `10^shift`, rounded up to a whole number, saturating at
    /// `u64::MAX`.
    fn ceil_scaled(&self, shift: i32) -> u64 {
        let mut value = self.digits;
        for _ in 0..self.pow2 {
            value = match value.checked_mul(2) {
                Some(v) => v,
                None => return u64::MAX,
            };
        }
        let scale = self.scale + shift;
        if scale >= 0 {
            for _ in 0..scale {
                value = match value.checked_mul(10) {
                    Some(v) => v,
                    None => return u64::MAX,
                };
            }
        } else {
            for _ in 0..(-scale) {
                let rem = value % 10;
                value /= 10;
                if rem != 0 {
                    value += 1;
                }
            }
        }
        u64::try_from(value).unwrap_or(u64::MAX)
    }

    /// The value as a whole number of units (bytes for memory), rounded up.
    pub fn as_units(&self) -> u64 {
        self.ceil_scaled(0)
    }

    /// The value in thousandths (millicores for CPU), rounded up.
    pub fn as_millis(&self) -> u64 {
        self.ceil_scaled(3)
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.digits == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usual memory and CPU spellings give the values Kubernetes gives.
    #[test]
    fn parses_kubernetes_spellings() {
        let cases: &[(&str, u64, u64)] = &[
            ("128Mi", 134_217_728, 134_217_728_000),
            ("1Gi", 1_073_741_824, 1_073_741_824_000),
            ("1G", 1_000_000_000, 1_000_000_000_000),
            ("500m", 1, 500),
            ("0.5", 1, 500),
            (".5", 1, 500),
            ("2", 2, 2000),
            ("1e3", 1000, 1_000_000),
            ("1.5Ki", 1536, 1_536_000),
            ("100k", 100_000, 100_000_000),
            ("0", 0, 0),
            ("250u", 1, 1),
            ("+3", 3, 3000),
        ];
        for (input, units, millis) in cases {
            let q = Quantity::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(q.as_units(), *units, "{input} units");
            assert_eq!(q.as_millis(), *millis, "{input} millis");
        }
    }

    /// Malformed and negative quantities are refused with the input named.
    #[test]
    fn refuses_bad_quantities() {
        for bad in [
            "", "Mi", "1.2.3", "12MB", "1Mb", "abc", "1e", "1e1234", "--1", "1 Gi",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            Quantity::parse("-1Gi"),
            Err(QuantityError::Negative("-1Gi".into()))
        );
        assert!(Quantity::parse("99999999999999999999999999999999999").is_err());
    }

    /// Huge but valid values saturate instead of overflowing.
    #[test]
    fn huge_values_saturate() {
        let q = Quantity::parse("999E").expect("valid");
        assert_eq!(q.as_millis(), u64::MAX);
    }
}
