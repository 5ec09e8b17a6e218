//! The PC legacy devices: COM1, the CMOS RTC, the i8042 controller (for its reset line), the
//! debug-exit port and the ACPI power-management registers that the FADT points at.

mod acpi_pm;
mod cmos;
mod exit_port;
mod i8042;
mod serial;

pub use acpi_pm::{
    ACPI_PM_LEN, AcpiPm, RESET_REGISTER, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL, SLEEP_STATUS,
};
pub use cmos::{CMOS_PORT, CMOS_PORT_LEN, Clock, Cmos, system_clock};
pub use exit_port::{EXIT_PORT, EXIT_PORT_LEN, ExitPort};
pub use i8042::{I8042, I8042_DATA_PORT};
pub use serial::{IrqTrigger, RxDrained, Serial};
