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

/// A load-aware policy's balancer: its configuration and the one [`LoadClock`] the
/// statistics it makes share (so that an idle endpoint's estimate still sees time pass), with
/// `Default` and `new(config)`. The doc comment and attributes given go on the struct.
///
/// [`LoadClock`]: crate::LoadClock
macro_rules! clocked_balancer {
    ($(#[$meta:meta])* $name:ident($config:ty), $policy:literal) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub struct $name {
            config: $config,
            clock: std::sync::Arc<crate::LoadClock>,
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new(<$config>::default())
            }
        }

        impl $name {
            #[doc = concat!("A ", $policy, " policy with `config`.")]
            pub fn new(config: $config) -> Self {
                $name {
                    config,
                    clock: std::sync::Arc::new(crate::LoadClock::new()),
                }
            }
        }
    };
}

pub(crate) use clocked_balancer;
