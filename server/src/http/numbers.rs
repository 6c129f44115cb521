//! The fast path for the common JSON tensor: `data` holding only numbers (flat or nested) for an
//! FP32, FP64 or integer input. The text is already valid JSON (serde_json checked it while
//! delimiting the value), so this only walks it: brackets, commas and whitespace are skipped,
//! and each number is parsed from its own text straight into the input's type.
//!
//! Visiting the numbers through serde instead parses every one as an `f64` with the exact
//! algorithm that `float_roundtrip` asks for, even when the input is FP32: with this path the
//! server's CPU per `mlp_large` JSON request fell from 112 to 93 µs (`bench/ANALYSIS.md`). It
//! is also exact where that path is not: an FP32 value is rounded once, from the decimal,
//! instead of first to `f64` and then to `f32`.
//!
//! Anything else (a string, `true`, an object, a number out of the type's range, an integer
//! input written as `3.0`, FP16 or BF16) is declined with `None`, and the caller decodes the
//! value through serde, which also words the errors.

use bytes::BytesMut;
use infergate_runtime::DataType;

/// Arrays nested deeper than this are left to serde, whose recursion limit (128) words the
/// error.
const MAX_DEPTH: usize = 100;

/// Whether `dtype` has a fast path at all.
pub(super) fn handles(dtype: DataType) -> bool {
    !matches!(
        dtype,
        DataType::Fp16 | DataType::Bf16 | DataType::Bool | DataType::Bytes
    )
}

/// Appends every number of `text`, in order, as little-endian `dtype` values; `None` (with
/// `out` partly written) when the text holds anything this path declines.
pub(super) fn decode(text: &str, dtype: DataType, out: &mut BytesMut) -> Option<()> {
    let bytes = text.as_bytes();
    let (mut i, mut depth) = (0, 0);
    while let Some(&b) = bytes.get(i) {
        match b {
            b'[' => {
                depth += 1;
                // serde_json refuses nesting beyond its recursion limit; so does this path, by
                // declining.
                if depth > MAX_DEPTH {
                    return None;
                }
                i += 1;
            }
            b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' | b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            b'-' | b'0'..=b'9' => {
                let (number, end) = Number::scan(bytes, i);
                // Every byte from `i` to `end` is ASCII, so both are char boundaries.
                push(&text[i..end], &number, dtype, out)?;
                i = end;
            }
            _ => return None,
        }
    }
    Some(())
}

/// A JSON number as read: `mantissa` × 10^`exponent`, from up to 19 significant digits.
struct Number {
    negative: bool,
    mantissa: u64,
    exponent: i64,
    /// More than 19 significant digits, or an exponent too long to read: the cheap conversion
    /// does not apply.
    long: bool,
    /// Written without a fraction or an exponent: an integer literal.
    integral: bool,
}

impl Number {
    /// Reads the number that starts at `bytes[start]` (a '-' or a digit, in text serde_json has
    /// already checked) and returns it with the index just past it.
    fn scan(bytes: &[u8], start: usize) -> (Self, usize) {
        let negative = bytes[start] == b'-';
        let int_start = start + usize::from(negative);
        let int_end = skip_digits(bytes, int_start);
        let (fraction, mut i) = match bytes.get(int_end) {
            Some(b'.') => {
                let end = skip_digits(bytes, int_end + 1);
                (&bytes[int_end + 1..end], end)
            }
            _ => (&[][..], int_end),
        };
        let mut n = Number {
            negative,
            mantissa: 0,
            exponent: -(fraction.len() as i64),
            long: false,
            integral: fraction.is_empty(),
        };
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            n.integral = false;
            i += 1;
            let negative = bytes.get(i) == Some(&b'-');
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let end = skip_digits(bytes, i);
            let written = bytes[i..end].iter().fold(0i64, |e, d| {
                e.saturating_mul(10).saturating_add(i64::from(d - b'0'))
            });
            n.long = written > 10_000;
            n.exponent += if negative { -written } else { written };
            i = end;
        }
        // JSON writes no leading zeros but a lone "0", so only a fraction after "0." can start
        // with digits that are not significant.
        let int = &bytes[int_start..int_end];
        let significant: &[&[u8]] = if int == b"0" {
            let first = fraction
                .iter()
                .position(|&d| d != b'0')
                .unwrap_or(fraction.len());
            &[&fraction[first..]]
        } else {
            &[int, fraction]
        };
        if significant.iter().map(|d| d.len()).sum::<usize>() > 19 {
            n.long = true;
        } else {
            n.mantissa = significant
                .iter()
                .fold(0, |m, digits| fold_digits(m, digits));
        }
        (n, i)
    }

    /// The value from the mantissa converted to `f64` and scaled by a power of ten from a
    /// table; `None` where the power is not in the table. With `exact`, only powers that are
    /// exact in `f64` are used and a negative power divides (two roundings); without, a
    /// negative power multiplies by its rounded reciprocal, which is cheaper (three roundings).
    /// Either way the result is within 2^-51 of the exact value, relative to it.
    fn approximate(&self, exact: bool) -> Option<f64> {
        const POWERS: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
        ];
        const RECIPROCALS: [f64; 23] = [
            1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13,
            1e-14, 1e-15, 1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22,
        ];
        if self.long {
            return None;
        }
        let k = usize::try_from(self.exponent.unsigned_abs()).ok()?;
        let m = self.mantissa as f64;
        let v = if self.exponent >= 0 {
            m * POWERS.get(k)?
        } else if exact {
            m / POWERS.get(k)?
        } else {
            m * RECIPROCALS.get(k)?
        };
        Some(if self.negative { -v } else { v })
    }

    /// The correctly rounded `f64`. With an exact mantissa (below 2^53) and an exact power of
    /// ten, one rounding is all there is (Clinger's fast path).
    fn to_f64(&self) -> Option<f64> {
        if self.mantissa > 1 << 53 {
            return None;
        }
        self.approximate(true)
    }

    /// The correctly rounded `f32`. The approximation is within 2^-51 of the exact value,
    /// relative to it, which is at most 4 units in the last place of an `f64` (8 in the
    /// binade below). So its rounding to `f32` is the exact value's unless an `f32` rounding
    /// boundary lies that close: a midpoint between two neighbours, whose `f64` has the low 29
    /// bits of its mantissa exactly 2^28. Those, and values outside the normal `f32` range,
    /// are refused.
    fn to_f32(&self) -> Option<f32> {
        let v = self.approximate(false)?;
        if v == 0.0 {
            return Some(if self.negative { -0.0 } else { 0.0 });
        }
        if !(1e-37..=1e38).contains(&v.abs()) {
            return None;
        }
        let low = v.to_bits() & ((1 << 29) - 1);
        if low.abs_diff(1 << 28) <= 16 {
            return None;
        }
        Some(v as f32)
    }
}

/// The index of the first byte at or after `i` that is not an ASCII digit: eight bytes at a
/// time while all eight are digits, then one by one.
fn skip_digits(bytes: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = bytes.get(i..i + 8) {
        let v = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        // Each byte is a digit when its high nibble is 3, and still 3 after adding 6.
        let all_digits = (v & 0xf0f0_f0f0_f0f0_f0f0)
            | (((v.wrapping_add(0x0606_0606_0606_0606)) & 0xf0f0_f0f0_f0f0_f0f0) >> 4)
            == 0x3333_3333_3333_3333;
        if !all_digits {
            break;
        }
        i += 8;
    }
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// `m` followed by the decimal `digits` (ASCII, at most 19 in all): eight at a time with SWAR
/// arithmetic on one 64-bit word, then one by one.
fn fold_digits(mut m: u64, digits: &[u8]) -> u64 {
    let mut chunks = digits.chunks_exact(8);
    for chunk in &mut chunks {
        let mut v =
            u64::from_le_bytes(chunk.try_into().unwrap_or_default()) - 0x3030_3030_3030_3030;
        // Pairs of digits, then quadruples, then all eight (in the low 32 bits after the shift).
        v = v.wrapping_mul(10) + (v >> 8);
        v = ((v & 0x0000_00ff_0000_00ff).wrapping_mul(100 + (1_000_000 << 32))
            + ((v >> 16) & 0x0000_00ff_0000_00ff).wrapping_mul(1 + (10_000 << 32)))
            >> 32;
        m = m * 100_000_000 + v;
    }
    chunks
        .remainder()
        .iter()
        .fold(m, |m, d| m * 10 + u64::from(d - b'0'))
}

/// Appends one number; the cheap conversions where they are exact, the standard library's
/// (correctly rounded, slower) otherwise.
fn push(text: &str, number: &Number, dtype: DataType, out: &mut BytesMut) -> Option<()> {
    match dtype {
        DataType::Fp32 => {
            let v = match number.to_f32() {
                Some(v) => v,
                None => text.parse::<f32>().ok().filter(|v| v.is_finite())?,
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        DataType::Fp64 => {
            let v = match number.to_f64() {
                Some(v) => v,
                None => text.parse::<f64>().ok().filter(|v| v.is_finite())?,
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        // An integer literal of up to 19 digits is its mantissa exactly.
        dtype if number.integral => {
            let v = if number.long {
                text.parse::<i128>().ok()?
            } else {
                let m = i128::from(number.mantissa);
                if number.negative { -m } else { m }
            };
            push_int(dtype, v, out)?;
        }
        _ => return None,
    }
    Some(())
}

/// Appends `v` as a little-endian value of the integer type `dtype`; `None` when `dtype` is not
/// an integer type or `v` is out of its range.
pub(super) fn push_int(dtype: DataType, v: i128, out: &mut BytesMut) -> Option<()> {
    macro_rules! put {
        ($t:ty) => {
            out.extend_from_slice(&<$t>::try_from(v).ok()?.to_le_bytes())
        };
    }
    match dtype {
        DataType::Uint8 => put!(u8),
        DataType::Uint16 => put!(u16),
        DataType::Uint32 => put!(u32),
        DataType::Uint64 => put!(u64),
        DataType::Int8 => put!(i8),
        DataType::Int16 => put!(i16),
        DataType::Int32 => put!(i32),
        DataType::Int64 => put!(i64),
        DataType::Fp16
        | DataType::Bf16
        | DataType::Fp32
        | DataType::Fp64
        | DataType::Bool
        | DataType::Bytes => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f32s(text: &str) -> Option<Vec<f32>> {
        let mut out = BytesMut::new();
        decode(text, DataType::Fp32, &mut out)?;
        Some(
            out.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }

    fn ints<const N: usize>(text: &str, dtype: DataType) -> Option<Vec<[u8; N]>> {
        let mut out = BytesMut::new();
        decode(text, dtype, &mut out)?;
        Some(out.chunks_exact(N).map(|c| c.try_into().unwrap()).collect())
    }

    #[test]
    fn eight_digits_at_a_time_match_one_at_a_time() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let text = format!("{:019}", state % 10_000_000_000_000_000_000);
            for len in [8, 9, 16, 17, 19] {
                let digits = &text.as_bytes()[..len];
                assert_eq!(
                    fold_digits(0, digits),
                    text[..len].parse::<u64>().unwrap(),
                    "{text}"
                );
            }
        }
    }

    /// Both conversions agree with the standard library's on `text`, bit for bit.
    fn assert_same(text: &str) {
        let wrapped = format!("[{text}]");
        let f32_want = text.parse::<f32>().unwrap();
        let f32_got = f32s(&wrapped);
        if f32_want.is_finite() {
            assert_eq!(
                f32_got.map(|v| v[0].to_bits()),
                Some(f32_want.to_bits()),
                "{text}"
            );
        } else {
            assert_eq!(f32_got, None, "{text}");
        }
        let f64_want = text.parse::<f64>().unwrap();
        let mut out = BytesMut::new();
        let f64_got = decode(&wrapped, DataType::Fp64, &mut out)
            .map(|()| u64::from_le_bytes(out[..8].try_into().unwrap()));
        assert_eq!(f64_got, Some(f64_want.to_bits()), "{text}");
    }

    #[test]
    fn nested_arrays_flatten_in_row_major_order() {
        assert_eq!(
            f32s("[[1, 2.5],\n [-3e2, 4E-1]]"),
            Some(vec![1.0, 2.5, -300.0, 0.4])
        );
        assert_eq!(f32s("[]"), Some(vec![]));
        assert_eq!(f32s(" 7 "), Some(vec![7.0]));
        assert_eq!(f32s("[-0.0]").map(|v| v[0].to_bits()), Some(0x8000_0000));
    }

    #[test]
    fn declines_what_only_the_general_path_handles() {
        assert_eq!(f32s(r#"["1"]"#), None);
        assert_eq!(f32s("[true]"), None);
        assert_eq!(f32s("[null]"), None);
        assert_eq!(f32s(r#"[{"a":1}]"#), None);
        // Out of range for FP32: the general path words the error.
        assert_eq!(f32s("[1e39]"), None);
        // Deep nesting, for serde's recursion limit.
        let deep = format!("{}1{}", "[".repeat(101), "]".repeat(101));
        assert_eq!(f32s(&deep), None);
        let deep_enough = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(f32s(&deep_enough), Some(vec![1.0]));
        // Integer inputs: fractions, exponents and out-of-range values go the general way.
        assert_eq!(ints::<4>("[3.0]", DataType::Int32), None);
        assert_eq!(ints::<4>("[1e2]", DataType::Int32), None);
        assert_eq!(ints::<1>("[256]", DataType::Uint8), None);
        assert_eq!(ints::<1>("[-1]", DataType::Uint8), None);
        for dtype in [
            DataType::Fp16,
            DataType::Bf16,
            DataType::Bool,
            DataType::Bytes,
        ] {
            assert!(!handles(dtype));
            assert_eq!(decode("[1]", dtype, &mut BytesMut::new()), None);
        }
    }

    #[test]
    fn integers_at_the_bounds_of_their_type() {
        assert_eq!(
            ints::<1>("[-128, 127]", DataType::Int8),
            Some(vec![[0x80], [0x7f]])
        );
        assert_eq!(
            ints::<8>("[18446744073709551615]", DataType::Uint64),
            Some(vec![u64::MAX.to_le_bytes()])
        );
        assert_eq!(
            ints::<8>("[-9223372036854775808]", DataType::Int64),
            Some(vec![i64::MIN.to_le_bytes()])
        );
    }

    /// FP32 values are rounded once, from the decimal text, even where rounding first to
    /// `f64` gives another answer. 1 + 2^-24 + 10^-31 lies just above the midpoint between two
    /// neighbouring `f32`s (1 and 1 + 2^-23), so it rounds up; through `f64` it becomes the
    /// midpoint exactly and then rounds to even, down.
    #[test]
    fn fp32_is_rounded_once() {
        // 1 + 2^-24 + 10^-31.
        let text = "1.0000000596046447753906250000001";
        let through_f64 = text.parse::<f64>().unwrap() as f32;
        assert_eq!(through_f64, 1.0);
        assert_eq!(f32s(text), Some(vec![1.0 + f32::EPSILON]));
    }

    proptest! {
        /// Any array of finite values, written as serde_json writes them (FP32 values as
        /// their shortest `f32` text or as the `f64` they widen to) decodes to the same bits.
        #[test]
        fn numbers_round_trip_through_their_json_text(
            values in proptest::collection::vec(any::<f32>().prop_filter("finite", |v| v.is_finite()), 0..64),
            doubles in proptest::collection::vec(any::<f64>().prop_filter("finite", |v| v.is_finite()), 0..64),
            widen in any::<bool>(),
        ) {
            let text = if widen {
                serde_json::to_string(&values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())
            } else {
                serde_json::to_string(&values)
            }
            .unwrap();
            let got = f32s(&text).unwrap();
            prop_assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );

            let text = serde_json::to_string(&doubles).unwrap();
            let mut out = BytesMut::new();
            decode(&text, DataType::Fp64, &mut out).unwrap();
            let got: Vec<u64> = out
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            prop_assert_eq!(got, doubles.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }

        /// Any decimal that JSON allows decodes to the correctly rounded value, the standard
        /// library's parse being the reference: short and long mantissas, leading zeros, any
        /// exponent, and both fast and slow conversions.
        #[test]
        fn any_decimal_is_correctly_rounded(
            negative in any::<bool>(),
            int_digits in "(0|[1-9][0-9]{0,12})",
            frac_digits in proptest::option::of("[0-9]{1,24}"),
            exponent in proptest::option::of(-50i32..50),
        ) {
            let mut text = String::new();
            if negative {
                text.push('-');
            }
            text.push_str(&int_digits);
            if let Some(f) = &frac_digits {
                text.push('.');
                text.push_str(f);
            }
            if let Some(e) = exponent {
                text.push_str(&format!("e{e}"));
            }
            assert_same(&text);
        }

        /// The hard cases: decimals within a few units of an `f64` of a midpoint between two
        /// neighbouring `f32`s, written with 16 to 19 significant digits.
        #[test]
        fn decimals_next_to_an_f32_midpoint_are_correctly_rounded(
            bits in 0x0080_0000u32..0x7f00_0000,
            digits in 15usize..19,
        ) {
            let low = f64::from(f32::from_bits(bits));
            let high = f64::from(f32::from_bits(bits + 1));
            let midpoint = (low + high) / 2.0;
            for v in [midpoint, f64::from_bits(midpoint.to_bits() - 3), f64::from_bits(midpoint.to_bits() + 3)] {
                assert_same(&format!("{v:.digits$e}"));
            }
        }

        /// Integers of every width decode to the same values as their text says.
        #[test]
        fn integers_round_trip(values in proptest::collection::vec(any::<i16>(), 0..64)) {
            let text = serde_json::to_string(&values).unwrap();
            let got = ints::<2>(&text, DataType::Int16).unwrap();
            prop_assert_eq!(
                got,
                values.iter().map(|v| v.to_le_bytes()).collect::<Vec<_>>()
            );
        }
    }
}
