//! The fast path for the common JSON tensor: `data` holding only numbers (flat or nested) for an
//! FP32, FP64 or integer input. The value is walked once: brackets, commas and whitespace are
//! stepped over, JSON's grammar is checked on the way (so the text need not have been checked
//! before, as in the one-pass reader, `onepass`), and each number is parsed from its own text
//! straight into the input's type.
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
/// `out` partly written) when the text holds anything this path declines, or more than one
/// JSON value.
pub(super) fn decode(text: &str, dtype: DataType, out: &mut BytesMut) -> Option<()> {
    let bytes = text.as_bytes();
    let end = decode_value(bytes, 0, dtype, out)?;
    (skip_ws(bytes, end) == bytes.len()).then_some(())
}

/// The index of the first byte at or after `i` that is not JSON whitespace.
pub(super) fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// The index just past the number that starts at `bytes[start]` (which must exist), checked
/// against JSON's grammar (see [`Number::scan`]); `None` where the text breaks it.
pub(super) fn number_end(bytes: &[u8], start: usize) -> Option<usize> {
    let (number, end) = Number::scan(bytes, start);
    number.valid.then_some(end)
}

/// Appends every number of the JSON value that starts at `bytes[start]` (a number, or arrays of
/// numbers nested) and returns the index just past it, checking JSON's grammar on the way, so
/// the text need not have been checked before. `None` (with `out` partly written) when
/// the value holds anything [`decode`] declines or is not valid JSON.
pub(super) fn decode_value(
    bytes: &[u8],
    start: usize,
    dtype: DataType,
    out: &mut BytesMut,
) -> Option<usize> {
    let (mut i, mut depth) = (start, 0);
    loop {
        // A value: an array opens (an empty one closes at once) or a number is read.
        i = skip_ws(bytes, i);
        match bytes.get(i)? {
            b'[' => {
                i = skip_ws(bytes, i + 1);
                if bytes.get(i) != Some(&b']') {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    continue;
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let (number, end) = Number::scan(bytes, i);
                if !number.valid {
                    return None;
                }
                push(&bytes[i..end], &number, dtype, out)?;
                i = end;
            }
            _ => return None,
        }
        // After a value: the arrays it ends close, then a comma asks for the next value.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = skip_ws(bytes, i);
            match bytes.get(i)? {
                b',' => {
                    i += 1;
                    break;
                }
                b']' => {
                    i += 1;
                    depth -= 1;
                }
                _ => return None,
            }
        }
    }
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
    /// The text read follows JSON's grammar, `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
    valid: bool,
}

impl Number {
    /// Reads the number that starts at `bytes[start]` (a '-' or a digit) and returns it with
    /// the index just past it. The digits are classified and folded into the mantissa in the
    /// same pass, eight at a time.
    fn scan(bytes: &[u8], start: usize) -> (Self, usize) {
        let negative = bytes[start] == b'-';
        let int_start = start + usize::from(negative);
        let mut mantissa = 0;
        let int_end = fold_run(bytes, int_start, &mut mantissa);
        let int = &bytes[int_start..int_end];
        // JSON writes at least one digit, and no leading zero but a lone "0".
        let mut valid = !int.is_empty() && (int.len() == 1 || int[0] != b'0');
        let (fraction_len, mut i) = match bytes.get(int_end) {
            Some(b'.') => {
                let end = fold_run(bytes, int_end + 1, &mut mantissa);
                valid &= end > int_end + 1;
                (end - int_end - 1, end)
            }
            _ => (0, int_end),
        };
        let mut n = Number {
            negative,
            mantissa,
            exponent: -(fraction_len as i64),
            long: false,
            integral: fraction_len == 0,
            valid,
        };
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            n.integral = false;
            i += 1;
            let negative = bytes.get(i) == Some(&b'-');
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let mut written = 0;
            let end = fold_run(bytes, i, &mut written);
            n.valid &= end > i;
            // Past 18 digits the folded value may have wrapped.
            n.long = end - i > 18 || written > 10_000;
            let written = written.min(10_000) as i64;
            n.exponent += if negative { -written } else { written };
            i = end;
        }
        // Past 19 digits the mantissa may have wrapped, unless all but 19 are the zeros that
        // follow "0." (which add nothing to it).
        if int.len() + fraction_len > 19 {
            let significant = if int == b"0" {
                let fraction = &bytes[int_end + 1..int_end + 1 + fraction_len];
                fraction_len - fraction.iter().take_while(|&&d| d == b'0').count()
            } else {
                int.len() + fraction_len
            };
            if significant > 19 {
                n.long = true;
            }
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

/// How many of the eight bytes of `word` (little-endian, so the first byte is the lowest),
/// counted from the first, are ASCII digits before one that is not; and the word with '0'
/// taken from every byte.
fn leading_digits(word: u64) -> (usize, u64) {
    let x = word ^ 0x3030_3030_3030_3030;
    // A byte is a digit when, with '0' taken away, it is below 10: adding 0x76 to its low
    // seven bits leaves the high bit clear, and its own high bit is clear.
    let not_digit =
        (((x & 0x7f7f_7f7f_7f7f_7f7f) + 0x7676_7676_7676_7676) | x) & 0x8080_8080_8080_8080;
    ((not_digit.trailing_zeros() / 8) as usize, x)
}

/// The value of eight decimal digits, one a byte with '0' already taken away, the first in the
/// lowest byte: pairs, then quadruples, then all eight, with SWAR arithmetic on one word.
fn eight_digits(mut v: u64) -> u64 {
    v = v.wrapping_mul(10) + (v >> 8);
    ((v & 0x0000_00ff_0000_00ff).wrapping_mul(100 + (1_000_000 << 32))
        + ((v >> 16) & 0x0000_00ff_0000_00ff).wrapping_mul(1 + (10_000 << 32)))
        >> 32
}

const POWERS_OF_TEN: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Reads the run of ASCII digits that starts at `bytes[i]`, appending them to `m` (which wraps
/// past 19 digits), and returns the index just past the run. Eight bytes at a time: the digits
/// that lead a word are found and folded in one step.
fn fold_run(bytes: &[u8], mut i: usize, m: &mut u64) -> usize {
    while let Some(chunk) = bytes.get(i..i + 8) {
        let (k, x) = leading_digits(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
        if k == 0 {
            return i;
        }
        // Shifting the k digits to the top of the word leaves zeros, leading digits, below.
        *m = m
            .wrapping_mul(POWERS_OF_TEN[k])
            .wrapping_add(eight_digits(x << (8 * (8 - k))));
        i += k;
        if k < 8 {
            return i;
        }
    }
    while let Some(&d) = bytes.get(i).filter(|d| d.is_ascii_digit()) {
        *m = m.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
        i += 1;
    }
    i
}

/// Appends one number; the cheap conversions where they are exact, the standard library's
/// (correctly rounded, slower) otherwise.
#[inline]
fn push(text: &[u8], number: &Number, dtype: DataType, out: &mut BytesMut) -> Option<()> {
    // Only the slower conversions read the text, which is ASCII (JSON's grammar).
    let text = || std::str::from_utf8(text).ok();
    match dtype {
        DataType::Fp32 => {
            let v = match number.to_f32() {
                Some(v) => v,
                None => text()?.parse::<f32>().ok().filter(|v| v.is_finite())?,
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        DataType::Fp64 => {
            let v = match number.to_f64() {
                Some(v) => v,
                None => text()?.parse::<f64>().ok().filter(|v| v.is_finite())?,
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        // An integer literal of up to 19 digits is its mantissa exactly.
        dtype if number.integral => {
            let v = if number.long {
                text()?.parse::<i128>().ok()?
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
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let text = format!("{:019}", state % 10_000_000_000_000_000_000);
            for len in 0..=19 {
                // The run ends at the text's end, or at a byte that is not a digit, with more
                // text after it in the same eight-byte word or not.
                for end in ["", ",", ".5e1234", "]]]]]]]]"] {
                    let run = format!("{}{end}", &text[..len]);
                    let mut m = 0;
                    assert_eq!(fold_run(run.as_bytes(), 0, &mut m), len, "{run}");
                    let want = if len == 0 {
                        0
                    } else {
                        text[..len].parse::<u64>().unwrap()
                    };
                    assert_eq!(m, want, "{run}");
                }
            }
        }
        // Bytes next to the digits in ASCII, and above it, are not digits.
        for b in [b'/', b':', b'\x80', b'\xb0', b'\xff', 0] {
            let text = [b'1', b'2', b, b'3', b'4', b'5', b'6', b'7', b'8'];
            assert_eq!(fold_run(&text, 0, &mut 0), 2);
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
