//! LimitRanges and ResourceQuotas: every quantity parses and is not negative, the item types
//! and quota scopes are Kubernetes' own, and a LimitRange's bounds are in order
//! (min ≤ defaultRequest ≤ default ≤ max, maxLimitRequestRatio ≥ 1).

use serde_json::Value;

use super::{Causes, Field, one_of};
use crate::quantity::{self, Quantity};

const LIMIT_TYPES: &[&str] = &["Container", "Pod", "PersistentVolumeClaim"];

const QUOTA_SCOPES: &[&str] = &[
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "PriorityClass",
    "CrossNamespacePodAffinity",
];

/// A map of resource name to quantity; the parsed values by name.
fn quantities<'a>(field: &Field<'a>, out: &mut Causes) -> Vec<(&'a str, Quantity)> {
    let mut parsed = Vec::new();
    if field.is_set() && !field.is_object() {
        out.push(field.invalid("must be a map of resource names to quantities"));
        return parsed;
    }
    for (name, value) in field.entries() {
        let text = match value.as_str() {
            Some(text) => text.to_owned(),
            None if value.is_number() => value.to_string(),
            None => {
                out.push(value.invalid("must be a quantity"));
                continue;
            }
        };
        match quantity::parse(&text) {
            Ok(q) if q < Quantity::ZERO => {
                out.push(value.invalid("must be greater than or equal to 0"))
            }
            Ok(q) => parsed.push((name.as_str(), q)),
            Err(error) => out.push(value.invalid(&error)),
        }
    }
    parsed
}

fn lookup(values: &[(&str, Quantity)], name: &str) -> Option<Quantity> {
    values.iter().find(|(n, _)| *n == name).map(|(_, q)| *q)
}

pub(super) fn limit_range(object: &Value, out: &mut Causes) {
    let limits = Field::of(object, "spec").child("limits");
    for item in limits.items() {
        let kind = item.child("type");
        if !kind.is_set() {
            out.push(kind.required());
        } else {
            one_of(&kind, LIMIT_TYPES, out);
        }
        let max = quantities(&item.child("max"), out);
        let min = quantities(&item.child("min"), out);
        let default = quantities(&item.child("default"), out);
        let default_request = quantities(&item.child("defaultRequest"), out);
        let ratio = quantities(&item.child("maxLimitRequestRatio"), out);
        if kind.as_str() != Some("Container") {
            for field in ["default", "defaultRequest"] {
                let field = item.child(field);
                if field.is_set() {
                    out.push(
                        field.forbidden("may not be specified when `type` is not 'Container'"),
                    );
                }
            }
        }
        for (name, q) in &ratio {
            if *q < Quantity::from_value(1) {
                let field = item.child("maxLimitRequestRatio").entry(name);
                out.push(field.invalid("ratio must be greater than or equal to 1"));
            }
        }
        let mut names: Vec<&str> = [&max, &min, &default, &default_request]
            .iter()
            .flat_map(|v| v.iter().map(|(n, _)| *n))
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let order = [
                ("min", lookup(&min, name)),
                ("defaultRequest", lookup(&default_request, name)),
                ("default", lookup(&default, name)),
                ("max", lookup(&max, name)),
            ];
            for (i, (low_name, low)) in order.iter().enumerate() {
                for (high_name, high) in &order[i + 1..] {
                    if let (Some(low), Some(high)) = (low, high)
                        && low > high
                    {
                        let field = item.child(high_name).entry(name);
                        out.push(field.invalid(&format!(
                            "{low_name} value {low} is greater than {high_name} value {high}"
                        )));
                    }
                }
            }
        }
    }
}

pub(super) fn resource_quota(object: &Value, out: &mut Causes) {
    let spec = Field::of(object, "spec");
    quantities(&spec.child("hard"), out);
    for scope in spec.child("scopes").items() {
        one_of(&scope, QUOTA_SCOPES, out);
    }
    for expression in spec
        .child("scopeSelector")
        .child("matchExpressions")
        .items()
    {
        let name = expression.child("scopeName");
        if !name.is_set() {
            out.push(name.required());
        } else {
            one_of(&name, QUOTA_SCOPES, out);
        }
        one_of(
            &expression.child("operator"),
            &["In", "NotIn", "Exists", "DoesNotExist"],
            out,
        );
    }
    let status = Field::of(object, "status");
    quantities(&status.child("hard"), out);
    quantities(&status.child("used"), out);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn problems(kind: &str, object: serde_json::Value) -> Vec<String> {
        let mut object = object;
        object["metadata"] = json!({"name": "x", "namespace": "default"});
        crate::objects::validate("", kind, &object, None)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn limit_range_bounds_must_be_in_order() {
        let good = json!({"spec": {"limits": [{"type": "Container",
            "min": {"cpu": "100m"}, "defaultRequest": {"cpu": "200m"},
            "default": {"cpu": "500m"}, "max": {"cpu": "1"},
            "maxLimitRequestRatio": {"cpu": "4"}}]}});
        assert_eq!(problems("LimitRange", good), Vec::<String>::new());
        let bad = json!({"spec": {"limits": [
            {"type": "Container", "default": {"cpu": "2"}, "max": {"cpu": "1"},
             "maxLimitRequestRatio": {"memory": "0.5"}},
            {"type": "Pod", "default": {"cpu": "1"}},
            {"type": "Volume", "max": {"memory": "lots"}},
        ]}});
        let found = problems("LimitRange", bad);
        let expect = [
            "spec.limits[0].max[cpu]",
            "spec.limits[0].maxLimitRequestRatio[memory]",
            "spec.limits[1].default",
            "spec.limits[2].type",
            "spec.limits[2].max[memory]",
        ];
        for field in expect {
            assert!(
                found.iter().any(|p| p.starts_with(field)),
                "{field} not in {found:?}"
            );
        }
        assert!(
            found
                .iter()
                .any(|p| p.contains("default value 2 is greater than max value 1"))
        );
    }

    #[test]
    fn quota_quantities_and_scopes() {
        let good = json!({"spec": {"hard": {"pods": "10", "requests.cpu": "2", "limits.memory": "4Gi"},
            "scopes": ["NotBestEffort"]}});
        assert_eq!(problems("ResourceQuota", good), Vec::<String>::new());
        let bad = json!({"spec": {"hard": {"pods": "-1", "cpu": "x"}, "scopes": ["Sometimes"]}});
        let found = problems("ResourceQuota", bad);
        assert_eq!(found.len(), 3, "{found:?}");
    }
}
