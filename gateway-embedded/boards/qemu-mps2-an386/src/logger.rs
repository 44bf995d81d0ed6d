//! `log` records to the host console through ARM semihosting (QEMU's
//! `-semihosting-config enable=on,target=native`), with the uptime in
//! milliseconds. Semihosting halts the core for every write, which is fine
//! for a test image and would be wrong on hardware without a debugger.

use core::cell::RefCell;
use core::fmt::Write as _;

use cortex_m_semihosting::hio::{self, HostStream};
use critical_section::Mutex;

struct SemihostingLogger {
    out: Mutex<RefCell<Option<HostStream>>>,
}

static LOGGER: SemihostingLogger = SemihostingLogger {
    out: Mutex::new(RefCell::new(None)),
};

impl log::Log for SemihostingLogger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ms = embassy_time::Instant::now().as_millis();
        critical_section::with(|cs| {
            let mut out = self.out.borrow(cs).borrow_mut();
            if out.is_none() {
                *out = hio::hstdout().ok();
            }
            if let Some(out) = out.as_mut() {
                let _ = writeln!(
                    out,
                    "[{:>5}.{:03}] {:<5} {}",
                    ms / 1000,
                    ms % 1000,
                    record.level(),
                    record.args()
                );
            }
        });
    }

    fn flush(&self) {}
}

/// Installs the logger (info level).
pub(crate) fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
