//! Logging that costs nothing without a logger: defmt on the boards
//! (feature `defmt`), nothing otherwise.

macro_rules! log_info {
    ($($t:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::info!($($t)*);
    }};
}

macro_rules! log_warn {
    ($($t:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::warn!($($t)*);
    }};
}

pub(crate) use log_info;
pub(crate) use log_warn;
