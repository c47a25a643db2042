//! Per-type constraints: parsed and validated once at registration, then
//! checked on every write.

use regex::Regex;

use crate::error::{clip, clip_debug};
use crate::error::{Result, StoreError};
use crate::value::{fmt_float, parse_shape, Raw, Value, VarType};

/// A compiled `pattern` constraint; keeps its source to report it back.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub source: String,
    regex: Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// The constraints of one variable. Each variant lists what its type allows.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Constraints {
    #[default]
    None,
    Float {
        min: Option<f64>,
        max: Option<f64>,
    },
    Integer {
        min: Option<i64>,
        max: Option<i64>,
    },
    String {
        min_length: Option<usize>,
        max_length: Option<usize>,
        pattern: Option<Pattern>,
        allowed: Option<Vec<String>>,
    },
    Choice {
        choices: Option<Vec<String>>,
    },
    Module {
        allowed_modules: Option<Vec<String>>,
    },
    Embedding {
        dimensions: Option<usize>,
    },
    Tensor {
        shape: Option<Vec<usize>>,
    },
}

fn keys_for(ty: VarType) -> &'static [&'static str] {
    match ty {
        VarType::Float | VarType::Integer => &["min", "max"],
        VarType::String => &["min_length", "max_length", "pattern", "enum"],
        VarType::Boolean => &[],
        VarType::Choice => &["choices"],
        VarType::Module => &["allowed_modules"],
        VarType::Embedding => &["dimensions"],
        VarType::Tensor => &["shape"],
    }
}

fn bad(msg: String) -> StoreError {
    StoreError::InvalidConstraints(msg)
}

impl Constraints {
    /// Parses constraints for `ty` from a map (`Raw::Nil` or an empty map means none).
    /// Keys that do not apply to the type, wrong value types and `min > max` are errors.
    pub fn parse(ty: VarType, raw: &Raw) -> Result<Constraints> {
        let entries = match raw {
            Raw::Nil => return Ok(Constraints::None),
            Raw::Map(entries) => entries,
            other => return Err(bad(format!("constraints must be a map, got {}", other.describe()))),
        };
        let allowed = keys_for(ty);
        for (key, _) in entries {
            if !allowed.contains(&key.as_str()) {
                let hint = if allowed.is_empty() {
                    "it takes none".to_string()
                } else {
                    format!("allowed: {}", allowed.join(", "))
                };
                return Err(bad(format!("constraint {} does not apply to type {ty} ({hint})", clip(key))));
            }
        }
        let get = |k: &str| raw.get(k).filter(|v| **v != Raw::Nil);
        let parsed = match ty {
            VarType::Float => {
                let min = get("min").map(|v| float_bound("min", v)).transpose()?;
                let max = get("max").map(|v| float_bound("max", v)).transpose()?;
                if let (Some(lo), Some(hi)) = (min, max) {
                    if lo > hi {
                        return Err(bad(format!("min {} is greater than max {}", fmt_float(lo), fmt_float(hi))));
                    }
                }
                Constraints::Float { min, max }
            }
            VarType::Integer => {
                let min = get("min").map(|v| int_bound("min", v)).transpose()?;
                let max = get("max").map(|v| int_bound("max", v)).transpose()?;
                if let (Some(lo), Some(hi)) = (min, max) {
                    if lo > hi {
                        return Err(bad(format!("min {lo} is greater than max {hi}")));
                    }
                }
                Constraints::Integer { min, max }
            }
            VarType::String => {
                let min_length = get("min_length").map(|v| count("min_length", v)).transpose()?;
                let max_length = get("max_length").map(|v| count("max_length", v)).transpose()?;
                if let (Some(lo), Some(hi)) = (min_length, max_length) {
                    if lo > hi {
                        return Err(bad(format!("min_length {lo} is greater than max_length {hi}")));
                    }
                }
                let pattern = get("pattern").map(pattern).transpose()?;
                let allowed = get("enum").map(|v| strings("enum", v)).transpose()?;
                Constraints::String { min_length, max_length, pattern, allowed }
            }
            VarType::Boolean => Constraints::None,
            VarType::Choice => {
                Constraints::Choice { choices: get("choices").map(|v| strings("choices", v)).transpose()? }
            }
            VarType::Module => Constraints::Module {
                allowed_modules: get("allowed_modules").map(|v| strings("allowed_modules", v)).transpose()?,
            },
            VarType::Embedding => {
                Constraints::Embedding { dimensions: get("dimensions").map(|v| count("dimensions", v)).transpose()? }
            }
            VarType::Tensor => {
                Constraints::Tensor { shape: get("shape").map(|v| parse_shape(v, "shape").map_err(bad)).transpose()? }
            }
        };
        Ok(parsed)
    }

    /// Checks a normalized value; the error names the rule that failed.
    pub fn check(&self, value: &Value) -> Result<()> {
        let fail = |m: String| Err(StoreError::InvalidValue(m));
        match (self, value) {
            (Constraints::Float { min, max }, Value::Float(x)) => {
                // NaN and the infinities are deliberate signals; bounds do not apply to them.
                if !x.is_finite() {
                    return Ok(());
                }
                if let Some(lo) = min.filter(|lo| x < lo) {
                    return fail(format!("value {} is below minimum {}", fmt_float(*x), fmt_float(lo)));
                }
                if let Some(hi) = max.filter(|hi| x > hi) {
                    return fail(format!("value {} is above maximum {}", fmt_float(*x), fmt_float(hi)));
                }
            }
            (Constraints::Integer { min, max }, Value::Integer(i)) => {
                if let Some(lo) = min.filter(|lo| i < lo) {
                    return fail(format!("value {i} is below minimum {lo}"));
                }
                if let Some(hi) = max.filter(|hi| i > hi) {
                    return fail(format!("value {i} is above maximum {hi}"));
                }
            }
            (Constraints::String { min_length, max_length, pattern, allowed }, Value::Text(s)) => {
                let len = s.chars().count();
                if let Some(lo) = min_length.filter(|lo| len < *lo) {
                    return fail(format!("string length {len} is below min_length {lo}"));
                }
                if let Some(hi) = max_length.filter(|hi| len > *hi) {
                    return fail(format!("string length {len} is above max_length {hi}"));
                }
                if let Some(p) = pattern.as_ref().filter(|p| !p.regex.is_match(s)) {
                    return fail(format!("value {} does not match pattern {}", clip(s), clip(&p.source)));
                }
                if let Some(list) = allowed.as_ref().filter(|l| !l.contains(s)) {
                    return fail(format!("value {} is not one of {} (enum)", clip(s), clip_debug(list)));
                }
            }
            (Constraints::Choice { choices: Some(list) }, Value::Text(s)) if !list.contains(s) => {
                return fail(format!("value {} is not one of the choices {}", clip(s), clip_debug(list)));
            }
            (Constraints::Module { allowed_modules: Some(list) }, Value::Text(s)) if !list.contains(s) => {
                return fail(format!("module {} is not in allowed_modules {}", clip(s), clip_debug(list)));
            }
            (Constraints::Embedding { dimensions: Some(d) }, Value::Embedding(v)) if v.len() != *d => {
                return fail(format!("embedding has {} dimensions, expected {d}", v.len()));
            }
            (Constraints::Tensor { shape: Some(want) }, Value::Tensor(t)) if &t.shape != want => {
                return fail(format!(
                    "tensor shape {} does not match required shape {}",
                    clip_debug(&t.shape),
                    clip_debug(want)
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The constraints as a map, the same shape [`Constraints::parse`] reads.
    pub fn to_raw(&self) -> Raw {
        let mut out: Vec<(String, Raw)> = Vec::new();
        let mut put = |k: &str, v: Raw| out.push((k.to_string(), v));
        let list = |l: &[String]| Raw::List(l.iter().cloned().map(Raw::Str).collect());
        match self {
            Constraints::None => {}
            Constraints::Float { min, max } => {
                min.map(|v| put("min", Raw::Float(v)));
                max.map(|v| put("max", Raw::Float(v)));
            }
            Constraints::Integer { min, max } => {
                min.map(|v| put("min", Raw::Int(v)));
                max.map(|v| put("max", Raw::Int(v)));
            }
            Constraints::String { min_length, max_length, pattern, allowed } => {
                min_length.map(|v| put("min_length", Raw::Int(v as i64)));
                max_length.map(|v| put("max_length", Raw::Int(v as i64)));
                if let Some(p) = pattern {
                    put("pattern", Raw::Str(p.source.clone()));
                }
                if let Some(l) = allowed {
                    put("enum", list(l));
                }
            }
            Constraints::Choice { choices } => {
                if let Some(l) = choices {
                    put("choices", list(l));
                }
            }
            Constraints::Module { allowed_modules } => {
                if let Some(l) = allowed_modules {
                    put("allowed_modules", list(l));
                }
            }
            Constraints::Embedding { dimensions } => {
                dimensions.map(|d| put("dimensions", Raw::Int(d as i64)));
            }
            Constraints::Tensor { shape } => {
                if let Some(s) = shape {
                    put("shape", Raw::List(s.iter().map(|d| Raw::Int(*d as i64)).collect()));
                }
            }
        }
        Raw::Map(out)
    }
}

fn float_bound(key: &str, raw: &Raw) -> Result<f64> {
    match raw {
        Raw::Int(i) => Ok(*i as f64),
        Raw::Float(x) if !x.is_nan() => Ok(*x),
        other => Err(bad(format!("{key} must be a number, got {}", other.describe()))),
    }
}

fn int_bound(key: &str, raw: &Raw) -> Result<i64> {
    match raw {
        Raw::Int(i) => Ok(*i),
        Raw::Float(x) if x.fract() == 0.0 && x.abs() < 9.2e18 => Ok(*x as i64),
        other => Err(bad(format!("{key} must be an integer, got {}", other.describe()))),
    }
}

fn count(key: &str, raw: &Raw) -> Result<usize> {
    match raw {
        Raw::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(bad(format!("{key} must be a non-negative integer, got {}", other.describe()))),
    }
}

fn strings(key: &str, raw: &Raw) -> Result<Vec<String>> {
    let Raw::List(items) = raw else {
        return Err(bad(format!("{key} must be a list of strings, got {}", raw.describe())));
    };
    items
        .iter()
        .map(|item| match item {
            Raw::Str(s) | Raw::Atom(s) => Ok(s.clone()),
            other => Err(bad(format!("{key} must be a list of strings, got {} in it", other.describe()))),
        })
        .collect()
}

fn pattern(raw: &Raw) -> Result<Pattern> {
    let Raw::Str(source) = raw else {
        return Err(bad(format!("pattern must be a string, got {}", raw.describe())));
    };
    let regex = Regex::new(source).map_err(|e| {
        bad(format!("pattern {} is not a valid regular expression: {}", clip(source), clip(&e.to_string())))
    })?;
    Ok(Pattern { source: source.clone(), regex })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::normalize;

    fn map(entries: &[(&str, Raw)]) -> Raw {
        Raw::Map(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    fn strs(xs: &[&str]) -> Raw {
        Raw::List(xs.iter().map(|s| Raw::Str(s.to_string())).collect())
    }

    fn check(ty: VarType, c: &Raw, v: Raw) -> Result<()> {
        let c = Constraints::parse(ty, c)?;
        c.check(&normalize(ty, v)?)
    }

    #[test]
    fn float_bounds_report_the_rule_and_spare_special_values() {
        let c = map(&[("min", Raw::Float(0.0)), ("max", Raw::Float(1.0))]);
        assert!(check(VarType::Float, &c, Raw::Float(0.5)).is_ok());
        assert!(check(VarType::Float, &c, Raw::Int(1)).is_ok());
        let e = check(VarType::Float, &c, Raw::Float(1.5)).unwrap_err();
        assert_eq!(e.to_string(), "value 1.5 is above maximum 1.0");
        let e = check(VarType::Float, &c, Raw::Float(-0.1)).unwrap_err();
        assert_eq!(e.to_string(), "value -0.1 is below minimum 0.0");
        for special in ["NaN", "Infinity", "-Infinity"] {
            assert!(check(VarType::Float, &c, Raw::Str(special.into())).is_ok(), "{special}");
        }
    }

    #[test]
    fn integer_bounds() {
        let c = map(&[("min", Raw::Int(1)), ("max", Raw::Int(10))]);
        assert!(check(VarType::Integer, &c, Raw::Int(10)).is_ok());
        assert_eq!(check(VarType::Integer, &c, Raw::Int(11)).unwrap_err().to_string(), "value 11 is above maximum 10");
        assert_eq!(check(VarType::Integer, &c, Raw::Float(0.0)).unwrap_err().to_string(), "value 0 is below minimum 1");
    }

    #[test]
    fn string_rules_count_characters_not_bytes() {
        let c = map(&[("min_length", Raw::Int(2)), ("max_length", Raw::Int(3))]);
        assert!(check(VarType::String, &c, Raw::Str("héé".into())).is_ok());
        assert!(check(VarType::String, &c, Raw::Str("h".into())).is_err());
        assert!(check(VarType::String, &c, Raw::Str("hééé".into())).is_err());
        let p = map(&[("pattern", Raw::Str("^[a-z]+$".into()))]);
        assert!(check(VarType::String, &p, Raw::Str("abc".into())).is_ok());
        assert!(check(VarType::String, &p, Raw::Str("ab1".into()))
            .unwrap_err()
            .to_string()
            .contains("does not match pattern"));
        let e = map(&[("enum", strs(&["a", "b"]))]);
        assert!(check(VarType::String, &e, Raw::Atom("a".into())).is_ok());
        assert!(check(VarType::String, &e, Raw::Str("c".into())).is_err());
    }

    #[test]
    fn choice_and_module_lists() {
        let c = map(&[("choices", strs(&["greedy", "beam"]))]);
        assert!(check(VarType::Choice, &c, Raw::Atom("beam".into())).is_ok());
        assert!(check(VarType::Choice, &c, Raw::Str("sample".into()))
            .unwrap_err()
            .to_string()
            .contains("not one of the choices"));
        assert!(check(VarType::Choice, &Raw::Nil, Raw::Str("anything".into())).is_ok());
        let m = map(&[("allowed_modules", strs(&["gpt", "llama"]))]);
        assert!(check(VarType::Module, &m, Raw::Str("gpt".into())).is_ok());
        assert!(check(VarType::Module, &m, Raw::Str("bert".into())).is_err());
        assert!(check(VarType::Module, &map(&[]), Raw::Str("bert".into())).is_ok());
    }

    #[test]
    fn embedding_dimensions_and_tensor_shape() {
        let d = map(&[("dimensions", Raw::Int(2))]);
        assert!(check(VarType::Embedding, &d, Raw::List(vec![Raw::Int(1), Raw::Int(2)])).is_ok());
        assert!(check(VarType::Embedding, &d, Raw::List(vec![Raw::Int(1)]))
            .unwrap_err()
            .to_string()
            .contains("1 dimensions, expected 2"));
        let s = map(&[("shape", Raw::List(vec![Raw::Int(2)]))]);
        let t = |shape: Vec<Raw>, data: Vec<Raw>| map(&[("shape", Raw::List(shape)), ("data", Raw::List(data))]);
        assert!(check(VarType::Tensor, &s, t(vec![Raw::Int(2)], vec![Raw::Int(1), Raw::Int(2)])).is_ok());
        assert!(check(VarType::Tensor, &s, t(vec![Raw::Int(1)], vec![Raw::Int(1)])).is_err());
    }

    #[test]
    fn malformed_constraints_are_refused_with_the_reason() {
        let cases: Vec<(VarType, Raw, &str)> = vec![
            (VarType::Float, map(&[("min", Raw::Int(2)), ("max", Raw::Int(1))]), "min 2.0 is greater than max 1.0"),
            (VarType::Integer, map(&[("min", Raw::Int(2)), ("max", Raw::Int(1))]), "min 2 is greater than max 1"),
            (VarType::Float, map(&[("choices", strs(&["a"]))]), "does not apply to type float"),
            (VarType::Boolean, map(&[("min", Raw::Int(0))]), "it takes none"),
            (VarType::Choice, map(&[("choices", Raw::Str("a".into()))]), "choices must be a list"),
            (VarType::Choice, map(&[("choices", Raw::List(vec![Raw::Int(1)]))]), "list of strings"),
            (VarType::String, map(&[("pattern", Raw::Str("([".into()))]), "not a valid regular expression"),
            (VarType::String, map(&[("max_length", Raw::Int(-1))]), "non-negative"),
            (
                VarType::String,
                map(&[("min_length", Raw::Int(3)), ("max_length", Raw::Int(1))]),
                "greater than max_length",
            ),
            (VarType::Float, map(&[("min", Raw::Str("0".into()))]), "min must be a number"),
            (VarType::Integer, map(&[("max", Raw::Float(1.5))]), "max must be an integer"),
            (VarType::Tensor, map(&[("shape", Raw::Int(3))]), "shape must be a list"),
            (VarType::Float, Raw::List(vec![]), "constraints must be a map"),
        ];
        for (ty, raw, want) in cases {
            let e = Constraints::parse(ty, &raw).expect_err(want);
            assert_eq!(e.kind(), "invalid_constraints");
            assert!(e.to_string().contains(want), "{e} should contain {want}");
        }
    }

    #[test]
    fn constraints_round_trip_through_raw() {
        let raws = [
            (VarType::Float, map(&[("min", Raw::Float(0.0)), ("max", Raw::Float(2.0))])),
            (VarType::Integer, map(&[("min", Raw::Int(-3))])),
            (
                VarType::String,
                map(&[("min_length", Raw::Int(1)), ("pattern", Raw::Str("x".into())), ("enum", strs(&["x", "xx"]))]),
            ),
            (VarType::Choice, map(&[("choices", strs(&["a", "b"]))])),
            (VarType::Module, map(&[("allowed_modules", strs(&["m"]))])),
            (VarType::Embedding, map(&[("dimensions", Raw::Int(3))])),
            (VarType::Tensor, map(&[("shape", Raw::List(vec![Raw::Int(2), Raw::Int(3)]))])),
        ];
        for (ty, raw) in raws {
            let c = Constraints::parse(ty, &raw).unwrap();
            assert_eq!(Constraints::parse(ty, &c.to_raw()).unwrap(), c, "{ty}");
        }
    }
}
