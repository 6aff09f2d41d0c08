//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`, `128974848`), as `resource.Quantity`
//! parses them: a signed decimal number, then a binary suffix (`Ki` … `Ei`), a decimal suffix
//! (`n`, `u`, `m`, `k`, `M`, `G`, `T`, `P`, `E`) or a decimal exponent (`e3`, `E-2`). Values are
//! exact (billionths of a unit), add and subtract without rounding, and print in a canonical
//! form that parses back to the same value.
//!
//! This crate owns only the number: it has no dependencies and does no IO, so the host and the
//! guest components (LimitRanger, ResourceQuota) share one reading of every quantity. What a
//! quantity means for a resource (cpu, memory, counts) belongs to its users.

/// A parsed quantity, exactly, in billionths of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(i128);

const NANO: i128 = 1_000_000_000;

impl Quantity {
    /// The value in whole units, rounded up (`value()` in Kubernetes).
    pub fn value(self) -> i64 {
        ceil_div(self.0, NANO)
    }

    /// The value in thousandths, rounded up (`milliValue()`: cpu in millicores).
    pub fn milli_value(self) -> i64 {
        ceil_div(self.0, NANO / 1000)
    }
}

impl Quantity {
    pub const ZERO: Quantity = Quantity(0);

    /// `count` whole units.
    pub fn from_value(count: i64) -> Self {
        Self(i128::from(count) * NANO)
    }

    /// `millis` thousandths of a unit.
    pub fn from_milli(millis: i64) -> Self {
        Self(i128::from(millis) * (NANO / 1000))
    }

    /// The exact value in billionths of a unit.
    pub fn nanos(self) -> i128 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::Add for Quantity {
    type Output = Quantity;
    fn add(self, other: Quantity) -> Quantity {
        Quantity(self.0.saturating_add(other.0))
    }
}

impl std::ops::AddAssign for Quantity {
    fn add_assign(&mut self, other: Quantity) {
        *self = *self + other;
    }
}

impl std::ops::Sub for Quantity {
    type Output = Quantity;
    fn sub(self, other: Quantity) -> Quantity {
        Quantity(self.0.saturating_sub(other.0))
    }
}

impl std::iter::Sum for Quantity {
    fn sum<I: Iterator<Item = Quantity>>(iter: I) -> Quantity {
        iter.fold(Quantity::ZERO, |a, b| a + b)
    }
}

/// The canonical form: whole units as a plain integer, or with the largest binary suffix that
/// divides them exactly (`128Mi`); fractions in the largest of `m`, `u`, `n` that holds them
/// exactly (`1500m`).
impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.0;
        if value == 0 {
            return f.write_str("0");
        }
        if value % NANO == 0 {
            let units = value / NANO;
            for (suffix, shift) in [
                ("Ei", 60),
                ("Pi", 50),
                ("Ti", 40),
                ("Gi", 30),
                ("Mi", 20),
                ("Ki", 10),
            ] {
                if units % (1i128 << shift) == 0 {
                    return write!(f, "{}{suffix}", units >> shift);
                }
            }
            return write!(f, "{units}");
        }
        for (suffix, per) in [("m", NANO / 1000), ("u", NANO / 1_000_000)] {
            if value % per == 0 {
                return write!(f, "{}{suffix}", value / per);
            }
        }
        write!(f, "{value}n")
    }
}

fn ceil_div(value: i128, by: i128) -> i64 {
    let quotient = value.div_euclid(by) + i128::from(value.rem_euclid(by) != 0);
    quotient.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Parses a quantity; the error says what is wrong, in Kubernetes' words where it has them.
pub fn parse(text: &str) -> Result<Quantity, String> {
    let invalid = || {
        format!(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text:?}"
        )
    };
    let text = text.trim();
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(invalid());
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.len() > 9 + 18 {
        return Err(invalid());
    }
    // The number as an integer scaled by 10^-fraction.len().
    let mut digits: i128 = 0;
    for c in whole.chars().chain(fraction.chars()) {
        digits = digits
            .checked_mul(10)
            .and_then(|d| d.checked_add(i128::from(c as u8 - b'0')))
            .ok_or_else(invalid)?;
    }
    let mut scale: i32 = -(fraction.len() as i32);
    let mut multiplier: i128 = 1;
    match suffix {
        "" => {}
        "Ki" => multiplier = 1 << 10,
        "Mi" => multiplier = 1 << 20,
        "Gi" => multiplier = 1 << 30,
        "Ti" => multiplier = 1 << 40,
        "Pi" => multiplier = 1 << 50,
        "Ei" => multiplier = 1 << 60,
        "n" => scale -= 9,
        "u" => scale -= 6,
        "m" => scale -= 3,
        "k" => scale += 3,
        "M" => scale += 6,
        "G" => scale += 9,
        "T" => scale += 12,
        "P" => scale += 15,
        "E" => scale += 18,
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..].parse().map_err(|_| invalid())?;
            if !(-40..=40).contains(&power) {
                return Err(invalid());
            }
            scale += power;
        }
        _ => return Err(invalid()),
    }
    // Into billionths: digits * multiplier * 10^(scale + 9), rounding a finer remainder up.
    let mut value = digits.checked_mul(multiplier).ok_or_else(invalid)?;
    let shift = scale + 9;
    if shift >= 0 {
        for _ in 0..shift {
            value = value.checked_mul(10).ok_or_else(invalid)?;
        }
    } else {
        let divisor = 10i128
            .checked_pow(shift.unsigned_abs())
            .ok_or_else(invalid)?;
        value = value / divisor + i128::from(value % divisor != 0);
    }
    Ok(Quantity(if negative { -value } else { value }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_forms() {
        assert_eq!(parse("100m").unwrap().milli_value(), 100);
        assert_eq!(parse("1").unwrap().milli_value(), 1000);
        assert_eq!(parse("0.5").unwrap().milli_value(), 500);
        assert_eq!(parse("1.5").unwrap().milli_value(), 1500);
        assert_eq!(parse("250u").unwrap().milli_value(), 1, "rounds up");
        assert_eq!(parse("1Gi").unwrap().value(), 1 << 30);
        assert_eq!(parse("1.5Gi").unwrap().value(), 3 << 29);
        assert_eq!(parse("128974848").unwrap().value(), 128_974_848);
        assert_eq!(parse("129e6").unwrap().value(), 129_000_000);
        assert_eq!(parse("123M").unwrap().value(), 123_000_000);
        assert_eq!(parse("1k").unwrap().value(), 1000);
        assert_eq!(parse("+2").unwrap().value(), 2);
        assert_eq!(parse("-2").unwrap().value(), -2);
        assert_eq!(parse("1E").unwrap().value(), 1_000_000_000_000_000_000);
        assert_eq!(parse("1e-3").unwrap().milli_value(), 1);
    }

    #[test]
    fn sums_print_canonically_and_parse_back() {
        let sum: Quantity = ["100m", "1.4", "0"].iter().map(|q| parse(q).unwrap()).sum();
        assert_eq!(sum.to_string(), "1500m");
        assert_eq!(
            (parse("64Mi").unwrap() + parse("64Mi").unwrap()).to_string(),
            "128Mi"
        );
        assert_eq!(parse("1G").unwrap().to_string(), "1000000000");
        assert_eq!(parse("2000m").unwrap().to_string(), "2");
        assert_eq!(parse("250u").unwrap().to_string(), "250u");
        assert_eq!((Quantity::ZERO - parse("1").unwrap()).to_string(), "-1");
        for text in ["1500m", "128Mi", "3", "7n", "-250m"] {
            let q = parse(text).unwrap();
            assert_eq!(parse(&q.to_string()).unwrap(), q, "{text}");
        }
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for bad in ["", "m", "1.2.3", "1Q", "1 Gi", "Gi", "1ee3", "1e999"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
