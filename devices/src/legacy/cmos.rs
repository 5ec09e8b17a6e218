//! The PC's CMOS RAM and real-time clock (Motorola MC146818 register set): index port 0x70, data
//! port 0x71. The clock reads the host's time (UTC) plus whatever offset the guest set; there are
//! no RTC interrupts (register C reads 0).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::BusDevice;

/// The index port; the data port follows it.
pub const CMOS_PORT: u64 = 0x70;
/// Index and data.
pub const CMOS_PORT_LEN: u64 = 2;

/// Register numbers (MC146818 data sheet; 0x32 is the IBM PC century byte).
mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const MINUTES: u8 = 0x02;
    pub const HOURS: u8 = 0x04;
    pub const WEEKDAY: u8 = 0x06;
    pub const DAY: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const A: u8 = 0x0a;
    pub const B: u8 = 0x0b;
    pub const C: u8 = 0x0c;
    pub const D: u8 = 0x0d;
    pub const CENTURY: u8 = 0x32;
}

/// Register A: update in progress (read-only here, never set: reads are instantaneous).
const A_UIP: u8 = 0x80;
/// Register B: SET stops updates while the guest writes the time; DM selects binary (else BCD);
/// 24/12 selects 24-hour mode.
const B_SET: u8 = 0x80;
const B_DM_BINARY: u8 = 0x04;
const B_24_HOUR: u8 = 0x02;
/// Register D: valid RAM and time.
const D_VRT: u8 = 0x80;
/// Hour register bit 7 in 12-hour mode.
const HOUR_PM: u8 = 0x80;

/// Reads the host clock: seconds since the Unix epoch.
pub type Clock = Box<dyn Fn() -> i64 + Send>;

/// The host's wall clock.
pub fn system_clock() -> Clock {
    Box::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    })
}

/// CMOS RAM and RTC.
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    clock: Clock,
    /// Guest time minus host time, in seconds: what the guest set.
    offset: i64,
    /// The time being written while register B's SET bit is on.
    frozen: Option<DateTime>,
}

impl std::fmt::Debug for Cmos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmos")
            .field("index", &self.index)
            .field("offset", &self.offset)
            .finish()
    }
}

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 0 = Sunday.
    weekday: u8,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the classic era-based conversion).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            weekday: (days + 4).rem_euclid(7) as u8,
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4).saturating_mul(10).saturating_add(v & 0xf)
}

impl Cmos {
    /// CMOS with the clock reading `clock`; 24-hour BCD mode, as firmware leaves it.
    pub fn new(clock: Clock) -> Self {
        let mut cmos = Self {
            index: 0,
            ram: [0; 128],
            clock,
            offset: 0,
            frozen: None,
        };
        cmos.set_ram(reg::A, 0x26);
        cmos.set_ram(reg::B, B_24_HOUR);
        cmos.set_ram(reg::D, D_VRT);
        cmos
    }

    /// CMOS RAM byte `index` (taken modulo 128, as the index register is 7 bits).
    fn ram(&self, index: u8) -> u8 {
        self.ram
            .get(usize::from(index & 0x7f))
            .copied()
            .unwrap_or(0)
    }

    fn set_ram(&mut self, index: u8, value: u8) {
        if let Some(b) = self.ram.get_mut(usize::from(index & 0x7f)) {
            *b = value;
        }
    }

    fn now(&self) -> DateTime {
        self.frozen
            .unwrap_or_else(|| DateTime::from_unix((self.clock)().saturating_add(self.offset)))
    }

    fn mode(&self) -> u8 {
        self.ram(reg::B)
    }

    fn encode(&self, v: u8) -> u8 {
        if self.mode() & B_DM_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.mode() & B_DM_BINARY != 0 {
            v
        } else {
            from_bcd(v)
        }
    }

    fn read_register(&mut self, index: u8) -> u8 {
        let t = self.now();
        match index {
            reg::SECONDS => self.encode(t.second),
            reg::MINUTES => self.encode(t.minute),
            reg::HOURS if self.mode() & B_24_HOUR != 0 => self.encode(t.hour),
            reg::HOURS => {
                let h12 = if t.hour.is_multiple_of(12) {
                    12
                } else {
                    t.hour % 12
                };
                self.encode(h12) | if t.hour >= 12 { HOUR_PM } else { 0 }
            }
            reg::WEEKDAY => self.encode(t.weekday + 1),
            reg::DAY => self.encode(t.day),
            reg::MONTH => self.encode(t.month),
            reg::YEAR => self.encode(t.year.rem_euclid(100) as u8),
            reg::CENTURY => self.encode(t.year.div_euclid(100).clamp(0, 99) as u8),
            reg::A => self.ram(reg::A) & !A_UIP,
            // No interrupt is ever pending.
            reg::C => 0,
            reg::D => D_VRT,
            _ => self.ram(index),
        }
    }

    fn write_register(&mut self, index: u8, value: u8) {
        let time_field = matches!(
            index,
            reg::SECONDS
                | reg::MINUTES
                | reg::HOURS
                | reg::DAY
                | reg::MONTH
                | reg::YEAR
                | reg::CENTURY
        );
        if time_field {
            let mut t = self.now();
            let v = self.decode(value & !HOUR_PM);
            match index {
                reg::SECONDS => t.second = v.min(59),
                reg::MINUTES => t.minute = v.min(59),
                reg::HOURS if self.mode() & B_24_HOUR != 0 => t.hour = v.min(23),
                reg::HOURS => {
                    t.hour = v.clamp(1, 12) % 12 + if value & HOUR_PM != 0 { 12 } else { 0 }
                }
                reg::DAY => t.day = v.clamp(1, 31),
                reg::MONTH => t.month = v.clamp(1, 12),
                reg::YEAR => t.year = t.year.div_euclid(100) * 100 + i64::from(v.min(99)),
                _ => t.year = i64::from(v.min(99)) * 100 + t.year.rem_euclid(100),
            }
            self.set_time(t);
            return;
        }
        match index {
            reg::A => self.set_ram(reg::A, value & !A_UIP),
            reg::B => {
                let was_set = self.mode() & B_SET != 0;
                if value & B_SET != 0 && !was_set {
                    self.frozen = Some(self.now());
                }
                self.set_ram(reg::B, value);
                if value & B_SET == 0
                    && let Some(t) = self.frozen.take()
                {
                    self.offset = t.to_unix().saturating_sub((self.clock)());
                }
            }
            reg::C | reg::D | reg::WEEKDAY => {}
            _ => self.set_ram(index, value),
        }
    }

    /// While SET is on, writes collect in the frozen time; otherwise each write moves the clock.
    fn set_time(&mut self, t: DateTime) {
        if self.frozen.is_some() {
            self.frozen = Some(t);
        } else {
            self.offset = t.to_unix().saturating_sub((self.clock)());
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let (Some(first), 1) = (data.first_mut(), offset) {
            *first = self.read_register(self.index);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            // Bit 7 of the index masks NMIs on real hardware; it selects nothing here.
            0 => self.index = value & 0x7f,
            1 => self.write_register(self.index, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// 2026-11-21 19:20:54 UTC, a Saturday.
    const NOW: i64 = 1_795_288_854;

    fn cmos_at(now: i64) -> (Cmos, Arc<AtomicI64>) {
        let t = Arc::new(AtomicI64::new(now));
        let clock = t.clone();
        (
            Cmos::new(Box::new(move || clock.load(Ordering::Relaxed))),
            t,
        )
    }

    fn read(c: &mut Cmos, index: u8) -> u8 {
        c.write(CMOS_PORT, 0, &[index]);
        let mut b = [0u8];
        c.read(CMOS_PORT, 1, &mut b);
        b[0]
    }

    fn write(c: &mut Cmos, index: u8, value: u8) {
        c.write(CMOS_PORT, 0, &[index]);
        c.write(CMOS_PORT, 1, &[value]);
    }

    #[test]
    fn calendar_conversion_round_trips() {
        assert_eq!(
            DateTime::from_unix(0).weekday,
            4,
            "1970-01-01 was a Thursday"
        );
        for secs in [
            0,
            951_782_400, /* 2000-02-29 */
            NOW,
            4_102_444_800, /* 2100-01-01 */
        ] {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs);
        }
        let t = DateTime::from_unix(951_782_400);
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
    }

    #[test]
    fn reads_the_host_time_in_bcd() {
        let (mut c, _) = cmos_at(NOW);
        let regs = [
            reg::CENTURY,
            reg::YEAR,
            reg::MONTH,
            reg::DAY,
            reg::HOURS,
            reg::MINUTES,
            reg::SECONDS,
        ];
        let got: Vec<u8> = regs.iter().map(|r| read(&mut c, *r)).collect();
        assert_eq!(got, vec![0x20, 0x26, 0x11, 0x21, 0x19, 0x20, 0x54]);
        assert_eq!(read(&mut c, reg::WEEKDAY), 7, "Saturday");
        assert_eq!(read(&mut c, reg::A) & A_UIP, 0);
        assert_eq!(read(&mut c, reg::D), D_VRT);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let (mut c, _) = cmos_at(NOW);
        write(&mut c, reg::B, B_DM_BINARY);
        assert_eq!(read(&mut c, reg::HOURS), 7 | HOUR_PM);
        assert_eq!(read(&mut c, reg::SECONDS), 54);
    }

    #[test]
    fn guest_set_time_keeps_running_from_the_new_value() {
        let (mut c, clock) = cmos_at(NOW);
        write(&mut c, reg::B, B_SET | B_24_HOUR);
        write(&mut c, reg::YEAR, 0x30);
        write(&mut c, reg::HOURS, 0x08);
        write(&mut c, reg::B, B_24_HOUR);
        clock.fetch_add(10, Ordering::Relaxed);
        assert_eq!(read(&mut c, reg::YEAR), 0x30);
        assert_eq!(read(&mut c, reg::HOURS), 0x08);
        assert_eq!(read(&mut c, reg::SECONDS), 0x04, "54 s + 10 s");
    }

    #[test]
    fn ram_bytes_hold_their_values_and_garbage_is_harmless() {
        let (mut c, _) = cmos_at(NOW);
        write(&mut c, 0x40, 0xa5);
        assert_eq!(read(&mut c, 0x40), 0xa5);
        assert_eq!(
            read(&mut c, 0x80 | 0x40),
            0xa5,
            "bit 7 of the index is the NMI mask"
        );
        for v in [0xff, 0x99, 0x00] {
            for r in 0..0x80u8 {
                write(&mut c, r, v);
                read(&mut c, r);
            }
        }
        let mut wide = [0u8; 4];
        c.read(CMOS_PORT, 0, &mut wide);
        c.write(CMOS_PORT, 5, &[1]);
        c.write(CMOS_PORT, 1, &[]);
    }
}
