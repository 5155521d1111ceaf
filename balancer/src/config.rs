//! The builder-style setters every policy configuration has, written once.

/// `impl $config { pub fn field(self, value) -> Self }` for each listed field, with the doc
/// comment "Sets [`field`](Self::field)." and `#[must_use]`. Fields under `optional` are
/// `Option<T>` set from a `T` (a seed: `seed(7)` rather than `seed(Some(7))`).
macro_rules! config_setters {
    (
        $config:ty {
            $($field:ident: $ty:ty),* $(,)?
        }
        $(optional { $($opt:ident: $opt_ty:ty),* $(,)? })?
    ) => {
        impl $config {
            $(
                #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
                #[must_use]
                pub fn $field(mut self, $field: $ty) -> Self {
                    self.$field = $field;
                    self
                }
            )*
            $($(
                #[doc = concat!("Sets [`", stringify!($opt), "`](Self::", stringify!($opt), ").")]
                #[must_use]
                pub fn $opt(mut self, $opt: $opt_ty) -> Self {
                    self.$opt = Some($opt);
                    self
                }
            )*)?
        }
    };
}

pub(crate) use config_setters;
