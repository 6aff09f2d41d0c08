//! When a CronJob's schedule fires, as instants (seconds since the Unix epoch): its activations
//! after the last scheduled time, what a reconcile at a given moment owes, and the next one.
//!
//! A calendar schedule matches the civil time of its zone. Where the zone skips civil times
//! (clocks spring forward), an activation in the gap does not happen; where it repeats them
//! (clocks fall back), an activation in the repeated span happens at both instants. That is
//! what robfig/cron, and so Kubernetes, does. `@every` counts whole seconds from the last
//! scheduled time and knows no zone.
//!
//! Zones come from the IANA database `chrono-tz` compiles in. Finding where a zone's offset
//! changes assumes it changes at most once in any day, as every zone in the database does.

use chrono::{
    DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, SecondsFormat, TimeZone, Timelike,
};
use chrono_tz::Tz;
use flotilla_cron::{Calendar, CivilTime, Timing};

const DAY: i64 = 86_400;
/// How far ahead an activation is looked for (the calendar's five years, and a margin).
const HORIZON: i64 = 6 * 366 * DAY;
/// More missed activations than this and Kubernetes warns, starting only the latest.
pub const MISSED_LIMIT: usize = 100;

/// The time zone `spec.timeZone` names; UTC when it names none.
pub fn time_zone(name: Option<&str>) -> Result<Tz, String> {
    match name {
        None => Ok(Tz::UTC),
        Some(name) => name
            .parse()
            .map_err(|_| format!("unknown time zone {name}")),
    }
}

/// An instant as RFC 3339 in `zone` (`2026-03-29T03:00:00+02:00`, `Z` for a zero offset).
pub fn rfc3339(instant: i64, zone: Tz) -> String {
    DateTime::from_timestamp(instant, 0)
        .map(|utc| {
            utc.with_timezone(&zone)
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        })
        .unwrap_or_default()
}

/// An instant as RFC 1123 with a numeric zone, in UTC (`Sun, 29 Mar 2026 01:00:00 +0000`).
pub fn rfc1123z(instant: i64) -> String {
    DateTime::from_timestamp(instant, 0)
        .map(|utc| utc.format("%a, %d %b %Y %H:%M:%S %z").to_string())
        .unwrap_or_default()
}

/// What a reconcile owes the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// No activation since the last scheduled time.
    Nothing,
    /// Start the Job of the activation `at`, the latest; `too_many_missed` when more than
    /// [`MISSED_LIMIT`] activations within the starting deadline went unstarted.
    Start { at: i64, too_many_missed: bool },
    /// The latest activation is older than the starting deadline: it is skipped.
    TooLate { at: i64 },
}

/// The activations of a schedule in a zone after `since`, the last scheduled time (or the
/// CronJob's creation).
#[derive(Clone, Copy, Debug)]
pub struct Activations<'a> {
    timing: &'a Timing,
    zone: Tz,
    since: i64,
}

impl<'a> Activations<'a> {
    pub fn new(timing: &'a Timing, zone: Tz, since: i64) -> Self {
        Self {
            timing,
            zone,
            since,
        }
    }

    /// What is owed at `now`: the latest activation up to it, if the starting deadline (in
    /// seconds, when set) still allows starting it, and whether too many went by.
    pub fn due(&self, now: i64, starting_deadline: Option<i64>) -> Due {
        let Some(latest) = self.latest_until(now) else {
            return Due::Nothing;
        };
        let earliest_start = starting_deadline.map(|deadline| now - deadline);
        if earliest_start.is_some_and(|earliest| latest < earliest) {
            return Due::TooLate { at: latest };
        }
        let counted_from = earliest_start.map_or(self.since, |earliest| earliest - 1);
        let missed = self.count_between(counted_from, now, MISSED_LIMIT + 1);
        Due::Start {
            at: latest,
            too_many_missed: missed > MISSED_LIMIT,
        }
    }

    /// The first activation strictly after `instant`, if one comes within five years.
    pub fn next_after(&self, instant: i64) -> Option<i64> {
        let instant = instant.max(self.since);
        match self.timing {
            Timing::Every(period) => {
                let period = i64::try_from(period.as_secs()).ok()?.max(1);
                let periods = (instant - self.since) / period + 1;
                Some(self.since + periods * period)
            }
            Timing::Calendar(calendar) => next_in_zone(calendar, self.zone, instant),
        }
    }

    /// The latest activation at or before `until`.
    pub fn latest_until(&self, until: i64) -> Option<i64> {
        if until <= self.since {
            return None;
        }
        if let Timing::Every(period) = self.timing {
            let period = i64::try_from(period.as_secs()).ok()?.max(1);
            let periods = (until - self.since) / period;
            return (periods > 0).then_some(self.since + periods * period);
        }
        // Back over a doubling window, so a long history is not walked from its start.
        let mut window = 60;
        loop {
            let from = until.saturating_sub(window).max(self.since);
            let latest = self.after(from).take_while(|t| *t <= until).last();
            if latest.is_some() || from == self.since {
                return latest;
            }
            window = window.saturating_mul(2);
        }
    }

    /// How many activations fall in (`from`, `until`], counting to `limit` at most.
    pub fn count_between(&self, from: i64, until: i64, limit: usize) -> usize {
        self.after(from)
            .take_while(|t| *t <= until)
            .take(limit)
            .count()
    }

    /// The activations after `from`, in order.
    fn after(&self, from: i64) -> impl Iterator<Item = i64> + '_ {
        std::iter::successors(self.next_after(from), |t| self.next_after(*t))
    }
}

/// The first activation of `calendar` in `zone` strictly after `instant`. Walks the spans of
/// constant offset: in each, the first civil activation from the span's start, if the span
/// lasts until it.
fn next_in_zone(calendar: &Calendar, zone: Tz, instant: i64) -> Option<i64> {
    let give_up = instant.checked_add(HORIZON)?;
    let mut start = instant + 1;
    while start <= give_up {
        let offset = offset_at(zone, start)?;
        // The first civil minute at or after the span's start: the one after the minute
        // holding the second before it.
        let before = civil_minute(start + offset - 1)?;
        let candidate = seconds_of(calendar.next_after(before)?)? - offset;
        match offset_change(zone, start, candidate, offset)? {
            None => return Some(candidate),
            Some(change) => start = change,
        }
    }
    None
}

/// The first instant in (`from`, `to`] at which `zone`'s offset is no longer `offset`.
fn offset_change(zone: Tz, from: i64, to: i64, offset: i64) -> Option<Option<i64>> {
    let mut unchanged = from;
    loop {
        let probe = (unchanged + DAY).min(to);
        if offset_at(zone, probe)? != offset {
            // One change within a day: halve the interval down to the second.
            let mut changed = probe;
            while changed - unchanged > 1 {
                let middle = unchanged + (changed - unchanged) / 2;
                if offset_at(zone, middle)? == offset {
                    unchanged = middle;
                } else {
                    changed = middle;
                }
            }
            return Some(Some(changed));
        }
        if probe == to {
            return Some(None);
        }
        unchanged = probe;
    }
}

/// Seconds `zone`'s civil time is ahead of UTC at `instant`.
fn offset_at(zone: Tz, instant: i64) -> Option<i64> {
    let utc = utc(instant)?;
    Some(i64::from(
        zone.offset_from_utc_datetime(&utc).fix().local_minus_utc(),
    ))
}

fn utc(instant: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp(instant, 0).map(|time| time.naive_utc())
}

/// The minute holding a civil time given as seconds since the civil epoch.
fn civil_minute(seconds: i64) -> Option<CivilTime> {
    let time = utc(seconds)?;
    Some(CivilTime {
        year: time.year(),
        month: time.month(),
        day: time.day(),
        hour: time.hour(),
        minute: time.minute(),
    })
}

/// A civil time as seconds since the civil epoch.
fn seconds_of(time: CivilTime) -> Option<i64> {
    let date = NaiveDate::from_ymd_opt(time.year, time.month, time.day)?;
    Some(
        date.and_hms_opt(time.hour, time.minute, 0)?
            .and_utc()
            .timestamp(),
    )
}

#[cfg(test)]
mod tests {
    use flotilla_cron::Schedule;

    use super::*;

    /// Seconds since the epoch of a UTC time.
    fn utc_at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text).unwrap().timestamp()
    }

    fn timing(spec: &str) -> Timing {
        Schedule::parse(spec).unwrap().timing
    }

    /// The first `n` activations after `since`, as RFC 3339 in the zone.
    fn activations(spec: &str, zone: &str, since: &str, n: usize) -> Vec<String> {
        let zone = time_zone(Some(zone)).unwrap();
        let timing = timing(spec);
        let activations = Activations::new(&timing, zone, utc_at(since));
        std::iter::successors(activations.next_after(utc_at(since)), |t| {
            activations.next_after(*t)
        })
        .take(n)
        .map(|t| rfc3339(t, zone))
        .collect()
    }

    #[test]
    fn zones_are_named_or_utc() {
        assert_eq!(time_zone(None), Ok(Tz::UTC));
        assert_eq!(time_zone(Some("Europe/Paris")), Ok(Tz::Europe__Paris));
        assert_eq!(
            time_zone(Some("Mars/Olympus")),
            Err("unknown time zone Mars/Olympus".to_owned())
        );
    }

    #[test]
    fn times_are_written_as_kubernetes_writes_them() {
        let instant = utc_at("2026-03-29T01:00:00Z");
        assert_eq!(rfc3339(instant, Tz::UTC), "2026-03-29T01:00:00Z");
        assert_eq!(
            rfc3339(instant, Tz::Europe__Paris),
            "2026-03-29T03:00:00+02:00"
        );
        assert_eq!(
            rfc3339(instant, Tz::America__New_York),
            "2026-03-28T21:00:00-04:00"
        );
        assert_eq!(rfc1123z(instant), "Sun, 29 Mar 2026 01:00:00 +0000");
    }

    #[test]
    fn calendar_schedules_follow_the_zones_civil_time() {
        assert_eq!(
            activations("0 9 * * *", "Europe/Paris", "2026-01-10T12:00:00Z", 2),
            ["2026-01-11T09:00:00+01:00", "2026-01-12T09:00:00+01:00"]
        );
        // Kathmandu is 5:45 ahead: its hours start at a quarter past UTC's.
        assert_eq!(
            activations("0 * * * *", "Asia/Kathmandu", "2026-01-10T12:00:00Z", 1),
            ["2026-01-10T18:00:00+05:45"]
        );
        assert_eq!(
            activations("0 * * * *", "UTC", "2026-01-10T12:00:00Z", 1),
            ["2026-01-10T13:00:00Z"]
        );
    }

    #[test]
    fn a_time_the_zone_skips_does_not_happen() {
        // Paris springs from 02:00 to 03:00 on 2026-03-29.
        assert_eq!(
            activations("30 2 * * *", "Europe/Paris", "2026-03-27T12:00:00Z", 2),
            ["2026-03-28T02:30:00+01:00", "2026-03-30T02:30:00+02:00"]
        );
        // Every minute: 01:59 is followed by 03:00.
        assert_eq!(
            activations("* * * * *", "Europe/Paris", "2026-03-29T00:58:00Z", 2),
            ["2026-03-29T01:59:00+01:00", "2026-03-29T03:00:00+02:00"]
        );
        assert_eq!(
            activations("0 * * * *", "America/New_York", "2026-03-08T05:30:00Z", 2),
            ["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00"]
        );
    }

    #[test]
    fn a_time_the_zone_repeats_happens_twice() {
        // Paris falls back from 03:00 to 02:00 on 2026-10-25.
        assert_eq!(
            activations("30 2 * * *", "Europe/Paris", "2026-10-24T12:00:00Z", 3),
            [
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-26T02:30:00+01:00"
            ]
        );
        // Every minute: each real minute once, the civil 02:00s twice.
        assert_eq!(
            activations("* * * * *", "Europe/Paris", "2026-10-25T00:58:00Z", 3),
            [
                "2026-10-25T02:59:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:01:00+01:00"
            ]
        );
        // From inside the repeated hour, before the next minute of the first pass.
        assert_eq!(
            activations("*/10 * * * *", "Europe/Paris", "2026-10-25T00:35:00Z", 4),
            [
                "2026-10-25T02:40:00+02:00",
                "2026-10-25T02:50:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:10:00+01:00"
            ]
        );
    }

    #[test]
    fn a_schedule_that_never_fires_has_no_activation() {
        let timing = timing("0 0 30 2 *");
        let activations = Activations::new(&timing, Tz::UTC, utc_at("2026-01-01T00:00:00Z"));
        assert_eq!(activations.next_after(utc_at("2026-01-01T00:00:00Z")), None);
        assert_eq!(
            activations.latest_until(utc_at("2030-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn every_counts_from_the_last_scheduled_time() {
        let timing = timing("@every 90m");
        let since = utc_at("2026-01-10T10:00:00Z");
        let activations = Activations::new(&timing, Tz::Europe__Paris, since);
        let now = utc_at("2026-01-10T13:10:00Z");
        assert_eq!(
            activations.latest_until(now),
            Some(utc_at("2026-01-10T13:00:00Z"))
        );
        assert_eq!(
            activations.next_after(now),
            Some(utc_at("2026-01-10T14:30:00Z"))
        );
        assert_eq!(activations.count_between(since, now, 10), 2);
        assert_eq!(activations.latest_until(since + 60), None);
    }

    #[test]
    fn the_latest_activation_is_found_after_a_long_history() {
        let timing = timing("0 0 1 1 *");
        let since = utc_at("2016-06-01T00:00:00Z");
        let activations = Activations::new(&timing, Tz::UTC, since);
        assert_eq!(
            activations.latest_until(utc_at("2026-06-01T00:00:00Z")),
            Some(utc_at("2026-01-01T00:00:00Z"))
        );
        let timing = self::timing("* * * * *");
        let activations = Activations::new(&timing, Tz::UTC, since);
        assert_eq!(
            activations.latest_until(utc_at("2026-06-01T00:00:30Z")),
            Some(utc_at("2026-06-01T00:00:00Z"))
        );
    }

    #[test]
    fn what_is_due_at_a_reconcile() {
        let every_minute = timing("* * * * *");
        let created = utc_at("2026-01-10T10:00:30Z");
        let activations = Activations::new(&every_minute, Tz::UTC, created);
        assert_eq!(activations.due(created + 29, None), Due::Nothing);
        let minute = utc_at("2026-01-10T10:01:00Z");
        assert_eq!(
            activations.due(minute, None),
            Due::Start {
                at: minute,
                too_many_missed: false
            }
        );
        assert_eq!(
            activations.due(minute + 59, None),
            Due::Start {
                at: minute,
                too_many_missed: false
            }
        );
        // A thousand minutes later: more than a hundred missed, only the latest starts.
        let later = minute + 1_000 * 60;
        assert_eq!(
            activations.due(later + 5, None),
            Due::Start {
                at: later,
                too_many_missed: true
            }
        );
        // A starting deadline bounds what counts as missed.
        assert_eq!(
            activations.due(later + 5, Some(200)),
            Due::Start {
                at: later,
                too_many_missed: false
            }
        );
    }

    #[test]
    fn an_activation_past_the_starting_deadline_is_too_late() {
        let hourly = timing("0 * * * *");
        let last = utc_at("2026-01-10T10:00:00Z");
        let activations = Activations::new(&hourly, Tz::UTC, last);
        let eleven = utc_at("2026-01-10T11:00:00Z");
        let now = eleven + 5 * 60;
        assert_eq!(activations.due(now, Some(60)), Due::TooLate { at: eleven });
        assert_eq!(
            activations.due(now, Some(600)),
            Due::Start {
                at: eleven,
                too_many_missed: false
            }
        );
        assert_eq!(
            activations.due(eleven + 60, Some(60)),
            Due::Start {
                at: eleven,
                too_many_missed: false
            }
        );
    }
}
