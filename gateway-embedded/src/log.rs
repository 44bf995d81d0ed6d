//! Logging that costs nothing without a logger: defmt on the boards
//! (feature `defmt`), the `log` facade on the host (feature `log`),
//! nothing otherwise. Format strings use the subset both understand
//! (`{}` for plain values, `{:?}` for everything else).

macro_rules! log_info {
    ($($t:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::info!($($t)*);
        #[cfg(feature = "log")]
        ::log::info!($($t)*);
    }};
}

macro_rules! log_warn {
    ($($t:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::warn!($($t)*);
        #[cfg(feature = "log")]
        ::log::warn!($($t)*);
    }};
}

pub(crate) use log_info;
pub(crate) use log_warn;
