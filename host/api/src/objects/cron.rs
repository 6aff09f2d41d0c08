//! CronJob schedules, as Kubernetes parses them (robfig/cron's standard parser): five fields
//! (minute, hour, day of month, month, day of week) of `*`, `?`, numbers, names, ranges, steps
//! and lists, or a descriptor (`@hourly`, `@daily`, `@every 90m`, ...). Errors read as that
//! parser words them.

/// The bounds of one field, and the names it accepts (numbered from `min`).
struct Field {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    Field {
        min: 0,
        max: 6,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

const DESCRIPTORS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// Checks a schedule; the error says what is wrong with it.
pub(super) fn check(schedule: &str) -> Result<(), String> {
    let spec = without_time_zone(schedule);
    if spec.is_empty() {
        return Err("empty spec string".to_owned());
    }
    if spec.starts_with('@') {
        return descriptor(spec);
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != FIELDS.len() {
        return Err(format!(
            "expected exactly {} fields, found {}: [{}]",
            FIELDS.len(),
            fields.len(),
            fields.join(" ")
        ));
    }
    for (text, field) in fields.iter().zip(&FIELDS) {
        for expression in text.split(',') {
            range(expression, field)?;
        }
    }
    Ok(())
}

/// The schedule after a leading `TZ=...` or `CRON_TZ=...`, which validation refuses separately.
fn without_time_zone(schedule: &str) -> &str {
    let schedule = schedule.trim();
    if schedule.starts_with("TZ=") || schedule.starts_with("CRON_TZ=") {
        schedule.split_once(' ').map_or("", |(_, rest)| rest.trim())
    } else {
        schedule
    }
}

fn descriptor(spec: &str) -> Result<(), String> {
    if DESCRIPTORS.contains(&spec) {
        return Ok(());
    }
    match spec.strip_prefix("@every ") {
        Some(duration) => go_duration(duration)
            .map_err(|error| format!("failed to parse duration {spec}: {error}")),
        None => Err(format!("unrecognized descriptor: {spec}")),
    }
}

/// One element of a field: `*`, `?`, `n`, `a-b`, each optionally `/step`.
fn range(expression: &str, field: &Field) -> Result<(), String> {
    let mut range_and_step = expression.split('/');
    let range = range_and_step.next().unwrap_or_default();
    let step = range_and_step.next();
    if range_and_step.next().is_some() {
        return Err(format!("too many slashes: {expression}"));
    }
    let bounds: Vec<&str> = range.split('-').collect();
    let (start, mut end) = match bounds.as_slice() {
        ["*" | "?"] => (field.min, field.max),
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
    Ok(())
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

/// Go's `time.ParseDuration` syntax: signed, a sequence of decimal numbers with units.
fn go_duration(text: &str) -> Result<(), String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let mut rest = text.strip_prefix(['-', '+']).unwrap_or(text);
    if rest == "0" {
        return Ok(());
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number = &rest[..number_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        match &rest[..unit_end] {
            "" => return Err(format!("time: missing unit in duration {text:?}")),
            "ns" | "us" | "µs" | "μs" | "ms" | "s" | "m" | "h" => {}
            unit => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
        }
        rest = &rest[unit_end..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            assert_eq!(check(bad), Err(error.to_owned()), "{bad}");
        }
    }
}
