//! The field names each manifest struct accepts, read from its `Deserialize` impl.
//!
//! serde's derive passes a struct's field list to `Deserializer::deserialize_struct`; a
//! deserializer that records that list and stops gives the names without keeping a second,
//! hand-written copy in sync. They feed the "did you mean …?" hints for unknown fields.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

struct Capture<'a>(&'a Cell<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field capture")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for Capture<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.0.set(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The field names of struct `T` as they appear in manifests.
pub fn of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let cell = Cell::new(&[][..]);
    let _ = T::deserialize(Capture(&cell));
    cell.get()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ContainerPort;

    /// The captured names are the camelCase names users write.
    #[test]
    fn captures_camel_case_names() {
        assert_eq!(
            of::<ContainerPort>(),
            &["name", "containerPort", "protocol"]
        );
    }
}
