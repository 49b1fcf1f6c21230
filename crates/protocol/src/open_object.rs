//! Deserialization of "open" JSON objects: structs with typed fields plus an `extra` map that keeps
//! every other field.
//!
//! `#[serde(flatten)]` does this too, but it first buffers the whole object into serde's internal
//! `Content` tree (every string copied once more, every field dispatched twice) because it cannot know
//! which keys the flattened map will take. The chat types are parsed on every request and every stream
//! chunk, so [`open_object!`] generates a single-pass visitor instead: known keys are deserialized
//! straight into their fields, unknown keys into `extra` as `serde_json::Value`.
//!
//! Behaviour matches the derive it replaces: a missing required field is `missing field `x``, a repeated
//! known field is `duplicate field `x``, and fields absent from the input take their default.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// An object key, borrowed from the input when it has no escapes.
pub(crate) struct Key<'de>(pub Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// `open_object!(Type, "what it is", required { a: A, .. }, optional { b: B = default_expr, .. })`
/// implements `Deserialize` for `Type`, whose remaining field `extra: Extra` takes unknown keys.
macro_rules! open_object {
    (
        $ty:ident, $expecting:literal,
        required { $($req:ident : $rty:ty),* $(,)? },
        optional { $($opt:ident : $oty:ty = $default:expr),* $(,)? }
    ) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct ObjectVisitor;
                impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<$ty, A::Error> {
                        use serde::de::Error as _;
                        $(let mut $req: Option<$rty> = None;)*
                        $(let mut $opt: Option<$oty> = None;)*
                        let mut extra = $crate::openai::Extra::new();
                        while let Some(key) = map.next_key::<$crate::open_object::Key<'de>>()? {
                            match &*key.0 {
                                $(stringify!($req) => {
                                    if $req.is_some() {
                                        return Err(A::Error::duplicate_field(stringify!($req)));
                                    }
                                    $req = Some(map.next_value()?);
                                })*
                                $(stringify!($opt) => {
                                    if $opt.is_some() {
                                        return Err(A::Error::duplicate_field(stringify!($opt)));
                                    }
                                    $opt = Some(map.next_value()?);
                                })*
                                _ => {
                                    let value: serde_json::Value = map.next_value()?;
                                    extra.insert(key.0.into_owned(), value);
                                }
                            }
                        }
                        Ok($ty {
                            $($req: match $req {
                                Some(v) => v,
                                None => return Err(A::Error::missing_field(stringify!($req))),
                            },)*
                            $($opt: match $opt {
                                Some(v) => v,
                                None => $default,
                            },)*
                            extra,
                        })
                    }
                }
                d.deserialize_map(ObjectVisitor)
            }
        }
    };
}

pub(crate) use open_object;
