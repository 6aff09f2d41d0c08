//! CronJob schedules as Kubernetes reads them (robfig/cron's standard parser): five fields
//! (minute, hour, day of month, month, day of week) of `*`, `?`, numbers, names, ranges, steps
//! and lists, or a descriptor (`@hourly`, `@daily`, `@every 90m`, ...), optionally after
//! `TZ=<zone>` or `CRON_TZ=<zone>`. Errors read as that parser words them. A parsed
//! [`Schedule`] gives its activations: calendar fields the next civil time after a given one,
//! `@every` a constant delay between instants.
//!
//! It is shared by the API server's validation (`flotilla-api`) and the CronJob controller
//! plugin, which builds for `wasm32-wasip2`; it must stay free of dependencies. It knows no
//! clock and no time zone database: civil times are in whatever zone the caller means, and
//! turning them into instants (and deciding about the times a zone skips or repeats) is the
//! caller's.

use std::time::Duration;

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The zone a leading `TZ=` or `CRON_TZ=` names, unchecked (that needs the zone database).
    pub time_zone: Option<String>,
    pub timing: Timing,
}

/// When a schedule fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Calendar fields, matched against civil times.
    Calendar(Calendar),
    /// `@every <duration>`: activations this far apart, counted from wherever the caller starts
    /// (robfig's constant delay: whole seconds, at least one; any zone is irrelevant).
    Every(Duration),
}

/// A minute of a civil (wall-clock) time, with no zone. Ordered chronologically; the fields
/// must make a real date (`month` 1–12, `day` within the month, `hour` 0–23, `minute` 0–59).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CivilTime {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
}

/// The calendar fields of a schedule, each a set of the values it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calendar {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Whether the day of month or the day of week is unrestricted (`*` or `?`, unstepped): a
    /// day then matches both fields. When both are restricted a day matches either (cron's
    /// rule: `0 0 13 * 5` fires on the 13th and on Fridays).
    day_field_unrestricted: bool,
}

/// How far ahead [`Calendar::next_after`] looks before concluding a schedule never fires
/// (robfig's limit: `0 0 30 2 *` has no activation).
const YEARS_AHEAD: i32 = 5;

impl Schedule {
    /// Parses a schedule; the error says what is wrong with it.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (time_zone, spec) = split_time_zone(spec);
        if spec.is_empty() {
            return Err("empty spec string".to_owned());
        }
        let timing = if spec.starts_with('@') {
            descriptor(spec)?
        } else {
            Timing::Calendar(Calendar::parse(spec)?)
        };
        Ok(Self {
            time_zone: time_zone.map(str::to_owned),
            timing,
        })
    }
}

/// A leading `TZ=<zone>` or `CRON_TZ=<zone>`, and the schedule after it.
fn split_time_zone(schedule: &str) -> (Option<&str>, &str) {
    let schedule = schedule.trim();
    let Some(rest) = schedule
        .strip_prefix("TZ=")
        .or_else(|| schedule.strip_prefix("CRON_TZ="))
    else {
        return (None, schedule);
    };
    match rest.split_once(' ') {
        Some((zone, spec)) => (Some(zone), spec.trim()),
        None => (Some(rest), ""),
    }
}

/// The descriptors and the fields each stands for.
const DESCRIPTORS: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

fn descriptor(spec: &str) -> Result<Timing, String> {
    if let Some((_, fields)) = DESCRIPTORS.iter().find(|(name, _)| *name == spec) {
        return Calendar::parse(fields).map(Timing::Calendar);
    }
    match spec.strip_prefix("@every ") {
        Some(duration) => go_duration(duration)
            .map(every)
            .map_err(|error| format!("failed to parse duration {spec}: {error}")),
        None => Err(format!("unrecognized descriptor: {spec}")),
    }
}

/// robfig's `Every`: under a second counts as one second, and fractions of a second drop.
fn every(nanoseconds: i128) -> Timing {
    let seconds = u64::try_from(nanoseconds / 1_000_000_000).unwrap_or(0);
    Timing::Every(Duration::from_secs(seconds.max(1)))
}

/// The bounds of one field, and the names it accepts (numbered from `min`).
struct Field {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Field = Field {
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DAY_OF_WEEK: Field = Field {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// The fields in the order a schedule writes them.
const FIELDS: [&Field; 5] = [&MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK];

/// The values one field accepts, and whether it is unrestricted (`*` or `?` without a step).
#[derive(Clone, Copy, Default)]
struct Values {
    bits: u64,
    unrestricted: bool,
}

impl Values {
    fn union(self, other: Self) -> Self {
        Self {
            bits: self.bits | other.bits,
            unrestricted: self.unrestricted || other.unrestricted,
        }
    }
}

impl Calendar {
    fn parse(spec: &str) -> Result<Self, String> {
        let texts: Vec<&str> = spec.split_whitespace().collect();
        if texts.len() != FIELDS.len() {
            return Err(format!(
                "expected exactly {} fields, found {}: [{}]",
                FIELDS.len(),
                texts.len(),
                texts.join(" ")
            ));
        }
        let mut values = [Values::default(); 5];
        for ((text, field), out) in texts.iter().zip(FIELDS).zip(&mut values) {
            for expression in text.split(',') {
                *out = out.union(range(expression, field)?);
            }
        }
        let [minutes, hours, days_of_month, months, days_of_week] = values;
        Ok(Self {
            minutes: minutes.bits,
            hours: hours.bits,
            days_of_month: days_of_month.bits,
            months: months.bits,
            days_of_week: days_of_week.bits,
            day_field_unrestricted: days_of_month.unrestricted || days_of_week.unrestricted,
        })
    }

    /// Whether the schedule fires at `time`.
    pub fn matches(&self, time: CivilTime) -> bool {
        has(self.months, time.month)
            && self.day_matches(time)
            && has(self.hours, time.hour)
            && has(self.minutes, time.minute)
    }

    fn day_matches(&self, time: CivilTime) -> bool {
        let day_of_month = has(self.days_of_month, time.day);
        let day_of_week = has(self.days_of_week, time.weekday());
        if self.day_field_unrestricted {
            day_of_month && day_of_week
        } else {
            day_of_month || day_of_week
        }
    }

    /// The first activation strictly after `after`, if there is one within five years.
    pub fn next_after(&self, after: CivilTime) -> Option<CivilTime> {
        let mut time = after.next_minute();
        let last_year = time.year + YEARS_AHEAD;
        while time.year <= last_year {
            time = if !has(self.months, time.month) {
                time.next_month()
            } else if !self.day_matches(time) {
                time.next_day()
            } else if !has(self.hours, time.hour) {
                time.next_hour()
            } else if !has(self.minutes, time.minute) {
                time.next_minute()
            } else {
                return Some(time);
            };
        }
        None
    }

    /// The activations after `after`, in order.
    pub fn activations_after(&self, after: CivilTime) -> impl Iterator<Item = CivilTime> + '_ {
        std::iter::successors(self.next_after(after), |time| self.next_after(*time))
    }
}

fn has(bits: u64, value: u32) -> bool {
    bits & (1 << value) != 0
}

impl CivilTime {
    /// The day of the week, 0 for Sunday to 6 for Saturday.
    pub fn weekday(&self) -> u32 {
        // 1970-01-01 was a Thursday.
        (days_from_civil(self.year, self.month, self.day) + 4).rem_euclid(7) as u32
    }

    fn next_minute(self) -> Self {
        if self.minute < 59 {
            Self {
                minute: self.minute + 1,
                ..self
            }
        } else {
            self.next_hour()
        }
    }

    fn next_hour(self) -> Self {
        if self.hour < 23 {
            Self {
                hour: self.hour + 1,
                minute: 0,
                ..self
            }
        } else {
            self.next_day()
        }
    }

    fn next_day(self) -> Self {
        if self.day < days_in_month(self.year, self.month) {
            Self {
                day: self.day + 1,
                hour: 0,
                minute: 0,
                ..self
            }
        } else {
            self.next_month()
        }
    }

    fn next_month(self) -> Self {
        let (year, month) = if self.month < 12 {
            (self.year, self.month + 1)
        } else {
            (self.year + 1, 1)
        };
        Self {
            year,
            month,
            day: 1,
            hour: 0,
            minute: 0,
        }
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let year = i64::from(year) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// One element of a field: `*`, `?`, `n`, `a-b`, each optionally `/step`.
fn range(expression: &str, field: &Field) -> Result<Values, String> {
    let mut range_and_step = expression.split('/');
    let range = range_and_step.next().unwrap_or_default();
    let step = range_and_step.next();
    if range_and_step.next().is_some() {
        return Err(format!("too many slashes: {expression}"));
    }
    let bounds: Vec<&str> = range.split('-').collect();
    let star = matches!(bounds[0], "*" | "?");
    let (start, mut end) = match bounds.as_slice() {
        _ if star => (field.min, field.max),
        [single] => {
            let value = number_or_name(single, field)?;
            (value, value)
        }
        [low, high] => (number_or_name(low, field)?, number_or_name(high, field)?),
        _ => return Err(format!("too many hyphens: {expression}")),
    };
    if step.is_some() && bounds.len() == 1 {
        // `n/step` means from n to the end.
        end = field.max;
    }
    let step = step.map(number).transpose()?.unwrap_or(1);
    if start < field.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expression}",
            field.min
        ));
    }
    if end > field.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expression}",
            field.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expression}"
        ));
    }
    if step == 0 {
        return Err(format!(
            "step of range should be a positive number: {expression}"
        ));
    }
    let bits = (start..=end)
        .step_by(step as usize)
        .fold(0, |bits, value| bits | 1 << value);
    Ok(Values {
        bits,
        unrestricted: star && step == 1,
    })
}

fn number_or_name(text: &str, field: &Field) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    match field.names.iter().position(|name| *name == lower) {
        Some(index) => Ok(field.min + index as u32),
        None => number(text),
    }
}

fn number(text: &str) -> Result<u32, String> {
    let value: i64 = text.parse().map_err(|_| {
        format!("failed to parse int from {text}: strconv.Atoi: parsing {text:?}: invalid syntax")
    })?;
    if value < 0 {
        return Err(format!("negative number ({value}) not allowed: {text}"));
    }
    u32::try_from(value).map_err(|_| format!("end of range ({value}) above maximum: {text}"))
}

/// Go's `time.ParseDuration`, in nanoseconds: signed, a sequence of decimal numbers with units.
fn go_duration(text: &str) -> Result<i128, String> {
    /// Go's limit: a duration is an int64 of nanoseconds.
    const LIMIT: u128 = 1 << 63;
    let invalid = || format!("time: invalid duration {text:?}");
    let negative = text.starts_with('-');
    let mut rest = text.strip_prefix(['-', '+']).unwrap_or(text);
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (whole, after) = rest.split_at(digits_end);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => {
                let end = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                after.split_at(end)
            }
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let nanoseconds_per_unit: u128 = match unit {
            "" => return Err(format!("time: missing unit in duration {text:?}")),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            unit => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        // Digits past the eighteenth add less than a nanosecond per hour.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_part = if fraction.is_empty() {
            0
        } else {
            let numerator: u128 = fraction.parse().map_err(|_| invalid())?;
            numerator * nanoseconds_per_unit / 10u128.pow(fraction.len() as u32)
        };
        total = whole
            .checked_mul(nanoseconds_per_unit)
            .and_then(|value| value.checked_add(fraction_part))
            .and_then(|value| value.checked_add(total))
            .filter(|value| *value <= LIMIT)
            .ok_or_else(invalid)?;
        rest = after;
    }
    if negative {
        Ok(-(total as i128))
    } else if total < LIMIT {
        Ok(total as i128)
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: &str) -> Result<(), String> {
        Schedule::parse(spec).map(|_| ())
    }

    fn calendar(spec: &str) -> Calendar {
        match Schedule::parse(spec).unwrap().timing {
            Timing::Calendar(calendar) => calendar,
            Timing::Every(every) => panic!("{spec} is every {every:?}"),
        }
    }

    fn at(year: i32, month: u32, day: u32, hour: u32, minute: u32) -> CivilTime {
        CivilTime {
            year,
            month,
            day,
            hour,
            minute,
        }
    }

    /// The first `n` activations after `after`.
    fn next(spec: &str, after: CivilTime, n: usize) -> Vec<CivilTime> {
        calendar(spec).activations_after(after).take(n).collect()
    }

    #[test]
    fn accepts_standard_schedules() {
        for ok in [
            "* * * * *",
            "*/5 * * * *",
            "0 0 * * 0",
            "0 9-17 * * mon-fri",
            "30 2 1,15 JAN,jul ?",
            "5/15 * * * *",
            "0 0 31 12 6",
            "@hourly",
            "@daily",
            "@every 1h30m",
            "@every 1.5s",
            "TZ=UTC 0 0 * * *",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_with_the_parsers_words() {
        for (bad, error) in [
            ("", "empty spec string"),
            ("TZ=UTC", "empty spec string"),
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            ("60 * * * *", "end of range (60) above maximum (59): 60"),
            ("* * 0 * *", "beginning of range (0) below minimum (1): 0"),
            ("* * * * 7", "end of range (7) above maximum (6): 7"),
            (
                "5-1 * * * *",
                "beginning of range (5) beyond end of range (1): 5-1",
            ),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
            ("1/2/3 * * * *", "too many slashes: 1/2/3"),
            ("1-2-3 * * * *", "too many hyphens: 1-2-3"),
            (
                "x * * * *",
                "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax",
            ),
            ("@often", "unrecognized descriptor: @often"),
            (
                "@every 5d",
                "failed to parse duration @every 5d: time: unknown unit \"d\" in duration \"5d\"",
            ),
            (
                "@every 5",
                "failed to parse duration @every 5: time: missing unit in duration \"5\"",
            ),
            (
                "@every .s",
                "failed to parse duration @every .s: time: invalid duration \".s\"",
            ),
            (
                "@every 9999999999h",
                "failed to parse duration @every 9999999999h: time: invalid duration \"9999999999h\"",
            ),
        ] {
            assert_eq!(check(bad), Err(error.to_owned()), "{bad}");
        }
    }

    #[test]
    fn a_time_zone_prefix_is_kept_apart() {
        let schedule = Schedule::parse("CRON_TZ=Europe/Paris 0 9 * * *").unwrap();
        assert_eq!(schedule.time_zone.as_deref(), Some("Europe/Paris"));
        assert_eq!(
            schedule.timing,
            Schedule::parse("0 9 * * *").unwrap().timing
        );
        assert_eq!(Schedule::parse("@daily").unwrap().time_zone, None);
    }

    #[test]
    fn every_minute_rolls_over_hours_days_months_and_years() {
        assert_eq!(
            next("* * * * *", at(2026, 1, 1, 10, 0), 2),
            [at(2026, 1, 1, 10, 1), at(2026, 1, 1, 10, 2)]
        );
        assert_eq!(
            next("* * * * *", at(2026, 12, 31, 23, 59), 1),
            [at(2027, 1, 1, 0, 0)]
        );
        assert_eq!(
            next("* * * * *", at(2026, 2, 28, 23, 59), 1),
            [at(2026, 3, 1, 0, 0)]
        );
    }

    #[test]
    fn the_next_activation_is_strictly_after() {
        // An activation exactly at `after` is not the next one.
        assert_eq!(
            next("0 * * * *", at(2026, 5, 4, 10, 0), 1),
            [at(2026, 5, 4, 11, 0)]
        );
        assert!(calendar("0 * * * *").matches(at(2026, 5, 4, 10, 0)));
        assert!(!calendar("0 * * * *").matches(at(2026, 5, 4, 10, 1)));
    }

    #[test]
    fn february_29th_comes_in_leap_years_only() {
        assert_eq!(
            next("0 0 29 2 *", at(2025, 3, 1, 0, 0), 3),
            [
                at(2028, 2, 29, 0, 0),
                at(2032, 2, 29, 0, 0),
                at(2036, 2, 29, 0, 0)
            ]
        );
        // 2100 is not a leap year: from 2096 the next is 2104, beyond five years.
        assert_eq!(
            calendar("0 0 29 2 *").next_after(at(2096, 3, 1, 0, 0)),
            None
        );
        // A day no month has never comes.
        assert_eq!(
            calendar("0 0 30 2 *").next_after(at(2026, 1, 1, 0, 0)),
            None
        );
        // The 31st skips the shorter months.
        assert_eq!(
            next("0 12 31 * *", at(2026, 1, 31, 12, 0), 2),
            [at(2026, 3, 31, 12, 0), at(2026, 5, 31, 12, 0)]
        );
    }

    #[test]
    fn days_of_month_and_of_week_combine_as_cron_does() {
        // 2026-02-06 is a Friday; both fields restricted: the 13th or a Friday.
        assert_eq!(
            next("0 0 13 * 5", at(2026, 2, 1, 0, 0), 4),
            [
                at(2026, 2, 6, 0, 0),
                at(2026, 2, 13, 0, 0),
                at(2026, 2, 20, 0, 0),
                at(2026, 2, 27, 0, 0)
            ]
        );
        assert_eq!(
            next("0 0 1 * 5", at(2026, 2, 1, 0, 0), 2),
            [at(2026, 2, 6, 0, 0), at(2026, 2, 13, 0, 0)]
        );
        // One field unrestricted: the other decides.
        assert_eq!(
            next("0 0 * * fri", at(2026, 2, 1, 0, 0), 1),
            [at(2026, 2, 6, 0, 0)]
        );
        assert_eq!(
            next("0 0 13 * ?", at(2026, 2, 1, 0, 0), 1),
            [at(2026, 2, 13, 0, 0)]
        );
        // `*/1` is still unrestricted, `*/2` is a restriction: then either field suffices.
        assert_eq!(
            next("0 0 */1 * 1", at(2026, 2, 1, 0, 0), 1),
            [at(2026, 2, 2, 0, 0)]
        );
        assert_eq!(
            next("0 0 */2 * 1", at(2026, 2, 1, 0, 0), 3),
            [
                at(2026, 2, 2, 0, 0),
                at(2026, 2, 3, 0, 0),
                at(2026, 2, 5, 0, 0)
            ]
        );
    }

    #[test]
    fn steps_ranges_lists_and_names() {
        assert_eq!(
            next("5/20 * * * *", at(2026, 1, 1, 0, 0), 4),
            [
                at(2026, 1, 1, 0, 5),
                at(2026, 1, 1, 0, 25),
                at(2026, 1, 1, 0, 45),
                at(2026, 1, 1, 1, 5)
            ]
        );
        assert_eq!(
            next("*/30 9-17/4 * * *", at(2026, 1, 1, 9, 30), 4),
            [
                at(2026, 1, 1, 13, 0),
                at(2026, 1, 1, 13, 30),
                at(2026, 1, 1, 17, 0),
                at(2026, 1, 1, 17, 30)
            ]
        );
        // 2026-01-05 is a Monday.
        assert_eq!(
            next("0 12 * jan-mar,DEC mon", at(2026, 3, 30, 12, 0), 2),
            [at(2026, 12, 7, 12, 0), at(2026, 12, 14, 12, 0)]
        );
        assert_eq!(
            next("15 8,20 1,15 * *", at(2026, 1, 1, 8, 15), 3),
            [
                at(2026, 1, 1, 20, 15),
                at(2026, 1, 15, 8, 15),
                at(2026, 1, 15, 20, 15)
            ]
        );
    }

    #[test]
    fn descriptors_are_their_fields() {
        // 2026-01-04 is a Sunday.
        assert_eq!(
            next("@weekly", at(2026, 1, 1, 0, 0), 1),
            [at(2026, 1, 4, 0, 0)]
        );
        assert_eq!(
            next("@yearly", at(2026, 1, 1, 0, 0), 1),
            [at(2027, 1, 1, 0, 0)]
        );
        assert_eq!(
            next("@monthly", at(2026, 1, 1, 0, 0), 1),
            [at(2026, 2, 1, 0, 0)]
        );
        assert_eq!(calendar("@midnight"), calendar("@daily"));
        assert_eq!(calendar("@hourly"), calendar("0 * * * *"));
    }

    #[test]
    fn civil_times_know_no_daylight_saving() {
        // 02:30 on the night Paris skips it is still an activation here; the caller, who
        // knows the zone, decides what becomes of it.
        assert_eq!(
            next("30 2 * * *", at(2026, 3, 29, 0, 0), 1),
            [at(2026, 3, 29, 2, 30)]
        );
    }

    #[test]
    fn every_is_a_delay_in_whole_seconds() {
        for (spec, seconds) in [
            ("@every 1h30m", 5400),
            ("@every 90s", 90),
            ("@every 1.5s", 1),
            ("@every 500ms", 1),
            ("@every 0", 1),
            ("@every -5m", 1),
            ("@every 1.5h", 5400),
            ("@every 2m0.9s", 120),
        ] {
            assert_eq!(
                Schedule::parse(spec).unwrap().timing,
                Timing::Every(Duration::from_secs(seconds)),
                "{spec}"
            );
        }
    }

    #[test]
    fn weekdays() {
        assert_eq!(at(1970, 1, 1, 0, 0).weekday(), 4);
        assert_eq!(at(2026, 1, 4, 0, 0).weekday(), 0);
        assert_eq!(at(2000, 2, 29, 0, 0).weekday(), 2);
        assert_eq!(at(1969, 12, 31, 0, 0).weekday(), 3);
    }
}
