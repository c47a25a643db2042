//! Property tests of the type rules and constraints: every door goes through
//! these, so they must hold for all inputs, not just the examples.

use proptest::prelude::*;
use snakepit_core::constraints::Constraints;
use snakepit_core::glob::glob_match;
use snakepit_core::value::{normalize, Raw, Tensor, Value, VarType};
use snakepit_core::wire::{decode_value, encode_value, raw_from_json, raw_to_json, Encoding};

fn finite() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL
}

fn any_float() -> impl Strategy<Value = f64> {
    prop_oneof![finite(), Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]
}

fn value_of(ty: VarType) -> BoxedStrategy<Value> {
    match ty {
        VarType::Float => any_float().prop_map(Value::Float).boxed(),
        VarType::Integer => any::<i64>().prop_map(Value::Integer).boxed(),
        VarType::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
        VarType::String | VarType::Choice | VarType::Module => ".{0,40}".prop_map(Value::Text).boxed(),
        VarType::Embedding => prop::collection::vec(finite(), 0..1500).prop_map(Value::Embedding).boxed(),
        VarType::Tensor => prop::collection::vec(1usize..6, 0..4)
            .prop_flat_map(|shape| {
                let n: usize = shape.iter().product();
                prop::collection::vec(finite(), n)
                    .prop_map(move |data| Value::Tensor(Tensor { shape: shape.clone(), data }))
            })
            .boxed(),
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the store holds survives the wire unchanged, both paths.
    #[test]
    fn every_value_round_trips_through_the_wire(
        (ty, v) in prop::sample::select(VarType::ALL.to_vec()).prop_flat_map(|t| (Just(t), value_of(t)))
    ) {
        for encoding in [Encoding::Binary, Encoding::Json] {
            let (any, binary) = encode_value(ty, &v, encoding);
            let back = normalize(ty, decode_value(ty, Some(&any), &binary).unwrap()).unwrap();
            prop_assert!(same(&back, &v), "{v:?} came back as {back:?} ({encoding:?})");
        }
    }

    /// Normalising a normalised value changes nothing (through JSON, as gRPC does).
    #[test]
    fn normalisation_is_idempotent(v in value_of(VarType::Integer)) {
        let (any, _) = encode_value(VarType::Integer, &v, Encoding::Json);
        let raw = raw_from_json(serde_json::from_slice(&any.value).unwrap());
        let once = normalize(VarType::Integer, raw.clone()).unwrap();
        let twice = normalize(VarType::Integer, raw_from_json(raw_to_json(&raw))).unwrap();
        prop_assert_eq!(once, twice);
    }

    /// Every integer is a valid float; a float is a valid integer exactly when whole and in range.
    #[test]
    fn int_float_conversions(i in any::<i64>(), x in any_float()) {
        prop_assert_eq!(normalize(VarType::Float, Raw::Int(i)).unwrap(), Value::Float(i as f64));
        let as_int = normalize(VarType::Integer, Raw::Float(x));
        let whole_in_range = x.is_finite() && x.fract() == 0.0 && (-9.223372036854776e18..9.223372036854776e18).contains(&x);
        prop_assert_eq!(as_int.is_ok(), whole_in_range, "{}", x);
        if let Ok(Value::Integer(n)) = as_int {
            prop_assert_eq!(n as f64, x);
        }
    }

    /// min/max accept exactly the closed interval; special floats always pass.
    #[test]
    fn float_bounds_are_the_closed_interval(a in finite(), b in finite(), x in any_float()) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let c = Constraints::parse(VarType::Float, &Raw::Map(vec![
            ("min".into(), Raw::Float(lo)), ("max".into(), Raw::Float(hi)),
        ])).unwrap();
        let ok = c.check(&Value::Float(x)).is_ok();
        prop_assert_eq!(ok, !x.is_finite() || (lo <= x && x <= hi));
    }

    #[test]
    fn integer_bounds_are_the_closed_interval(a in any::<i64>(), b in any::<i64>(), x in any::<i64>()) {
        let (lo, hi) = (a.min(b), a.max(b));
        let c = Constraints::parse(VarType::Integer, &Raw::Map(vec![
            ("min".into(), Raw::Int(lo)), ("max".into(), Raw::Int(hi)),
        ])).unwrap();
        prop_assert_eq!(c.check(&Value::Integer(x)).is_ok(), lo <= x && x <= hi);
    }

    /// String lengths count characters, whatever the bytes.
    #[test]
    fn string_length_counts_characters(s in ".{0,30}", lo in 0usize..20, span in 0usize..20) {
        let hi = lo + span;
        let c = Constraints::parse(VarType::String, &Raw::Map(vec![
            ("min_length".into(), Raw::Int(lo as i64)), ("max_length".into(), Raw::Int(hi as i64)),
        ])).unwrap();
        let n = s.chars().count();
        prop_assert_eq!(c.check(&Value::Text(s)).is_ok(), lo <= n && n <= hi);
    }

    /// Choices accept exactly their members.
    #[test]
    fn choices_accept_exactly_their_members(choices in prop::collection::vec("[a-z]{1,5}", 1..6), pick in "[a-z]{1,5}") {
        let c = Constraints::parse(VarType::Choice, &Raw::Map(vec![
            ("choices".into(), Raw::List(choices.iter().cloned().map(Raw::Str).collect())),
        ])).unwrap();
        prop_assert_eq!(c.check(&Value::Text(pick.clone())).is_ok(), choices.contains(&pick));
    }

    /// Nested tensor data equals its flat form.
    #[test]
    fn nested_and_flat_tensors_agree(rows in 1usize..5, cols in 1usize..5, seed in any::<i32>()) {
        let flat: Vec<i64> = (0..rows * cols).map(|i| i as i64 + seed as i64).collect();
        let nested: Vec<Raw> = flat.chunks(cols).map(|r| Raw::List(r.iter().map(|x| Raw::Int(*x)).collect())).collect();
        let shape = Raw::List(vec![Raw::Int(rows as i64), Raw::Int(cols as i64)]);
        let t = |data: Raw| normalize(VarType::Tensor, Raw::Map(vec![("shape".into(), shape.clone()), ("data".into(), data)]));
        let a = t(Raw::List(flat.iter().map(|x| Raw::Int(*x)).collect())).unwrap();
        let b = t(Raw::List(nested)).unwrap();
        prop_assert_eq!(a, b);
    }

    /// Names without glob characters: each matches itself, `*` matches all,
    /// `prefix*` matches exactly the names with that prefix, and one `?` per
    /// character matches.
    #[test]
    fn glob_basics(name in "[a-z_]{0,12}", prefix in "[a-z_]{0,4}") {
        prop_assert!(glob_match("*", &name));
        prop_assert!(glob_match(&name, &name));
        prop_assert_eq!(glob_match(&format!("{prefix}*"), &name), name.starts_with(&prefix));
        let one_each = "?".repeat(name.chars().count());
        prop_assert!(glob_match(&one_each, &name));
    }

    /// The bit-parallel matcher agrees with the textbook backtracking one, on
    /// short patterns (one machine word) and on long ones (several).
    #[test]
    fn glob_agrees_with_backtracking(pattern in "[ab*?]{0,10}", name in "[ab]{0,12}", pad in 0usize..80) {
        prop_assert_eq!(glob_match(&pattern, &name), backtracking(&pattern, &name));
        let (long_pattern, long_name) = (format!("{}{pattern}", "a".repeat(pad)), format!("{}{name}", "a".repeat(pad)));
        prop_assert_eq!(glob_match(&long_pattern, &long_name), backtracking(&long_pattern, &long_name));
    }
}

/// Glob matching by recursion: exponential in the worst case, obviously right.
fn backtracking(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(&pattern.chars().collect::<Vec<_>>(), &name.chars().collect::<Vec<_>>())
}
