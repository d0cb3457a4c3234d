//! Durations (`250ms`, `2s`, `10m`), sizes (`64KiB`, `8MiB`), priority
//! classes (`critical`, `standard`, `batch` or a number) and shares of a
//! bulkhead (`25%` or a count) as config values.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// A config value written as a number or as text (`8MiB`, `critical`, `25%`).
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    N(u64),
    S(String),
}

/// A duration written as `250ms`, `2s`, `10m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Dur(pub Duration);

/// A byte size written as `64KiB`, `8MiB`, `1GB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Size(pub u64);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("invalid duration '{s}' ({e}); write e.g. 250ms, 2s, 10m"))
    }
}

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("invalid size '{s}' ({e}); write e.g. 64KiB, 8MiB"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::N(n) => Ok(Size(n)),
            NumOrStr::S(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl serde::Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// A priority class: `critical` (200), `standard` (100), `batch` (0) or any
/// number 0..=255 between. A bulkhead serves higher numbers first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(pub u8);

impl Priority {
    pub const BATCH: Priority = Priority(0);
    pub const STANDARD: Priority = Priority(100);
    pub const CRITICAL: Priority = Priority(200);

    /// A name or a number, as a keys file, a config or a header writes it.
    pub fn parse(s: &str) -> Result<Priority, String> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "critical" => Ok(Priority::CRITICAL),
            "standard" => Ok(Priority::STANDARD),
            "batch" => Ok(Priority::BATCH),
            n => n.parse::<u8>().map(Priority).map_err(|_| {
                format!("invalid priority '{s}': write critical, standard, batch or a number 0-255 (higher is served first)")
            }),
        }
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::STANDARD
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Priority::CRITICAL => f.write_str("critical"),
            Priority::STANDARD => f.write_str("standard"),
            Priority::BATCH => f.write_str("batch"),
            Priority(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::N(n) => u8::try_from(n)
                .map(Priority)
                .map_err(|_| serde::de::Error::custom(format!("invalid priority {n}: a number must be 0-255"))),
            NumOrStr::S(s) => Priority::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl serde::Serialize for Priority {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A part of a bulkhead's `max_concurrent`: `25%` or a number of slots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Share {
    Percent(f64),
    Slots(usize),
}

impl Share {
    /// Slots out of `of`, rounded down.
    pub fn of(&self, of: usize) -> usize {
        match *self {
            Share::Percent(p) => ((of as f64) * p / 100.0).floor() as usize,
            Share::Slots(n) => n,
        }
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bad =
            |s: &str| format!("invalid share '{s}': write a percentage of max_concurrent (25%) or a number of slots");
        match NumOrStr::deserialize(d)? {
            NumOrStr::N(n) => Ok(Share::Slots(n as usize)),
            NumOrStr::S(s) => match s.trim().strip_suffix('%') {
                Some(p) => match p.trim().parse::<f64>() {
                    Ok(p) if (0.0..=100.0).contains(&p) => Ok(Share::Percent(p)),
                    _ => Err(serde::de::Error::custom(bad(&s))),
                },
                None => s
                    .trim()
                    .parse::<usize>()
                    .map(Share::Slots)
                    .map_err(|_| serde::de::Error::custom(bad(&s))),
            },
        }
    }
}

impl serde::Serialize for Share {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Share::Percent(p) => s.serialize_str(&format!("{p}%")),
            Share::Slots(n) => s.serialize_u64(n as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("2s").unwrap().0, Duration::from_secs(2));
        assert_eq!(Dur::parse("10m").unwrap().0, Duration::from_secs(600));
        assert!(Dur::parse("2 fortnights please").is_err());
        assert!(Dur::parse("abc").is_err());
    }

    #[test]
    fn priorities() {
        assert_eq!(Priority::parse("Critical").unwrap(), Priority::CRITICAL);
        assert_eq!(Priority::parse("150").unwrap(), Priority(150));
        assert!(Priority::parse("urgent")
            .unwrap_err()
            .contains("critical, standard, batch"));
        assert!(Priority::parse("300").is_err());
        assert_eq!(Priority(150).to_string(), "150");
        assert_eq!(Priority::BATCH.to_string(), "batch");
        assert!(Priority::CRITICAL > Priority::STANDARD && Priority::STANDARD > Priority::BATCH);
    }

    #[test]
    fn shares() {
        let s: Share = serde_yaml_ng::from_str("'25%'").unwrap();
        assert_eq!(s.of(10), 2);
        let s: Share = serde_yaml_ng::from_str("3").unwrap();
        assert_eq!(s.of(10), 3);
        assert!(serde_yaml_ng::from_str::<Share>("'150%'").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("64KiB").unwrap().0, 64 * 1024);
        assert_eq!(Size::parse("8MiB").unwrap().0, 8 * 1024 * 1024);
        assert!(Size::parse("lots").is_err());
    }
}
